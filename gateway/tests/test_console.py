"""The console and the API docs page as the gateway serves them (gateway/console.py), from a
directory of fake built files laid out as console/build.mjs writes them: headers, caching,
errors for a missing build or file, paths that try to leave the directory, config.json."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from devkit.testing import LiveServer
from gateway.console import CONSOLE_CSP, DEFAULT_CONSOLE_DIR, DOCS_CSP
from gateway.main import create_app
from gateway.metrics import REGISTRY
from gateway.settings import GatewaySettings

from .conftest import Upstream, gateway_settings

PAGE = b"<!doctype html><title>console</title><script type=module src=assets/console.js></script>"
SCRIPT = b"export const answer = 42;\n" * 200  # large enough to be sent gzipped
SECRET = b"a file beside the build, never served"
SECURITY = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}
TRACE_URL = "http://127.0.0.1:16686/trace/{trace_id}"


def fake_build(root: Path) -> Path:
    """A console/dist beside a secret file, with a link that points at the secret."""
    (root / "secret.txt").write_bytes(SECRET)
    dist = root / "dist"
    for relative, content in {
        "index.html": PAGE,
        "assets/console.js": SCRIPT,
        "assets/console.css": b"body{margin:0}",
        "assets/.hidden.js": SECRET,
        "docs/index.html": b"<!doctype html><title>API</title>",
        "docs/assets/swagger-ui-bundle.js": SCRIPT,
        "docs/assets/swagger-ui.css": b".swagger-ui{}",
    }.items():
        (dist / relative).parent.mkdir(parents=True, exist_ok=True)
        (dist / relative).write_bytes(content)
    (dist / "assets" / "leak.js").symlink_to(root / "secret.txt")
    return dist


@asynccontextmanager
async def served(settings: GatewaySettings) -> AsyncIterator[str]:
    async with LiveServer(create_app(settings)) as server:
        yield server.url


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    return fake_build(tmp_path)


@pytest.fixture
async def gateway(upstream: Upstream, redis_url: str, dist: Path) -> AsyncIterator[str]:
    settings = gateway_settings(upstream, redis_url, console_dir=dist, console_trace_url=TRACE_URL)
    async with served(settings) as url:
        yield url


@pytest.fixture
async def unbuilt(upstream: Upstream, redis_url: str, tmp_path: Path) -> AsyncIterator[str]:
    (tmp_path / "empty").mkdir()
    settings = gateway_settings(upstream, redis_url, console_dir=tmp_path / "empty")
    async with served(settings) as url:
        yield url


def assert_secured(response: httpx.Response, csp: str = CONSOLE_CSP) -> None:
    assert response.headers["content-security-policy"] == csp, response.request.url
    for name, value in SECURITY.items():
        assert response.headers[name] == value, (response.request.url, name)


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, (response.request.url, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, object] = response.json()
    assert problem["status"] == status
    return problem


async def raw_get(base: str, target: str) -> tuple[int, bytes]:
    """GET with the request target exactly as given (no client normalises `..` away)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    status = int(answer.split(b" ", 2)[1])
    return status, answer


def test_the_policies_allow_no_inline_script_or_style_and_no_framing() -> None:
    for csp in (CONSOLE_CSP, DOCS_CSP):
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'self'"
        assert directives["style-src"] == "'self'"
        assert directives["connect-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        assert directives["base-uri"] == "'none'"
        assert "unsafe" not in csp


async def test_the_console_page_is_never_cached_and_carries_the_policy(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        redirect = await client.get("/console")
        with_query = await client.get("/console?next=keys")
        page = await client.get("/console/")
        head = await client.head("/console/")

    assert redirect.status_code == 308
    assert redirect.headers["location"] == "console/"  # relative: works behind a path prefix
    assert with_query.headers["location"] == "console/?next=keys"
    assert_secured(redirect)
    assert page.status_code == 200
    assert page.content == PAGE
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-request-id"]  # through the gateway's request middleware
    assert_secured(page)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(PAGE))


async def test_a_client_side_route_gets_the_page_and_an_unknown_file_a_404(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        route = await client.get("/console/keys")
        nested = await client.get("/console/admin/users")
        missing = [
            await client.get(path)
            for path in ("/console/nope.js", "/console/assets/nope.js", "/console/assets/nope")
        ]

    assert route.content == nested.content == PAGE
    for response in missing:
        problem = assert_problem(response, 404)
        assert problem["detail"] == "No such file in the web console."
        assert_secured(response)


async def test_an_asset_revalidates_with_its_etag_and_goes_gzipped(
    gateway: str, dist: Path
) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        plain = await client.get("/console/assets/console.js", headers={"Accept-Encoding": ""})
        again = await client.get(
            "/console/assets/console.js",
            headers={"Accept-Encoding": "", "If-None-Match": plain.headers["etag"]},
        )
        zipped = await client.get(
            "/console/assets/console.js", headers={"Accept-Encoding": "gzip, br"}
        )
        refused = await client.get(
            "/console/assets/console.js", headers={"Accept-Encoding": "gzip;q=0"}
        )
        (dist / "assets" / "console.js").write_bytes(b"export const answer = 43;\n")
        rebuilt = await client.get(
            "/console/assets/console.js",
            headers={"Accept-Encoding": "", "If-None-Match": plain.headers["etag"]},
        )

    assert plain.content == SCRIPT
    assert plain.headers["content-type"] == "text/javascript; charset=utf-8"
    assert plain.headers["cache-control"] == "no-cache"
    assert "content-encoding" not in plain.headers
    assert_secured(plain)
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == plain.headers["etag"]
    assert_secured(again)
    # httpx decodes it: the same bytes, fewer of them on the wire.
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == SCRIPT
    assert int(zipped.headers["content-length"]) < len(gzip.compress(SCRIPT)) + 64
    assert zipped.headers["etag"] != plain.headers["etag"]
    assert "accept-encoding" in zipped.headers["vary"].lower()
    assert "content-encoding" not in refused.headers
    assert rebuilt.status_code == 200
    assert rebuilt.content == b"export const answer = 43;\n"


OUTSIDE = [
    "/console/../secret.txt",
    "/console/assets/../../secret.txt",
    "/console/%2e%2e/secret.txt",
    "/console/%2E%2E%2Fsecret.txt",
    "/console/assets/%2e%2e%2f%2e%2e%2fsecret.txt",
    "/console/..%5csecret.txt",
    "/console/%252e%252e/secret.txt",
    "/console/assets/leak.js",
    "/console/assets/.hidden.js",
    "/console/assets//console.js",
    "/console/./index.html",
    "/console/%00",
    "/console//etc/passwd",
    "/docs/assets/../../secret.txt",
    "/docs/assets/%2e%2e/%2e%2e/secret.txt",
    "/docs/assets/../../index.html",
]


async def test_a_path_out_of_the_build_is_refused(gateway: str) -> None:
    answers = {target: await raw_get(gateway, target) for target in OUTSIDE}

    for target, (status, answer) in answers.items():
        assert status in (400, 404), (target, answer[:300])
        assert SECRET not in answer, target
        assert PAGE not in answer, target


async def test_only_get_and_head(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        refused = [
            await client.request(method, path)
            for method in ("POST", "PUT", "DELETE", "PATCH")
            for path in ("/console", "/console/", "/console/assets/console.js", "/docs",
                         "/docs/assets/swagger-ui.css", "/console/config.json")
        ]  # fmt: skip

    for response in refused:
        assert_problem(response, 405)
        assert response.headers["allow"] == "GET, HEAD"
        assert_secured(response, DOCS_CSP if "/docs" in str(response.url) else CONSOLE_CSP)


async def test_the_docs_page_and_its_assets_come_from_the_build(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        page = await client.get("/docs")
        slash = await client.get("/docs/")
        bundle = await client.get("/docs/assets/swagger-ui-bundle.js")
        style = await client.get("/docs/assets/swagger-ui.css")
        missing = await client.get("/docs/assets/redoc.standalone.js")
        outside = await client.get("/docs/assets/index.html")

    assert page.status_code == 200
    assert page.content == b"<!doctype html><title>API</title>"
    assert page.headers["cache-control"] == "no-store"
    assert_secured(page, DOCS_CSP)
    assert slash.status_code == 308
    assert slash.headers["location"] == "../docs"
    assert bundle.content == SCRIPT
    assert bundle.headers["cache-control"] == "no-cache"
    assert_secured(bundle, DOCS_CSP)
    assert style.headers["content-type"] == "text/css; charset=utf-8"
    assert_problem(missing, 404)
    assert_secured(missing, DOCS_CSP)
    assert_problem(outside, 404)


async def test_unbuilt_the_console_and_docs_say_to_run_make_install(unbuilt: str) -> None:
    async with httpx.AsyncClient(base_url=unbuilt) as client:
        answers = {
            path: await client.get(path)
            for path in ("/console/", "/console/keys", "/console/assets/console.js", "/docs",
                         "/docs/assets/swagger-ui-bundle.js")
        }  # fmt: skip
        config = await client.get("/console/config.json")
        api = await client.get("/healthz")

    for path, response in answers.items():
        problem = assert_problem(response, 503)
        assert problem["type"] == "urn:llm-platform:problem:console-not-built", path
        assert "`make install`" in str(problem["detail"]), path
        assert_secured(response, DOCS_CSP if path.startswith("/docs") else CONSOLE_CSP)
    assert config.status_code == 200
    assert api.status_code == 200


async def test_config_json_needs_no_credentials_and_names_the_trace_template(
    gateway: str, unbuilt: str
) -> None:
    async with httpx.AsyncClient() as client:
        configured = await client.get(f"{gateway}/console/config.json")
        default = await client.get(f"{unbuilt}/console/config.json")

    assert configured.status_code == 200
    assert configured.headers["content-type"] == "application/json"
    assert configured.headers["cache-control"] == "no-store"
    assert_secured(configured)
    assert configured.json() == {"trace_url": TRACE_URL, "csrf_cookie": "csrf_token"}
    assert default.json() == {"trace_url": None, "csrf_cookie": "csrf_token"}


async def test_page_loads_are_not_rate_limited_and_are_counted_by_route(
    upstream: Upstream, redis_url: str, dist: Path
) -> None:
    settings = gateway_settings(
        upstream, redis_url, console_dir=dist,
        rate_limit_per_minute=1, rate_limit_anonymous_per_minute=1,
    )  # fmt: skip
    files = ["/console/", "/console/assets/console.js", "/console/assets/console.css",
             "/console/config.json", "/docs", "/docs/assets/swagger-ui.css"]  # fmt: skip
    async with served(settings) as url, httpx.AsyncClient(base_url=url) as client:
        statuses = [(await client.get(path)).status_code for _ in range(5) for path in files]

    assert statuses == [200] * len(statuses)
    count = REGISTRY.get_sample_value(
        "gateway_http_requests_total",
        {"route": "/console/{path}", "method": "GET", "status": "200"},
    )
    assert count is not None
    assert count >= 15
    raw = REGISTRY.get_sample_value(
        "gateway_http_requests_total",
        {"route": "/console/assets/console.js", "method": "GET", "status": "200"},
    )
    assert raw is None  # the template, never the path a caller chose


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("ftp://jaeger/trace/{trace_id}", "http:// or https://"),
        ("javascript:alert(1)//{trace_id}", "http:// or https://"),
        ("http:///trace/{trace_id}", "with a host"),
        ("http://127.0.0.1:16686/trace/", "must contain {trace_id}"),
        ("http://jaeger/trace/{trace_id}?span={span_id}", "no placeholder but {trace_id}"),
        ('http://jaeger/trace/{trace_id}"onmouseover=x', "no space, quote"),
    ],
)
def test_a_trace_url_that_is_no_http_template_is_refused_at_startup(given: str, why: str) -> None:
    with pytest.raises(ValidationError, match="console_trace_url") as refused:
        GatewaySettings(console_trace_url=given)
    assert why in str(refused.value)


def test_empty_settings_mean_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_CONSOLE_TRACE_URL", "")
    monkeypatch.setenv("GATEWAY_CONSOLE_DIR", "")
    settings = GatewaySettings()
    assert settings.console_trace_url is None
    assert settings.console_dir == DEFAULT_CONSOLE_DIR  # never the working directory
    monkeypatch.setenv("GATEWAY_CONSOLE_TRACE_URL", "https://jaeger.example.com/trace/{trace_id}")
    assert GatewaySettings().console_trace_url == "https://jaeger.example.com/trace/{trace_id}"
