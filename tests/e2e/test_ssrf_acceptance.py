"""Issue 16's SSRF acceptance through the gateway of `make run`: a member's credential
cannot make inference call the platform's own services, cloud metadata, or whatever a
redirect points at. `make run` allows loopback providers (INFERENCE_ALLOWED_PRIVATE_NETWORKS)
and lists its own ports as never callable (INFERENCE_REFUSED_ENDPOINTS); here the platform
runs on free ports, so "auth on 127.0.0.1:8001" is auth's actual port."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from .conftest import MEMBER_PASSWORD, Login, RunningPlatform

SECRET = "SECRET-behind-the-redirect-51c9"
CHAT = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Redirector:
    """A server on 127.0.0.1 (an address `make run` allows) answering every request with a
    307 to `locations[path prefix]`; `hits` counts what reached it."""

    url: str
    locations: dict[str, str]
    hits: list[str] = field(default_factory=list)


@pytest.fixture
def redirector() -> Iterator[Redirector]:
    state = Redirector("", {})

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            state.hits.append(self.path)
            self.rfile.read(int(self.headers.get("content-length") or 0))
            prefix = self.path.split("/")[1]
            self.send_response(307)
            self.send_header("Location", state.locations[prefix])
            self.send_header("Content-Length", str(len(SECRET)))
            self.end_headers()
            self.wfile.write(SECRET.encode())

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture
def member(platform: RunningPlatform, login: Login) -> httpx.Client:
    email = "ssrf-member@example.com"
    httpx.post(
        f"{platform.gateway}/auth/register", json={"email": email, "password": MEMBER_PASSWORD}
    )
    return login(email, MEMBER_PASSWORD)


def credential(member: httpx.Client, base_url: str) -> httpx.Response:
    return member.post(
        "/v1/providers/credentials",
        json={"provider": "openai", "name": base_url, "api_key": "sk-ssrf-0000000000000000",
              "base_url": base_url},
    )  # fmt: skip


def problem(response: httpx.Response, status: int, slug: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == f"urn:llm-platform:problem:{slug}"
    assert "egress policy" in body["detail"]
    detail: str = body["detail"]
    return detail


def test_a_credential_at_the_platform_or_cloud_metadata_is_refused_at_creation(
    platform: RunningPlatform, member: httpx.Client
) -> None:
    own = [f"http://127.0.0.1:{platform.ports[name]}" for name in ("auth", "gateway", "telemetry")]
    refused = (*own, "http://169.254.169.254/", "http://169.254.169.254/latest/meta-data/")
    for base_url in refused:
        detail = problem(credential(member, base_url), 422, "egress-refused")
        assert base_url.split("/")[2].rsplit(":", 1)[0] in detail
    # None stored (the list also shows shared credentials other tests' admins made).
    names = {c["name"] for c in member.get("/v1/providers/credentials").json()}
    assert not names & set(refused)


def test_a_name_for_the_platform_is_refused_at_call_time_without_its_answer(
    platform: RunningPlatform, member: httpx.Client
) -> None:
    created = credential(member, f"http://localhost:{platform.ports['auth']}")
    assert created.status_code == 201, created.text  # a name is judged when it is resolved
    try:
        detail = problem(member.post("/v1/chat/completions", json=CHAT), 422, "egress-refused")
        assert "platform's own services" in detail
        assert "401" not in detail
        assert "signature" not in detail.lower()  # what auth answers an unsigned request
    finally:
        member.delete(f"/v1/providers/credentials/{created.json()['id']}")


@pytest.mark.parametrize("to", ["metadata", "auth"])
def test_a_host_redirecting_to_metadata_or_the_platform_is_not_followed(
    platform: RunningPlatform, member: httpx.Client, redirector: Redirector, to: str
) -> None:
    redirector.locations.update(
        metadata="http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        auth=f"http://127.0.0.1:{platform.ports['auth']}/auth/users",
    )
    created = credential(member, f"{redirector.url}/{to}/v1")
    assert created.status_code == 201, created.text  # 127.0.0.1 is allowed under make run
    try:
        response = member.post("/v1/chat/completions", json=CHAT)
        detail = problem(response, 502, "provider-redirect")
        assert "never follows redirects" in detail
        assert SECRET not in response.text
        assert "169.254" not in detail
        assert redirector.hits == [f"/{to}/v1/chat/completions"]  # once, not retried
    finally:
        member.delete(f"/v1/providers/credentials/{created.json()['id']}")
