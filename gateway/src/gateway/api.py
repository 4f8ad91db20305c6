"""The gateway's own routes: the merged OpenAPI document (`router`, public; its docs page is
gateway/console.py's), and its upstreams' state (`probes`, for the cluster only: the
Ingress does not route it).

Everything an upstream serves is answered before routing, by gateway.proxy."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.deps import RuntimeDep

router = APIRouter()
probes = APIRouter()


@router.get("/openapi.json", include_in_schema=False)
async def openapi(runtime: RuntimeDep) -> dict[str, Any]:
    return await runtime.openapi.document()


@probes.get("/readyz/upstreams", include_in_schema=False)
async def upstreams(runtime: RuntimeDep) -> dict[str, Any]:
    """Each upstream up or down as last probed (gateway/upstream_health.py); always 200."""
    return runtime.upstream_health.report()
