"""pgvector's `vector` type for SQLAlchemy and asyncpg: binary on the wire, never text.

Vectors travel in pgvector's binary format (int16 dimension, int16 unused, float4s, big
endian), packed and unpacked with `struct`: no float formatting or parsing anywhere.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import UserDefinedType

# pgvector's limit for a `vector` HNSW index (and ours for any collection).
MAX_DIMENSION = 2000
FLOAT32_MAX = 3.4028234663852886e38


def pack(values: Sequence[float]) -> bytes:
    """A vector in pgvector's binary format (accepted as is by the codec below)."""
    return struct.pack(f">HH{len(values)}f", len(values), 0, *values)


def unpack(data: bytes) -> list[float]:
    (dimension,) = struct.unpack_from(">H", data)
    return list(struct.unpack_from(f">{dimension}f", data, 4))


def unpack_base64_le(data: bytes) -> list[float]:
    """OpenAI's base64 embeddings: little-endian float32s."""
    return list(struct.unpack(f"<{len(data) // 4}f", data))


def _encode(value: bytes | Sequence[float]) -> bytes:
    return value if isinstance(value, bytes) else pack(value)


class Vector(UserDefinedType[list[float]]):
    """`vector(n)`; bind values are float sequences or `pack`ed bytes, results float lists."""

    cache_ok = True

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension

    def get_col_spec(self, **_: Any) -> str:
        return f"vector({self.dimension})"


async def register_codec(connection: Any) -> None:
    """Teach one asyncpg connection the binary `vector` codec (if pgvector is installed)."""
    schema = await connection.fetchval(
        "SELECT n.nspname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
        " WHERE t.typname = 'vector' LIMIT 1"
    )
    if schema is not None:
        await connection.set_type_codec(
            "vector", schema=schema, encoder=_encode, decoder=unpack, format="binary"
        )


def install_codec(engine: AsyncEngine) -> None:
    """Every new connection of the engine gets the codec."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.run_async(register_codec)
