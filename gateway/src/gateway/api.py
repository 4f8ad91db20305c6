"""The gateway's routes: the merged OpenAPI document, its docs, and the proxy."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.responses import Response

from common.errors import NotFound
from gateway.deps import CallerIdentity
from gateway.proxy import forward
from gateway.routes import rule_for

router = APIRouter()
PROXY_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> dict[str, Any]:
    document: dict[str, Any] = await request.app.state.openapi.document()
    return document


@router.get("/docs", include_in_schema=False)
async def docs() -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title="LLM Platform API")


@router.api_route("/{path:path}", methods=PROXY_METHODS, include_in_schema=False)
async def proxy(request: Request, identity: CallerIdentity) -> Response:
    rule = rule_for(request.url.path)
    if rule is None:  # the RBAC table lists a route no upstream serves: a bug, not a 500
        raise NotFound("No such route.")
    response = await forward(
        request,
        upstream=rule.upstream,
        client=request.app.state.upstreams[rule.upstream],
        identity=identity,
        max_body_bytes=request.app.state.settings.max_body_bytes,
    )
    response.headers.update(getattr(request.state, "rate_limit_headers", {}))
    return response
