"""The web console and the API docs page: static files the gateway serves from the console's
build (console/dist; `make install` builds it, the gateway image carries it), calling the
public API like any other frontend. Nothing here needs a credential.

GATEWAY_CONSOLE_DIR, as console/build.mjs lays it out:

    index.html          the console                      /console/ (and its client routes)
    assets/<file>       its script and stylesheet        /console/assets/<file>
    docs/index.html     the API docs page (Swagger UI)   /docs
    docs/assets/<file>  Swagger UI and its initializer   /docs/assets/<file>

`/console/config.json` is the gateway's own: what the console needs that the API does not
say (ConsoleConfig). Every answer here, errors and redirects included, carries the
security headers: a Content-Security-Policy without inline script or style, no framing,
no sniffing, no referrer.

Caching: the files keep fixed names (esbuild writes assets/console.js, not a hashed name),
so an asset answers with a content-hash ETag and `no-cache`: the browser revalidates each
asset (a 304 without a body) and never runs a stale script after a rebuild or an upgrade,
which content-hashed names with immutable caching would need index.html rewritten for (a
304 from the gateway costs a round trip, a few per page load). The pages themselves are
`no-store`: no copy is kept, so a signed-out user's back button asks the gateway again.
Text files go out gzipped to a client that accepts it.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from common.errors import MethodNotAllowed, NotFound, ServiceUnavailable

# The repository's console/dist, where `make install` builds it.
DEFAULT_CONSOLE_DIR = Path(__file__).resolve().parents[3] / "console" / "dist"

# The console: its own files only, and calls to its own origin (the public API).
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# Swagger UI (5.x) runs under the same policy: its stylesheet's icons are data: URIs, and it
# styles elements through the CSSOM (allowed), never with inline <style> or style="".
# tests/e2e/test_console_infra.py loads it in Chromium and fails on any violation.
DOCS_CSP = CONSOLE_CSP
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
PAGE_CACHE = "no-store"
ASSET_CACHE = "no-cache"
# The file types the build writes; anything else is served as bytes (never sniffed).
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}
COMPRESSIBLE = frozenset({".html", ".js", ".mjs", ".css", ".json", ".map", ".svg", ".txt"})
GZIP_MIN_BYTES = 1024
# One path element of a file the build wrote: no dot first (so neither `.` nor `..` nor a
# hidden file), no separator, no control character, no percent sign (the path arrives
# decoded once; a second encoding is not a name). Bounded: no backtracking, no long names.
PATH_ELEMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.~-]{0,127}")
MAX_DEPTH = 8
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class ConsoleNotBuilt(ServiceUnavailable):
    slug = "console-not-built"


@dataclass(frozen=True)
class ConsoleConfig:
    """GET /console/config.json, what the console needs that the API does not say:

        {"trace_url": "http://127.0.0.1:16686/trace/{trace_id}" | null,
         "csrf_cookie": "csrf_token"}

    `trace_url` is GATEWAY_CONSOLE_TRACE_URL, a template whose `{trace_id}` the console
    replaces with a call's trace id (null: the trace id is shown without a link);
    `csrf_cookie` is CSRF_COOKIE_NAME, the readable cookie whose token unsafe requests
    echo in X-CSRF-Token (after a reload the console has only the cookie)."""

    trace_url: str | None
    csrf_cookie: str

    def as_json(self) -> dict[str, Any]:
        return {"trace_url": self.trace_url, "csrf_cookie": self.csrf_cookie}


@dataclass(frozen=True)
class BuiltFile:
    """One file as last read: its stat (to notice a rebuild), type, ETag, bytes and gzip."""

    mtime_ns: int
    size: int
    media_type: str
    etag: str
    body: bytes
    gzipped: bytes | None


class BuiltFiles:
    """The files under one directory of the build, by validated relative path. Each is read
    once per version (size and mtime) and kept: the build is a few megabytes, its names
    fixed by the build, so the cache is bounded by what is on disk. Lookups run in a
    thread, as they touch the disk (Starlette's StaticFiles does the same)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._loaded: dict[Path, BuiltFile] = {}

    async def get(self, relative: str) -> BuiltFile | None:
        """The file at `relative` (`assets/console.js`), or None: missing, or a name the
        build cannot have written (`..`, `%2e%2e`, `a//b`, a backslash, a hidden file), or
        one that leads out of the root through a link."""
        parts = relative.split("/")
        if len(parts) > MAX_DEPTH or not all(PATH_ELEMENT.fullmatch(part) for part in parts):
            return None
        return await asyncio.to_thread(self._load, parts)

    def _load(self, parts: list[str]) -> BuiltFile | None:
        root = self.root.resolve()
        try:
            path = root.joinpath(*parts).resolve(strict=True)
            if not path.is_relative_to(root) or not path.is_file():
                return None
            stat = path.stat()
            known = self._loaded.get(path)
            if known and (known.mtime_ns, known.size) == (stat.st_mtime_ns, stat.st_size):
                return known
            body = path.read_bytes()
        except (OSError, RuntimeError):  # gone meanwhile, unreadable, a loop of links
            return None
        compress = path.suffix in COMPRESSIBLE and len(body) >= GZIP_MIN_BYTES
        loaded = BuiltFile(
            mtime_ns=stat.st_mtime_ns,
            size=stat.st_size,
            media_type=CONTENT_TYPES.get(path.suffix, "application/octet-stream"),
            etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
            body=body,
            gzipped=gzip.compress(body, compresslevel=9, mtime=0) if compress else None,
        )
        self._loaded[path] = loaded
        return loaded


def _accepts_gzip(request: Request) -> bool:
    for item in request.headers.get("accept-encoding", "").split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            quality = params.strip().removeprefix("q=").strip() if params else "1"
            try:
                return float(quality) > 0
            except ValueError:
                return False
    return False


def _not_modified(request: Request, etag: str) -> bool:
    tags = request.headers.get("if-none-match")
    if not tags:
        return False
    return tags.strip() == "*" or etag in (t.strip().removeprefix("W/") for t in tags.split(","))


class StaticSite:
    """One site of the build (the console, the docs page): its page, its files, its policy."""

    def __init__(self, root: Path, *, csp: str, name: str) -> None:
        self.files = BuiltFiles(root)
        self.name = name
        self.headers = {"Content-Security-Policy": csp, **SECURITY_HEADERS}

    def not_found(self) -> NotFound:
        return NotFound(f"No such file in the {self.name}.", headers=self.headers)

    async def page(self) -> BuiltFile:
        """The site's index.html; 503 while the console is not built."""
        page = await self.files.get("index.html")
        if page is None:
            raise ConsoleNotBuilt(
                f"The {self.name} is not built: GATEWAY_CONSOLE_DIR has no index.html. Run "
                "`make install` (it needs Node.js 20+ and npm), or build the gateway's image.",
                headers=self.headers,
            )
        return page

    def redirect(self, location: str) -> Response:
        return Response(status_code=308, headers={**self.headers, "Location": location})

    def send(self, request: Request, loaded: BuiltFile, *, cache: str) -> Response:
        """The file for a GET or a HEAD, or a 304."""
        headers = {**self.headers, "Cache-Control": cache}
        body, etag = loaded.body, loaded.etag
        if loaded.gzipped is not None:
            headers["Vary"] = "Accept-Encoding"
            if _accepts_gzip(request):
                body, etag = loaded.gzipped, loaded.etag[:-1] + '-gz"'
                headers["Content-Encoding"] = "gzip"
        headers["ETag"] = etag
        if _not_modified(request, etag):
            headers.pop("Content-Encoding", None)
            return Response(status_code=304, headers=headers)
        media_type = loaded.media_type
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return Response(headers=headers, media_type=media_type)
        return Response(body, headers=headers, media_type=media_type)

    def only_get(self, request: Request) -> None:
        if request.method not in ("GET", "HEAD"):
            headers = {**self.headers, "Allow": "GET, HEAD"}
            raise MethodNotAllowed(f"The {self.name} only answers GET and HEAD.", headers=headers)


def console_router(console_dir: Path, config: ConsoleConfig) -> APIRouter:
    """/console/ and /docs from `console_dir` (the layout above), /console/config.json."""
    router = APIRouter(include_in_schema=False)
    console = StaticSite(console_dir, csp=CONSOLE_CSP, name="web console")
    docs = StaticSite(console_dir / "docs", csp=DOCS_CSP, name="API docs page")

    @router.api_route("/console", methods=ALL_METHODS)
    async def console_root(request: Request) -> Response:
        console.only_get(request)
        query = request.url.query
        return console.redirect("console/" + (f"?{query}" if query else ""))

    @router.api_route("/console/config.json", methods=ALL_METHODS)
    async def console_config(request: Request) -> Response:
        console.only_get(request)
        headers = {**console.headers, "Cache-Control": PAGE_CACHE}
        return JSONResponse(config.as_json(), headers=headers)

    @router.api_route("/console/{path:path}", methods=ALL_METHODS)
    async def console_file(request: Request, path: str) -> Response:
        console.only_get(request)
        page = await console.page()
        if path in ("", "index.html"):
            return console.send(request, page, cache=PAGE_CACHE)
        found = await console.files.get(path)
        if found is not None:
            return console.send(request, found, cache=ASSET_CACHE)
        # A client-side route (/console/keys): the console's page, which reads its location.
        # Not a name with a dot (a file), nor anything under assets/.
        if _route_like(path):
            return console.send(request, page, cache=PAGE_CACHE)
        raise console.not_found()

    @router.api_route("/docs", methods=ALL_METHODS)
    async def docs_page(request: Request) -> Response:
        docs.only_get(request)
        return docs.send(request, await docs.page(), cache=PAGE_CACHE)

    @router.api_route("/docs/", methods=ALL_METHODS)
    async def docs_slash(request: Request) -> Response:
        docs.only_get(request)
        return docs.redirect("../docs")

    @router.api_route("/docs/assets/{path:path}", methods=ALL_METHODS)
    async def docs_file(request: Request, path: str) -> Response:
        docs.only_get(request)
        await docs.page()
        found = await docs.files.get(f"assets/{path}")
        if found is None:
            raise docs.not_found()
        return docs.send(request, found, cache=ASSET_CACHE)

    return router


# A client-side route of the console: lowercase words and ids, no dot.
_ROUTE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}(/[A-Za-z0-9][A-Za-z0-9_-]{0,127}){0,4}")


def _route_like(path: str) -> bool:
    return not path.startswith("assets/") and _ROUTE.fullmatch(path) is not None
