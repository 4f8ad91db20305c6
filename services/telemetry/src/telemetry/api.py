"""Public routes of the telemetry service (reached through the gateway, identity verified)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
