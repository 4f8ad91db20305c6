"""Server-sent events as OpenAI's SDKs read them."""

from __future__ import annotations

from collections.abc import AsyncIterator

from common import sse


def test_an_event_is_one_data_line_of_compact_json() -> None:
    assert sse.event({"a": [1, "é"], "b": None}) == b'data: {"a":[1,"\\u00e9"],"b":null}\n\n'
    assert sse.DONE == b"data: [DONE]\n\n"


async def test_a_response_streams_the_events_unbuffered() -> None:
    async def events() -> AsyncIterator[bytes]:
        yield sse.event({"n": 1})
        yield sse.DONE

    response = sse.response(events())

    assert response.media_type == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert [chunk async for chunk in response.body_iterator] == [
        b'data: {"n":1}\n\n',
        b"data: [DONE]\n\n",
    ]
