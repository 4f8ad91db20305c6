"""One OpenAPI document for the public API: the services' routes merged under the gateway.

Errors are the gateway's to document, since every one of them, the services' included, is
an RFC 9457 problem (common.errors): each error answer a service declares (FastAPI's 422)
gets the `Problem` schema as application/problem+json, and every operation gets the
refusals the gateway itself may answer (from its RBAC table: 401, 403), 429, and `4XX` and
`5XX` for the rest. How to call is declared too: an API key (Bearer) or a session cookie
with the CSRF token in X-CSRF-Token (browsers; the only way into a session-only route).
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import httpx
import structlog

from common.app import INTERNAL_OPENAPI_PATH
from gateway.proxy_table import proxy_rule_for
from gateway.rbac import PUBLIC, SESSION_ONLY, route_for

log = structlog.get_logger(__name__)
# The public document's title and version.
TITLE = "LLM Platform API"
VERSION = "0.1.0"
REF_PREFIX = "#/components/schemas/"
PROBLEM_JSON = "application/problem+json"
PROBLEM = "Problem"
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": PROBLEM,
    "description": "An RFC 9457 problem: every error answer, with its trace id.",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "description": "`urn:llm-platform:problem:<slug>`, or "
                 "`about:blank` for a bare HTTP status."},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string", "description": "The request's path."},
        "trace_id": {"type": ["string", "null"]},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "A request that failed validation: what failed, field by field.",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
    "additionalProperties": True,
}  # fmt: skip
# FastAPI's own validation error schemas, which no answer has (errors are problems).
FASTAPI_ERRORS = ("HTTPValidationError", "ValidationError")
SECURITY_SCHEMES: dict[str, Any] = {
    "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key."},
    "session": {"type": "apiKey", "in": "cookie", "name": "session",
                "description": "A browser session (POST /auth/login; the cookie's name is "
                "SESSION_COOKIE_NAME's); unsafe methods also "
                "send the CSRF token it gave in the X-CSRF-Token header."},
}  # fmt: skip
GATEWAY_ERRORS: dict[str, str] = {
    "401": "No valid session or API key.",
    "403": "The caller lacks the route's permission, called a session-only route with an "
    "API key, or sent no CSRF token with a session.",
}
ANY_ERRORS: dict[str, str] = {
    "429": "Rate limited, or too many requests in flight: see Retry-After.",
    "4XX": "Refused; nothing was changed.",
    "5XX": "A service, provider or store behind the gateway failed (502, 503 with "
    "Retry-After, 504).",
}


def _rename_refs(node: Any, renames: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {
            key: (
                REF_PREFIX + renames.get(value[len(REF_PREFIX) :], value[len(REF_PREFIX) :])
                if key == "$ref" and isinstance(value, str) and value.startswith(REF_PREFIX)
                else _rename_refs(value, renames)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rename_refs(item, renames) for item in node]
    return node


def merge(documents: dict[str, dict[str, Any]], *, title: str, version: str) -> dict[str, Any]:
    """Union of the services' paths (only those the gateway routes to that service) and
    schemas; a schema name two services use for different shapes is prefixed with the
    service's name in that service's part."""
    merged: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "The public API of the platform, as served by the gateway.",
        },
        "paths": {},
        "components": {"schemas": {}},
        "tags": [],
    }
    schemas: dict[str, Any] = merged["components"]["schemas"]
    for service, document in sorted(documents.items()):
        document = copy.deepcopy(document)
        own = document.get("components", {}).get("schemas", {})
        renames = {
            name: f"{service}_{name}"
            for name, schema in own.items()
            if name in schemas
            and json.dumps(schemas[name], sort_keys=True) != json.dumps(schema, sort_keys=True)
        }
        document = _rename_refs(document, renames)
        for name, schema in own.items():
            schemas[renames.get(name, name)] = _rename_refs(schema, renames)
        for path, item in document.get("paths", {}).items():
            rule = proxy_rule_for(path)
            if rule is None or rule.upstream != service:
                log.warning("route not routed by the gateway", service=service, path=path)
                continue
            merged["paths"][path] = item
        merged["tags"].append({"name": service, "description": document["info"].get("title", "")})
    for path, item in merged["paths"].items():
        for method, operation in item.items():
            _document_errors(method.upper(), path, operation)
    others = {name: schema for name, schema in schemas.items() if name not in FASTAPI_ERRORS}
    used = json.dumps([merged["paths"], others])
    if not any(f'"{REF_PREFIX}{name}"' in used for name in FASTAPI_ERRORS):
        for name in FASTAPI_ERRORS:
            schemas.pop(name, None)
    schemas[PROBLEM] = PROBLEM_SCHEMA
    merged["components"]["securitySchemes"] = SECURITY_SCHEMES
    return merged


def _is_error(code: str) -> bool:
    return code == "default" or code[:1] in ("4", "5")


def _document_errors(method: str, path: str, operation: dict[str, Any]) -> None:
    """Every error answer of `operation` as a problem, the gateway's own added; and who may
    call it, from the RBAC table."""
    problem = {PROBLEM_JSON: {"schema": {"$ref": REF_PREFIX + PROBLEM}}}
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for code, response in responses.items():
        if _is_error(code):
            response["content"] = problem
    route = route_for(method, path)
    needs = route.needs if route else PUBLIC
    added = dict(ANY_ERRORS) if needs == PUBLIC else {**GATEWAY_ERRORS, **ANY_ERRORS}
    for code, description in added.items():
        responses.setdefault(code, {"description": description, "content": problem})
    if needs != PUBLIC:
        operation["security"] = (
            [{"session": []}] if needs == SESSION_ONLY else [{"apiKey": []}, {"session": []}]
        )


class OpenAPICache:
    """Fetches each service's document once it answers; until all have, serves what it has."""

    def __init__(self, clients: dict[str, httpx.AsyncClient], *, title: str, version: str) -> None:
        self._clients = clients
        self._title = title
        self._version = version
        self._documents: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()

    async def document(self) -> dict[str, Any]:
        async with self._lock:
            missing = [name for name in self._clients if name not in self._documents]
            results = await asyncio.gather(*(self._fetch(name) for name in missing))
            for name, document in zip(missing, results, strict=True):
                if document is not None:
                    self._documents[name] = document
        merged = merge(self._documents, title=self._title, version=self._version)
        unavailable = sorted(set(self._clients) - set(self._documents))
        if unavailable:
            merged["info"]["x-unavailable-services"] = unavailable
        return merged

    async def _fetch(self, name: str) -> dict[str, Any] | None:
        try:
            response = await self._clients[name].get(INTERNAL_OPENAPI_PATH, timeout=5.0)
            response.raise_for_status()
            document: dict[str, Any] = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("openapi fetch failed", upstream=name, error=type(exc).__name__)
            return None
        if not isinstance(document, dict) or not {"openapi", "info", "paths"} <= document.keys():
            log.warning("openapi fetch failed", upstream=name, error="not an OpenAPI document")
            return None
        return document
