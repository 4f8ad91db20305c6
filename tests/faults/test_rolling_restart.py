"""SIGTERM to inference, and to the gateway, with 50 requests in flight (streams among
them): every admitted request is answered in full before the process exits."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from devkit.e2e import FakeOpenAI, RunningPlatform, new_member_with_key

IN_FLIGHT = 50
ROUTE = "/v1/chat/completions"


async def send(gateway: str, key: str, *, stream: bool) -> tuple[int, str]:
    body = {"model": "openai/gpt-4o-mini", "stream": stream,
            "messages": [{"role": "user", "content": "words:12"}]}  # fmt: skip
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
        response = await client.post(ROUTE, json=body, headers={"Authorization": f"Bearer {key}"})
        return response.status_code, response.text


def status_of(gateway: str, key: str) -> int:
    """A plain chat call's status; 0 when no HTTP answer came (the gateway itself away)."""
    try:
        return asyncio.run(send(gateway, key, stream=False))[0]
    except httpx.TransportError:
        return 0


@pytest.mark.parametrize("name", ["inference", "gateway"])
def test_sigterm_lets_every_admitted_request_finish(
    faulty: RunningPlatform, provider: FakeOpenAI, name: str
) -> None:
    key = new_member_with_key(faulty, provider, f"rolling-{name}@example.com")
    process = faulty.service_process(name)
    assert process is not None

    async def scenario() -> list[tuple[int, str]]:
        provider.control.delay(ROUTE, first_byte_seconds=2.0, times=IN_FLIGHT)
        calls = [asyncio.ensure_future(send(faulty.gateway, key, stream=n % 2 == 0))
                 for n in range(IN_FLIGHT)]  # fmt: skip
        deadline = time.monotonic() + 30
        while provider.control.pending(ROUTE) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # until all 50 are at the provider: admitted
        if provider.control.pending(ROUTE):
            done = [call.result() for call in calls if call.done()]
            refused = [(s, t[:300]) for s, t in done if s != 200]
            raise AssertionError(f"not all admitted: {len(done)} answered, refused: {refused}")
        process.send_signal(signal.SIGTERM)
        return await asyncio.gather(*calls)

    answers = asyncio.run(scenario())

    process.wait(30)  # it exited once they were answered (not our child: no exit code)
    assert [status for status, _ in answers] == [200] * IN_FLIGHT, answers
    streamed = [text for n, (_, text) in enumerate(answers) if n % 2 == 0]
    assert all(text.rstrip().endswith("data: [DONE]") for text in streamed)
    # `make run` brings it back by itself (its keeper), and chat works again.
    deadline = time.monotonic() + 60
    while (status := status_of(faulty.gateway, key)) != 200:
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    restarted = faulty.service_process(name)
    assert restarted is not None
    assert restarted.pid != process.pid
