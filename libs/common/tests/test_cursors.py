"""Keyset cursors: a key reads back as encoded; anything else is 422 invalid-cursor."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from common.cursors import decode_cursor, encode_cursor
from common.errors import InvalidCursor

MOMENT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
ROW = uuid.UUID("5f0c6f5e-8b1a-4d0e-9c3b-2a7d1e4f6b80")


def forged(parts: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


def test_a_key_reads_back_as_encoded() -> None:
    assert decode_cursor(encode_cursor(MOMENT, ROW), datetime, uuid.UUID) == (MOMENT, ROW)
    assert decode_cursor(encode_cursor(2**63 - 1), int) == (2**63 - 1,)
    elsewhere = MOMENT.astimezone(timezone(timedelta(hours=-5)))
    assert decode_cursor(encode_cursor(elsewhere, ROW), datetime, uuid.UUID)[0] == MOMENT


def test_the_format_is_compact_base64url_json_without_padding() -> None:
    cursor = encode_cursor(MOMENT, ROW)
    assert base64.urlsafe_b64decode(cursor + "=") == b'[1767323045678901,"%s"]' % ROW.hex.encode()
    assert cursor == "WzE3NjczMjMwNDU2Nzg5MDEsIjVmMGM2ZjVlOGIxYTRkMGU5YzNiMmE3ZDFlNGY2YjgwIl0"
    assert encode_cursor(42) == forged([42])


@pytest.mark.parametrize(
    ("cursor", "kinds"),
    [
        pytest.param("garbage!", (int,), id="not-base64"),
        pytest.param(forged({"a": 1}), (int,), id="not-a-list"),
        pytest.param("eyJh", (int,), id="not-json"),
        pytest.param(forged([]), (int,), id="too-short"),
        pytest.param(forged([1, 2]), (int,), id="too-long"),
        pytest.param(forged([True]), (int,), id="a-boolean"),
        pytest.param(forged([1.5]), (int,), id="a-fraction"),
        pytest.param(forged([0]), (int,), id="zero"),
        pytest.param(forged([-1]), (int,), id="negative"),
        pytest.param(forged([2**63]), (int,), id="beyond-bigint"),
        pytest.param(forged(["1"]), (int,), id="an-int-as-text"),
        pytest.param(forged([MOMENT.isoformat(), ROW.hex]), (datetime, uuid.UUID),
                     id="a-time-as-text"),
        pytest.param(forged([10**20, ROW.hex]), (datetime, uuid.UUID), id="a-time-out-of-range"),
        pytest.param(forged([1.5, ROW.hex]), (datetime, uuid.UUID), id="a-fractional-time"),
        pytest.param(forged([1, "not-an-id"]), (datetime, uuid.UUID), id="not-a-uuid"),
        pytest.param(forged([1, 7]), (datetime, uuid.UUID), id="a-uuid-as-int"),
        pytest.param(forged([ROW.hex, 1]), (datetime, uuid.UUID), id="parts-swapped"),
        pytest.param("W" * 300, (int,), id="too-long-to-parse"),
        pytest.param(forged([[[[[[1]]]]]]), (int,), id="nested"),
    ],
)  # fmt: skip
def test_anything_else_is_refused(cursor: str, kinds: tuple[type, ...]) -> None:
    with pytest.raises(InvalidCursor) as refused:
        decode_cursor(cursor, *kinds)

    assert (refused.value.status, refused.value.slug) == (422, "invalid-cursor")
