"""Configuration of the embeddings service (environment variables prefixed `EMBEDDINGS_`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from common.settings import DatabaseSettings


class EmbeddingsSettings(DatabaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDDINGS_")

    service_name: ClassVar[str] = "embeddings"
    default_port: ClassVar[int] = 8003

    # The inference service, asked for every vector (signed as us, for the user).
    inference_url: str = "http://127.0.0.1:8002"
    inference_timeout_seconds: float = Field(120.0, gt=0)
    # Texts per call to inference, and calls in flight at once for one request.
    embed_batch_size: int = Field(256, ge=1, le=2048)
    embed_concurrency: int = Field(2, ge=1, le=16)
    # HNSW build parameters (pgvector's defaults) and the default and largest ef_search.
    hnsw_m: int = Field(16, ge=2, le=100)
    hnsw_ef_construction: int = Field(64, ge=4, le=1000)
    default_ef_search: int = Field(100, ge=1, le=1000)
    # A collection's HNSW index is built (a plain CREATE INDEX, pgvector's fast bulk
    # build) once it holds this many documents and has had no write for `index_idle_seconds`;
    # until then it is searched exactly. Later writes maintain the index row by row.
    index_min_rows: int = Field(1, ge=1)
    index_idle_seconds: float = Field(2.0, ge=0)
    index_build_memory: str = Field("256MB", pattern=r"^[1-9][0-9]{0,5}(kB|MB|GB)$")
    # Background work (index builds, re-embedding after a model change): how often each
    # replica looks for work, and when a claim counts as abandoned: a replica renews its own
    # claims every third of `worker_stale_seconds`, so a claim that old has lost its worker.
    worker_poll_seconds: float = Field(1.0, gt=0)
    worker_stale_seconds: float = Field(30.0, gt=0)
    reembed_batch_size: int = Field(256, ge=1, le=2048)
    # Queries answered below FastAPI's router on their success path (api.fast_query); off,
    # every query goes through the FastAPI route (the same answers, ~1 ms more CPU each).
    fast_query: bool = True
