"""SIGTERM to inference with 50 requests in flight (streams among them): every admitted
request is answered in full before the process exits."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import psutil

from devkit.e2e import FakeOpenAI, RunningPlatform, new_member_with_key

IN_FLIGHT = 50
ROUTE = "/v1/chat/completions"


def service_process(platform: RunningPlatform, name: str) -> psutil.Process:
    """The service's own process (its keeper's child: `python -m <name>`)."""
    for process in platform.descendants():
        try:
            command = process.cmdline()
        except psutil.Error:
            continue
        if command[-2:] == ["-m", name]:  # not its keeper: `-m devkit.keeper <name>`
            return process
    raise AssertionError(f"no {name} process among {platform.descendants()}")


async def send(gateway: str, key: str, *, stream: bool) -> tuple[int, str]:
    body = {"model": "openai/gpt-4o-mini", "stream": stream,
            "messages": [{"role": "user", "content": "words:12"}]}  # fmt: skip
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
        response = await client.post(ROUTE, json=body, headers={"Authorization": f"Bearer {key}"})
        return response.status_code, response.text


def test_sigterm_lets_every_admitted_request_finish(
    faulty: RunningPlatform, provider: FakeOpenAI
) -> None:
    key = new_member_with_key(faulty, provider, "rolling@example.com")
    inference = service_process(faulty, "inference")
    keeper = inference.parent()

    async def scenario() -> list[tuple[int, str]]:
        provider.control.delay(ROUTE, first_byte_seconds=2.0, times=IN_FLIGHT)
        calls = [asyncio.ensure_future(send(faulty.gateway, key, stream=n % 2 == 0))
                 for n in range(IN_FLIGHT)]  # fmt: skip
        deadline = time.monotonic() + 30
        while provider.control.pending(ROUTE) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # until all 50 are at the provider: admitted
        assert provider.control.pending(ROUTE) == 0
        inference.send_signal(signal.SIGTERM)
        return await asyncio.gather(*calls)

    answers = asyncio.run(scenario())

    inference.wait(30)  # it exited once they were answered (not our child: no exit code)
    assert [status for status, _ in answers] == [200] * IN_FLIGHT, answers
    streamed = [text for n, (_, text) in enumerate(answers) if n % 2 == 0]
    assert all(text.rstrip().endswith("data: [DONE]") for text in streamed)
    # `make run` brings it back (or was told to), and chat works again.
    deadline = time.monotonic() + 60
    while True:
        status, _ = asyncio.run(send(faulty.gateway, key, stream=False))
        if status == 200:
            break
        assert time.monotonic() < deadline, status
        keeper = inference.parent() if inference.is_running() else None
        if keeper is None:
            for process in faulty.descendants():
                if (
                    "devkit.keeper" in " ".join(process.cmdline())
                    and "inference" in process.cmdline()
                ):
                    process.send_signal(signal.SIGUSR2)  # make start-service SERVICE=inference
        time.sleep(0.5)
