"""One OpenAPI document for the public API: the services' routes merged under the gateway."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import httpx
import structlog

from common.app import INTERNAL_OPENAPI_PATH
from gateway.proxy_table import proxy_rule_for

log = structlog.get_logger(__name__)
# The public document's title and version.
TITLE = "LLM Platform API"
VERSION = "0.1.0"
REF_PREFIX = "#/components/schemas/"


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
    return merged


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
