"""/healthz, /readyz and /metrics: the unauthenticated probes every app serves."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from common.metrics import render

ReadinessCheck = Callable[[], Awaitable[Any]]
READINESS_TIMEOUT_SECONDS = 2.0

router = APIRouter(tags=["health"])


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    """Every dependency answers; 503 with the failing ones otherwise."""
    checks: dict[str, ReadinessCheck] = request.app.state.readiness_checks
    results = await asyncio.gather(*(_run(check) for check in checks.values()))
    report = dict(zip(checks, results, strict=True))
    ready = all(r["status"] == "ok" for r in report.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": report},
        status_code=200 if ready else 503,
    )


async def _run(check: ReadinessCheck) -> dict[str, Any]:
    try:
        detail = await asyncio.wait_for(check(), READINESS_TIMEOUT_SECONDS)
    except TimeoutError:
        return {"status": "error", "error": "timed out"}
    except Exception as exc:
        return {"status": "error", "error": type(exc).__name__}
    result: dict[str, Any] = {"status": "ok"}
    if isinstance(detail, dict):
        result.update(detail)
        result["status"] = detail.get("status", "ok")
    return result


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    body, content_type = render(request.app.state.settings.service_name)
    return Response(body, media_type=content_type)
