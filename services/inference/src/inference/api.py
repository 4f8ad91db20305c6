"""Public routes of the inference service (reached through the gateway, identity verified)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
