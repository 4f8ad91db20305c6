"""Public routes of the auth service (reached through the gateway, identity verified)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
