"""The RBAC table itself, and every public route walked with every kind of caller."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from devkit.testing import LiveServer
from gateway.main import create_app
from gateway.proxy_table import proxy_rule_for
from gateway.rbac import PUBLIC, ROUTES, SESSION_ONLY, SIGNED_IN, Route, route_for

from .conftest import Caller, KeyFactory, SessionFactory, Upstream, gateway_settings

AUTH_MIGRATIONS = Path(__file__).parents[2] / "services" / "auth" / "migrations" / "versions"


def _seeded_roles() -> ModuleType:
    """The roles and permissions auth's migration seeds: the other side of this table."""
    path = next(AUTH_MIGRATIONS.glob("*auth_0002*.py"))
    spec = importlib.util.spec_from_file_location("auth_seed", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SEED = _seeded_roles()
ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    name: tuple(perms) for name, (_, perms) in SEED.ROLES.items()
}
PERMISSION_NAME = re.compile(r"^[a-z_]+:[a-z_]+$")


def _migrated_permissions() -> set[str]:
    """Every permission name auth's migrations mention: the seed's, and those added later
    (each later migration names the permission it inserts)."""
    return {
        node.value
        for path in AUTH_MIGRATIONS.glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and PERMISSION_NAME.match(node.value)
    }


def test_every_required_permission_is_one_auth_knows() -> None:
    needed = {r.needs for r in ROUTES} - {PUBLIC, SIGNED_IN, SESSION_ONLY}
    assert needed <= _migrated_permissions()


def test_every_route_has_an_upstream_and_one_rule() -> None:
    for route in ROUTES:
        path = _concrete(route)
        assert proxy_rule_for(path) is not None, route
        assert route_for(route.method, path) == route, route
    keys = [(r.method, r.template) for r in ROUTES]
    assert len(keys) == len(set(keys))


def test_only_register_and_login_are_public() -> None:
    assert {(r.method, r.template) for r in ROUTES if r.needs == PUBLIC} == {
        ("POST", "/auth/register"),
        ("POST", "/auth/login"),
    }


def test_templates_do_not_match_across_segments() -> None:
    assert route_for("GET", "/v1/collections/a/b") is None
    assert route_for("GET", "/v1/models/org/model-name") is not None
    assert route_for("GET", "/auth/me/extra") is None
    assert route_for("HEAD", "/auth/me") is not None


def _concrete(route: Route) -> str:
    path = re.sub(r"\{[a-z_]+:path\}", "org/name", route.template)
    return re.sub(r"\{[a-z_]+\}", "abc123", path)


FORWARDED = 0  # the gateway let it through to the upstream


def _expected(route: Route, kind: str, permissions: tuple[str, ...]) -> int:
    if route.needs == PUBLIC:
        return FORWARDED
    if kind == "anonymous":
        return 401
    if route.needs == SIGNED_IN:
        return FORWARDED
    if route.needs == SESSION_ONLY:
        return FORWARDED if kind == "session" else 403
    return FORWARDED if route.needs in permissions else 403


@pytest.fixture
async def unlimited_gateway(upstream: Upstream, redis_url: str) -> Any:
    settings = gateway_settings(
        upstream,
        redis_url,
        rate_limit_per_minute=0,
        rate_limit_model_per_minute=0,
        rate_limit_anonymous_per_minute=0,
    )
    async with LiveServer(create_app(settings)) as server:
        yield server.url


async def test_rbac_matrix_every_route_every_caller(
    unlimited_gateway: str, upstream: Upstream, session_for: SessionFactory, api_key_for: KeyFactory
) -> None:
    upstream.release_second_chunk.set()  # the streaming route answers at once
    narrowed = ("models:read", "embeddings:read")
    callers: dict[str, tuple[str, tuple[str, ...], Caller | None]] = {
        "anonymous": ("anonymous", (), None),
        **{
            role: ("session", perms, await session_for(perms, roles=(role,), user_id=f"u-{role}"))
            for role, perms in ROLE_PERMISSIONS.items()
        },
        "narrowed key": ("key", narrowed, await api_key_for(narrowed)),
    }
    mismatches = []
    async with httpx.AsyncClient(base_url=unlimited_gateway) as client:
        for route in ROUTES:
            for name, (kind, permissions, caller) in callers.items():
                headers = dict(caller.unsafe_headers()) if caller else {}
                if caller and caller.cookies:
                    headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in caller.cookies.items())
                hits = upstream.hits
                response = await client.request(
                    route.method, _concrete(route), headers=headers, json={}
                )
                # Test routes that stream or fail do not count hits: judge those by status.
                forwarded = upstream.hits > hits or response.status_code not in (401, 403)
                got = FORWARDED if forwarded else response.status_code
                if got != _expected(route, kind, permissions):
                    mismatches.append((route.method, route.template, name, response.status_code))
    assert mismatches == []
    assert len(ROUTES) * len(callers) >= 5 * 38
