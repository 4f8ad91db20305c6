"""The whole platform as a newcomer gets it from `make run`, driven over HTTP."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common import ports
from common.identity import HEADER, Identity, sign
from devkit import devstack
from devkit.testing import _drop_database

from .conftest import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Login,
    RunningPlatform,
    launch_platform,
    start_platform,
)

SERVICES = list(devstack.SERVICES)


def test_gateway_is_ready_and_reports_four_upstreams_up(platform: RunningPlatform) -> None:
    ready = httpx.get(f"{platform.gateway}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"redis": {"status": "ok"}}  # its own needs only
    report = httpx.get(f"{platform.gateway}/readyz/upstreams").json()
    assert report["status"] == "ok"
    assert {name: u["status"] for name, u in report["upstreams"].items()} == dict.fromkeys(
        SERVICES, "up"
    )
    for name in SERVICES:
        response = httpx.get(f"{platform.url(name)}/readyz")
        assert response.status_code == 200, name
        assert response.json()["checks"]["postgres"]["status"] == "ok", name
        assert response.json()["checks"]["redis"]["status"] == "ok", name


def test_every_process_serves_prometheus_metrics(platform: RunningPlatform) -> None:
    for name in [*SERVICES, "gateway"]:
        response = httpx.get(f"{platform.url(name)}/metrics")
        assert response.status_code == 200, name
        families = {f.name for f in text_string_to_metric_families(response.text)}
        assert f"{name}_http_requests" in families, name
        assert f"{name}_http_request_duration_seconds" in families, name


def _signed(
    platform: RunningPlatform, path: str, *, now: float | None = None, audience: str = "inference"
) -> str:
    identity = Identity(sub="e2e-user", kind="user", iss="gateway", roles=("member",))
    key = platform.signing_key.encode()
    return sign(identity, key, method="GET", path=path, audience=audience, now=now)


def test_services_refuse_calls_that_skip_the_gateway(platform: RunningPlatform) -> None:
    url = f"{platform.url('inference')}/v1/models"
    unsigned = httpx.get(url)
    assert unsigned.status_code == 401
    assert unsigned.headers["content-type"] == "application/problem+json"
    assert unsigned.json()["trace_id"]

    signed = httpx.get(url, headers={HEADER: _signed(platform, "/v1/models")})
    assert signed.status_code != 401

    stale = httpx.get(url, headers={HEADER: _signed(platform, "/v1/models", now=time.time() - 120)})
    assert stale.status_code == 401
    # A header captured on its way to another service is refused here.
    elsewhere = _signed(platform, "/v1/models", audience="embeddings")
    assert httpx.get(url, headers={HEADER: elsewhere}).status_code == 401
    for name in SERVICES:
        assert httpx.get(f"{platform.url(name)}/v1/anything").status_code == 401, name


def test_gateway_routes_to_the_owning_service(platform: RunningPlatform, login: Login) -> None:
    admin = login(ADMIN_EMAIL, ADMIN_PASSWORD)
    response = admin.get("/v1/models")
    assert response.status_code == 200
    assert response.json()["object"] == "list"
    assert "local/all-MiniLM-L6-v2" in [m["id"] for m in response.json()["data"]]
    logs = platform.lines_with(response.headers["x-request-id"], at_least=2)
    assert any('"service": "inference"' in line for line in logs)
    assert any('"service": "gateway"' in line for line in logs)


def test_one_openapi_document_for_the_public_api(platform: RunningPlatform) -> None:
    document = httpx.get(f"{platform.gateway}/openapi.json").json()
    assert document["info"]["title"] == "LLM Platform API"
    assert "x-unavailable-services" not in document["info"]
    assert {"/auth/login", "/auth/api-keys", "/v1/models"} <= set(document["paths"])
    assert httpx.get(f"{platform.gateway}/docs").status_code == 200


def test_no_password_or_token_reaches_the_logs(platform: RunningPlatform, login: Login) -> None:
    password = "correct-horse-battery-staple-4471"
    email = "log-check@example.com"
    gateway = platform.gateway
    httpx.post(f"{gateway}/auth/register", json={"email": email, "password": password})
    httpx.post(f"{gateway}/auth/login", json={"email": email, "password": "wrong-" + password})
    user = login(email, password)
    key = user.post("/auth/api-keys", json={"name": "logs"}).json()["key"]
    session_token = user.cookies["session"]
    last = httpx.get(
        f"{gateway}/v1/models?api_key={key}",
        headers={"Authorization": f"Bearer {key}", "X-Api-Key": key},
    )
    assert last.status_code == 200
    platform.lines_with(last.headers["x-request-id"], at_least=2)
    log = platform.log()
    assert '"route": "/auth/login"' in log
    for secret in (password, key, session_token, platform.signing_key, ADMIN_PASSWORD):
        assert secret not in log


def test_json_log_lines_carry_service_trace_and_request_ids(
    platform: RunningPlatform, login: Login
) -> None:
    response = login(ADMIN_EMAIL, ADMIN_PASSWORD).get("/auth/me")
    lines = platform.lines_with(response.headers["x-request-id"], at_least=2)
    assert len(lines) == 2  # one access line at the gateway, one at auth
    for line in lines:
        payload = line.split("|", 1)[1]
        for key in ("service", "trace_id", "span_id", "request_id", "user_id"):
            assert re.search(rf'"{key}": ?"[^"]+"', payload), (key, line)


def test_make_run_on_a_fresh_machine_starts_its_own_servers_and_sigterm_stops_all(
    tmp_path: Path, server_path: Path
) -> None:
    """No DATABASE_URL, a REDIS_URL on port 0 (any free port): `make run` starts an
    embedded PostgreSQL and a Redis itself, and SIGTERM leaves no process behind within
    15 s."""
    fresh = start_platform(
        {"PLATFORM_DATA_DIR": str(server_path / "data"), "REDIS_URL": "redis://127.0.0.1:0/0"},
        tmp_path,
    )
    try:
        children = fresh.descendants()
        names = " ".join(" ".join(p.cmdline()) for p in children)
        assert "redis-server" in names
        assert (server_path / "data" / "pg" / "postmaster.pid").exists()
        postmaster = int((server_path / "data" / "pg" / "postmaster.pid").read_text().split()[0])
        admin = httpx.post(
            f"{fresh.gateway}/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        )
        assert admin.status_code == 200
        assert "admin" in admin.json()["user"]["roles"]

        started = time.monotonic()
        fresh.process.send_signal(signal.SIGTERM)
        try:
            fresh.process.wait(15)
        except subprocess.TimeoutExpired:
            raise AssertionError("make run did not exit within 15 s of SIGTERM") from None
        left = max(0.0, 15 - (time.monotonic() - started))
        _, alive = psutil.wait_procs(children, timeout=left)
        assert not alive, [(p.pid, p.name()) for p in alive]
        assert not _running(postmaster), "the embedded PostgreSQL is still running"
        assert "SIGTERM received" in fresh.log()
    finally:
        fresh.stop()


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited daemon waits for init to reap it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_make_run_holds_its_ports_from_the_moment_it_chooses_them(
    postgres_admin_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Issue 15: a port chosen by binding port 0 and letting go lies in the ephemeral
    range, where any outgoing connection may take it before the service binds it again.
    Here the test holds such a port, and tries to take each port `make run` announces, as
    that connection would, before the services have started: it cannot, and the platform
    starts on exactly those ports."""
    low, high = ports.ephemeral_range()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))  # how ports were chosen before
        held.listen()
        assert low <= held.getsockname()[1] <= high

        database = f"e2e_{secrets.token_hex(4)}"
        running = launch_platform(
            {
                "DATABASE_URL": devstack.with_database(postgres_admin_url, database),
                "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/2",
            },
            tmp_path,
        )
        try:
            announced = running.wait_for_ports()
            assert set(announced) == {*SERVICES, "gateway"}
            for name, port in announced.items():
                assert not low <= port <= high, (name, port)
                with socket.socket() as thief:
                    thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    with pytest.raises(OSError, match="in use") as taken:
                        thief.bind(("127.0.0.1", port))
                assert taken.value.errno == errno.EADDRINUSE, name
            running.wait_until_ready()
            assert running.process.poll() is None
            for name, port in announced.items():
                assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200, name
        finally:
            running.stop()
            asyncio.run(_drop_database(postgres_admin_url, database))


def test_a_port_in_use_stops_make_run_at_once_naming_its_holder(
    tmp_path: Path, server_path: Path
) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        running = launch_platform(
            {"GATEWAY_PORT": str(port), "PLATFORM_DATA_DIR": str(server_path / "data")}, tmp_path
        )
        try:
            code = running.process.wait(60)
        finally:
            running.stop()
    assert code != 0
    log = running.log()
    assert f"gateway: 127.0.0.1:{port} is already in use by pid {os.getpid()}" in log
    assert "set GATEWAY_PORT" in log
    assert "migrating" not in log  # refused before any work
