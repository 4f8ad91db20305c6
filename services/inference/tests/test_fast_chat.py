"""Chat completions below FastAPI's router (api.fast_chat, common.fastpath): every answer,
right or wrong, is the one the FastAPI route gives, and a model call is made once."""

from __future__ import annotations

import json
from typing import Any

import httpx

from common.identity import Identity

from .conftest import Inference, MakeInference, Upstream, member

CHAT = "/v1/chat/completions"
ROUTE = "/v1/chat/completions"  # on the upstream
VOLATILE = {"id", "created", "trace_id", "request_id", "system_fingerprint"}


def ask(text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def as_user_sees(response: httpx.Response) -> tuple[int, str, Any]:
    """Status, content type and body, without what differs between any two calls."""
    kind = response.headers["content-type"]
    if kind.startswith("text/event-stream"):
        events = [json.loads(line[6:]) for line in response.text.splitlines()
                  if line.startswith("data: {")]  # fmt: skip
        return response.status_code, kind, [_stable(e) for e in events]
    return response.status_code, kind, _stable(response.json())


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


async def test_the_fast_chat_path_answers_as_the_route_does(
    make_inference: MakeInference, openai_upstream: Upstream
) -> None:
    no_permission = Identity(
        sub=member().sub, kind="user", iss="gateway", roles=("member",),
        permissions=("models:read",),
    )  # fmt: skip
    service = Identity(sub="service:x", kind="service", iss="x")
    requests: list[tuple[str, Identity, dict[str, Any], Any]] = [
        ("ok", member(), {"json": ask()}, None),
        ("stream", member(), {"json": ask("words:5", stream=True)}, None),
        ("stream with usage", member(),
         {"json": ask(stream=True, stream_options={"include_usage": True})}, None),
        ("unknown field kept", member(), {"json": ask(top_k=3)}, None),
        ("nulls dropped", member(), {"json": ask(temperature=None)}, None),
        ("no messages", member(), {"json": {"model": "openai/gpt-4o-mini", "messages": []}}, None),
        ("bad temperature", member(), {"json": ask(temperature=3)}, None),
        ("unknown model", member(), {"json": ask(model="nope/x")}, None),
        ("malformed JSON", member(), {"content": b'{"model": ',
                                      "headers": {"content-type": "application/json"}}, None),
        ("a list", member(), {"json": [ask()]}, None),
        ("form body", member(), {"content": b"model=x", "headers": {
            "content-type": "application/x-www-form-urlencoded"}}, None),
        ("charset", member(), {"content": json.dumps(ask()).encode(), "headers": {
            "content-type": "application/json; charset=utf-8"}}, None),
        ("no permission", no_permission, {"json": ask()}, None),
        ("a service", service, {"json": ask()}, None),
        ("provider 400", member(), {"json": ask()},
         lambda c: c.fail(ROUTE, status=400, message="max_tokens is too large")),
        ("provider 500 every time", member(), {"json": ask()},
         lambda c: c.fail(ROUTE, status=500, times=10)),
    ]  # fmt: skip
    async with make_inference() as fast, make_inference(fast_chat=False) as plain:
        await fast.credential(openai_upstream.url)
        await plain.credential(openai_upstream.url, name="the same, for the route")
        for case, who, kwargs, fault in requests:
            answers, calls = [], []
            for app in (fast, plain):
                openai_upstream.control.reset()
                if fault is not None:
                    fault(openai_upstream.control)
                answers.append(as_user_sees(await app.call("POST", CHAT, identity=who, **kwargs)))
                calls.append(len(openai_upstream.control.requests_to(ROUTE)))
            assert answers[0] == answers[1], case
            assert calls[0] == calls[1], case
        unsigned = [await httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app.app), base_url="http://t"
        ).post(CHAT, json=ask()) for app in (fast, plain)]  # fmt: skip
        assert as_user_sees(unsigned[0]) == as_user_sees(unsigned[1])
        assert unsigned[0].status_code == 401


async def test_a_provider_error_after_the_checks_is_answered_once(
    inference: Inference, openai_upstream: Upstream
) -> None:
    """Past its checks the fast path owns the request: a provider's refusal is its
    problem+json, not a second call through the route."""
    await inference.credential(openai_upstream.url)
    openai_upstream.control.fail(ROUTE, status=400, message="max_tokens is too large: 99999")
    response = await inference.call("POST", CHAT, json=ask())
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert len(openai_upstream.control.requests_to(ROUTE)) == 1
    (event,) = await inference.events()
    assert (event.status, event.attempts) == ("error", 1)
