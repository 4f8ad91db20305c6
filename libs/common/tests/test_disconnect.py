"""A client that hangs up cancels the work for it: 499 client-closed."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request
from starlette.types import Message

from common.disconnect import disconnected, until_disconnect
from common.errors import ClientClosed


def request(messages: asyncio.Queue[Message]) -> Request:
    return Request({"type": "http", "method": "POST", "headers": []}, receive=messages.get)


async def test_work_done_first_is_the_answer() -> None:
    messages: asyncio.Queue[Message] = asyncio.Queue()

    async def work() -> str:
        return "answer"

    assert await until_disconnect(request(messages), work()) == "answer"


async def test_a_client_that_hangs_up_cancels_the_work() -> None:
    messages: asyncio.Queue[Message] = asyncio.Queue()
    cancelled = asyncio.Event()

    async def work() -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    async def hang_up() -> None:
        await asyncio.sleep(0.01)
        await messages.put({"type": "http.request", "body": b"", "more_body": False})
        await messages.put({"type": "http.disconnect"})

    hanging_up = asyncio.ensure_future(hang_up())
    with pytest.raises(ClientClosed) as closed:
        await until_disconnect(request(messages), work())
    await hanging_up

    assert cancelled.is_set()
    assert (closed.value.status, closed.value.slug) == (499, "client-closed")


async def test_disconnected_waits_for_the_disconnect_only() -> None:
    messages: asyncio.Queue[Message] = asyncio.Queue()
    await messages.put({"type": "http.request", "body": b"late", "more_body": False})
    waiting = asyncio.ensure_future(disconnected(messages.get))
    await asyncio.sleep(0.01)
    assert not waiting.done()

    await messages.put({"type": "http.disconnect"})
    await asyncio.wait_for(waiting, 1)


async def test_disconnected_acts_on_the_disconnect() -> None:
    messages: asyncio.Queue[Message] = asyncio.Queue()
    called: list[str] = []
    waiting = asyncio.ensure_future(disconnected(messages.get, then=lambda: called.append("x")))
    await asyncio.sleep(0.01)
    assert called == []

    await messages.put({"type": "http.disconnect"})
    await asyncio.wait_for(waiting, 1)
    assert called == ["x"]
