"""What every service behind the gateway guarantees: probes, metrics, signed identity, schema."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import pytest
from alembic.script import ScriptDirectory
from fastapi.routing import APIRoute
from prometheus_client.parser import text_string_to_metric_families

from auth.main import create_app as create_auth
from auth.settings import AuthSettings
from common.identity import HEADER, Identity, sign
from common.migrations import alembic_config, downgrade, upgrade
from common.settings import DatabaseSettings
from devkit import devstack
from devkit.testing import RunDatabase, ServiceHarness, asgi_client, user_identity
from embeddings.main import create_app as create_embeddings
from embeddings.settings import EmbeddingsSettings
from inference.main import create_app as create_inference
from inference.settings import InferenceSettings
from telemetry.main import create_app as create_telemetry
from telemetry.settings import TelemetrySettings

SERVICES: dict[str, tuple[type[DatabaseSettings], Callable[[Any], Any]]] = {
    "auth": (AuthSettings, create_auth),
    "inference": (InferenceSettings, create_inference),
    "embeddings": (EmbeddingsSettings, create_embeddings),
    "telemetry": (TelemetrySettings, create_telemetry),
}


@pytest.fixture(scope="session")
def harnesses(test_database: RunDatabase, redis_url: str) -> dict[str, ServiceHarness]:
    return {
        name: ServiceHarness.migrated(name, settings_cls, create_app, test_database, redis_url)
        for name, (settings_cls, create_app) in SERVICES.items()
    }


@pytest.fixture(params=list(SERVICES))
async def service(
    request: pytest.FixtureRequest, harnesses: dict[str, ServiceHarness]
) -> AsyncIterator[tuple[ServiceHarness, Any]]:
    harness = harnesses[request.param]
    async with harness.app() as app:
        yield harness, app


def _header(
    harness: ServiceHarness,
    path: str,
    *,
    method: str = "GET",
    audience: str | None = None,
    **kwargs: Any,
) -> str:
    """What the gateway signs for this service (or, given `audience`, for another one)."""
    audience = audience or harness.name
    return sign(
        user_identity(), harness.key(), method=method, path=path, audience=audience, **kwargs
    )


def _another_service(harness: ServiceHarness) -> str:
    return next(name for name in SERVICES if name != harness.name)


async def test_healthz_needs_no_identity(service: tuple[ServiceHarness, Any]) -> None:
    _, app = service
    async with asgi_client(app) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_reports_postgres_and_redis(service: tuple[ServiceHarness, Any]) -> None:
    _, app = service
    async with asgi_client(app) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200
    checks = response.json()["checks"]
    assert checks["postgres"]["status"] == "ok"
    assert checks["redis"]["status"] == "ok"


async def test_readyz_is_503_when_redis_is_down(
    harnesses: dict[str, ServiceHarness], refused_port: int
) -> None:
    harness = harnesses["telemetry"]
    settings = harness.settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{refused_port}/0"}
    )
    app = harness.create_app(settings)
    async with app.router.lifespan_context(app), asgi_client(app) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["redis"]["status"] == "error"
    assert body["checks"]["postgres"]["status"] == "ok"


async def test_metrics_are_prometheus_text_by_route_template(
    service: tuple[ServiceHarness, Any],
) -> None:
    harness, app = service
    async with asgi_client(app) as client:
        await client.get("/healthz")
        await client.get("/v1/no-such-thing/42")
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    requests = families[f"{harness.name}_http_requests"]
    labels = [sample.labels for sample in requests.samples if sample.name.endswith("_total")]
    assert {"route": "/healthz", "method": "GET", "status": "200"} in labels
    # An unsigned call to an unknown path is counted under the catch-all, not its raw path.
    assert not any("42" in label["route"] for label in labels)
    assert f"{harness.name}_http_request_duration_seconds" in families


async def test_unsigned_request_is_refused(service: tuple[ServiceHarness, Any]) -> None:
    _, app = service
    async with asgi_client(app) as client:
        response = await client.get("/v1/models")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 401
    assert body["title"] == "Unauthorized"
    assert "trace_id" in body


async def test_signed_request_is_accepted(service: tuple[ServiceHarness, Any]) -> None:
    harness, app = service
    async with asgi_client(app) as client:
        response = await client.get(
            "/internal/openapi.json", headers={HEADER: _header(harness, "/internal/openapi.json")}
        )
    assert response.status_code == 200
    assert response.json()["info"]["title"].lower() == harness.name


@pytest.mark.parametrize(
    "make_header",
    [
        pytest.param(lambda h: _header(h, "/v1/models", now=time.time() - 61), id="expired"),
        pytest.param(lambda h: _header(h, "/v1/models", now=time.time() + 60), id="future"),
        pytest.param(lambda h: _header(h, "/v1/other"), id="signed-for-another-path"),
        pytest.param(lambda h: _header(h, "/v1/models", method="POST"), id="another-method"),
        pytest.param(
            lambda h: _header(h, "/v1/models", audience=_another_service(h)),
            id="signed-for-another-service",
        ),
        pytest.param(
            lambda h: sign(
                user_identity(), b"k" * 32, method="GET", path="/v1/models", audience=h.name
            ),
            id="wrong-key",
        ),
        pytest.param(
            lambda h: "e30." + _header(h, "/v1/models").split(".")[1], id="tampered-payload"
        ),
        pytest.param(lambda h: "garbage", id="garbage"),
    ],
)
async def test_bad_signature_is_refused(
    service: tuple[ServiceHarness, Any], make_header: Callable[[ServiceHarness], str]
) -> None:
    harness, app = service
    async with asgi_client(app) as client:
        response = await client.get("/v1/models", headers={HEADER: make_header(harness)})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"


async def test_signed_service_identity_is_accepted(service: tuple[ServiceHarness, Any]) -> None:
    harness, app = service
    peer = Identity(sub="service:gateway", kind="service", iss="gateway")
    async with asgi_client(app, identity=peer, key=harness.key()) as client:
        response = await client.get("/v1/no-such-route")
    # Signed: past the identity check, to the service's own 404 problem+json.
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("name", list(SERVICES))
async def test_migrations_live_in_the_service_schema(
    name: str, harnesses: dict[str, ServiceHarness], test_database: RunDatabase
) -> None:
    harness = harnesses[name]
    url = test_database.url_for(name)
    head = ScriptDirectory.from_config(
        alembic_config(devstack.service_dir(name), url)
    ).get_current_head()
    conn = await asyncpg.connect(test_database.admin_url)
    try:
        schemas = await conn.fetch(
            "SELECT table_schema FROM information_schema.tables"
            " WHERE table_name = 'alembic_version'"
        )
        assert name in {row["table_schema"] for row in schemas}
        assert "public" not in {row["table_schema"] for row in schemas}
        assert await conn.fetchval(f'SELECT version_num FROM "{name}".alembic_version') == head
        owner = await conn.fetchval(
            "SELECT pg_get_userbyid(relowner) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = 'alembic_version'",
            name,
        )
        assert owner == name

        await _in_thread(downgrade, devstack.service_dir(name), url, "base")
        assert await conn.fetchval(f'SELECT count(*) FROM "{name}".alembic_version') == 0
        await _in_thread(upgrade, devstack.service_dir(name), url, "head")
        assert await conn.fetchval(f'SELECT version_num FROM "{name}".alembic_version') == head
    finally:
        await conn.close()
    assert harness.settings.database_url == url


@pytest.mark.parametrize("name", list(SERVICES))
async def test_a_service_role_cannot_read_another_schema(
    name: str, harnesses: dict[str, ServiceHarness], test_database: RunDatabase
) -> None:
    other = next(n for n in SERVICES if n != name)
    conn = await asyncpg.connect(test_database.url_for(name))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch(f'SELECT * FROM "{other}".alembic_version')
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE TABLE public.intruder (id int)")
    finally:
        await conn.close()


async def _in_thread(fn: Callable[..., None], *args: Any) -> None:
    # Alembic's env runs its own event loop; keep it off the test's loop.
    import asyncio

    await asyncio.to_thread(fn, *args)


def _blocking_calls(dependant: Any) -> list[str]:
    """Endpoints and dependencies FastAPI would run in a worker thread (plain `def`)."""
    found = []
    for dep in [dependant, *dependant.dependencies]:
        call = dep.call
        if call is not None and not (
            inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)
        ):
            found.append(getattr(call, "__qualname__", repr(call)))
        if dep is not dependant:
            found.extend(_blocking_calls(dep))
    return found


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every APIRoute, including those of included routers (FastAPI nests them)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        nested = getattr(route, "original_router", None)
        if nested is not None:
            yield from _api_routes(nested.routes)


@pytest.mark.parametrize("name", [*SERVICES, "gateway"])
def test_no_route_hops_to_a_worker_thread(name: str) -> None:
    """A plain `def` endpoint or dependency costs a thread hop per request: none allowed."""
    if name == "gateway":
        from gateway.main import create_app as create_gateway
        from gateway.settings import GatewaySettings

        app = create_gateway(GatewaySettings(environment="test"))
    else:
        settings_cls, create_app = SERVICES[name]
        app = create_app(settings_cls(environment="test"))
    routes = list(_api_routes(app.routes))
    assert len(routes) > 3
    blocking = [
        f"{route.path}: {call}" for route in routes for call in _blocking_calls(route.dependant)
    ]
    assert blocking == []
