"""FaultControl's queueing rules, and the fakes served as processes by `devkit.fakes.run`."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from openai import AsyncAzureOpenAI, AsyncOpenAI

from common import ports
from devkit.fakes import Fault, FaultControl


def test_faults_are_taken_in_order_one_per_request() -> None:
    control = FaultControl()
    control.fail("/a", status=503, times=2)
    control.malformed("/a")
    control.delay("/a", first_byte_seconds=1.0)

    taken = [control.take("/a") for _ in range(5)]

    assert [fault.status if fault else None for fault in taken] == [503, 503, None, None, None]
    assert taken[2] == Fault(malformed=True)
    assert taken[3] == Fault(first_byte_seconds=1.0)
    assert taken[4] is None
    assert control.take("/b") is None


def test_prefix_routes_and_reset() -> None:
    control = FaultControl()
    control.cut_stream("/api/models/*", after_chunks=0)
    control.fail("/api/models/x/y", status=404)

    assert control.take("/api/models/x/y") == Fault(status=404)
    assert control.take("/api/models/a/b") == Fault(cut_after_chunks=0)
    assert control.take("/api/models/a/b") is None

    control.fail("/a", times=3)
    assert control.pending("/a") == 3
    control.reset()
    assert control.pending("/a") == 0
    with pytest.raises(ValueError, match="times"):
        control.fail("/a", times=0)


@pytest.fixture
async def served_fake(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """`python -m devkit.fakes.run <kind> --delay-ms 100 --api-key k` on a socket handed
    over to it (common.ports), started."""
    kind: str = request.param
    process, port = ports.spawn(
        [sys.executable, "-m", "devkit.fakes.run", kind, "--delay-ms", "100", "--api-key", "k"]
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            # A deadline, not a count of tries (each may take long on a loaded machine);
            # and not past it without an answer.
            deadline = time.monotonic() + 60
            while True:
                try:
                    await http.get(f"{url}/v1/models")
                    break
                except httpx.TransportError:
                    assert process.poll() is None, "the fake exited"
                    assert time.monotonic() < deadline, "the fake did not answer within 60 s"
                    await asyncio.sleep(0.05)
        yield url
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait)


@pytest.mark.parametrize("served_fake", ["openai", "hf"], indirect=True)
async def test_run_serves_the_fake_with_a_fixed_delay(served_fake: str) -> None:
    async with AsyncOpenAI(base_url=f"{served_fake}/v1", api_key="k", max_retries=0) as client:
        started = time.monotonic()
        reply = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        elapsed = time.monotonic() - started

    assert reply.choices[0].message.content == "echo: hi"
    assert elapsed >= 0.1


@pytest.mark.parametrize("served_fake", ["azure"], indirect=True)
async def test_run_serves_the_azure_fake(served_fake: str) -> None:
    async with AsyncAzureOpenAI(
        azure_endpoint=served_fake, api_key="k", api_version="2024-10-21", max_retries=0
    ) as client:
        reply = await client.chat.completions.create(
            model="chat-prod", messages=[{"role": "user", "content": "hi"}]
        )
    assert reply.choices[0].message.content == "echo: hi"
