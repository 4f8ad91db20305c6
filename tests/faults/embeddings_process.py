"""The embeddings service as a process of its own (to SIGKILL it), in front of an inference
fake that a test can hold mid-call, and looks into its database from outside.

The service is `python -m embeddings` serving a socket bound here (common.ports.spawn), on
a database of its own; a restart takes the same port again. The fake answers
`POST /v1/embeddings` as inference does for the service (base64 float32, `index`), each
model with a dimension of its own; `hold_after(n)` lets `n` more calls through and holds
the next ones until `release()` or until their caller hangs up (`abandoned`).
"""

from __future__ import annotations

import asyncio
import inspect
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common import ports
from common.disconnect import disconnected
from common.identity import Identity, SignedIdentity
from devkit import devstack
from devkit.fakes.openai_server import embedding_vector, encode_base64
from devkit.testing import _drop_database

T = TypeVar("T")
SMALL, LARGE = "fake/small", "fake/large"  # the fake's two models
DIMENSIONS = {SMALL: 8, LARGE: 12}
READY_WITHIN = 90.0
OWNER = Identity(
    sub=str(uuid.UUID(int=2101)), kind="user", iss="gateway", roles=("member",),
    permissions=("embeddings:read", "embeddings:write", "inference:invoke"),
)  # fmt: skip


async def eventually(
    check: Callable[[], Awaitable[T | None] | T | None], what: str, within: float = 60
) -> T:
    """The first truthy value of `check` (a function or a coroutine function), polled until
    `within` seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        found = check()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.05)


class HeldInference:
    """The inference service as the embeddings service sees it, with a hold."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []  # answered: (model, texts)
        self.abandoned = 0  # held calls whose caller went away
        self.held = 0  # calls that met the hold
        self._free: int | None = None  # calls still let through before the hold
        self._model: str | None = None  # the model whose calls are held (None: all)
        self.holding = asyncio.Event()
        self._released = asyncio.Event()
        self.app = Starlette(routes=[Route("/v1/embeddings", self._embed, methods=["POST"])])

    def hold_after(self, calls: int, model: str | None = None) -> None:
        """Answer `calls` more calls (for `model`, if given), then hold every later one
        until release()."""
        self._free, self._model = calls, model
        self.holding, self._released = asyncio.Event(), asyncio.Event()

    def release(self) -> None:
        self._free = None
        self._released.set()

    def texts(self, model: str) -> list[str]:
        return [text for called, texts in self.calls if called == model for text in texts]

    async def _embed(self, request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        model, texts = body["model"], body["input"]
        if self._free is not None and self._model in (None, model):
            if self._free > 0:
                self._free -= 1
            elif not await self._held(request):
                self.abandoned += 1
                return Response(status_code=499)
        self.calls.append((model, texts))
        dimension = DIMENSIONS[model]
        data = [{"object": "embedding", "index": i,
                 "embedding": encode_base64(embedding_vector(text, dimension))}
                for i, text in enumerate(texts)]  # fmt: skip
        usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        return JSONResponse({"object": "list", "data": data, "model": model, "usage": usage})

    async def _held(self, request: Request) -> bool:
        """Until released (True) or the caller hangs up (False)."""
        self.held += 1
        self.holding.set()
        released = asyncio.ensure_future(self._released.wait())
        gone = asyncio.ensure_future(disconnected(request.receive))
        await asyncio.wait({released, gone}, return_when=asyncio.FIRST_COMPLETED)
        released.cancel()
        gone.cancel()
        return self._released.is_set()


class EmbeddingsProcess:
    """`python -m embeddings` on a port that stays its own across restarts."""

    def __init__(self, env: dict[str, str], log_path: Path, signing_key: str) -> None:
        self.env, self.log_path, self.signing_key = env, log_path, signing_key
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def start(self, **settings: str) -> None:
        """Started (with `settings`, EMBEDDINGS_* variables, added) and ready."""
        env = {**self.env, **settings}
        with self.log_path.open("ab") as log:
            self.process, self.port = ports.spawn(
                [sys.executable, "-m", "embeddings"], env=env, port=self.port,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

        async def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the embeddings service exited:\n{self.log()[-3000:]}")
            try:
                async with httpx.AsyncClient() as client:
                    return (await client.get(f"{self.url}/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(ready, "the embeddings service is ready", READY_WITHIN)

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self, timeout: float = 60) -> httpx.AsyncClient:
        """Calls signed for OWNER, as the gateway signs them."""
        auth = SignedIdentity(self.signing_key.encode(), OWNER, audience="embeddings")
        return httpx.AsyncClient(base_url=self.url, auth=auth, timeout=timeout)

    def requests_logged(self, route: str) -> int:
        """How many requests to `route` ended (the access log line, written whatever the
        outcome: answered, failed, or its client gone)."""
        return sum(f'"route": "{route}"' in line for line in self.log().splitlines())


class Database:
    """The service's database, seen from outside (a superuser connection)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def collection(self, collection_id: str) -> asyncpg.Record:
        row = await self.conn.fetchrow(
            "SELECT * FROM embeddings.collection WHERE id = $1", uuid.UUID(collection_id)
        )
        assert row is not None
        return row

    @staticmethod
    def table(collection_id: str, generation: int, suffix: str = "") -> str:
        """That generation's documents table (`suffix` "_hnsw": its index)."""
        return f'embeddings."doc_{uuid.UUID(collection_id).hex}_{generation}{suffix}"'

    async def count(self, collection_id: str, generation: int) -> int | None:
        """Committed documents of that generation's table; None if it does not exist."""
        table = self.table(collection_id, generation)
        if await self.conn.fetchval("SELECT to_regclass($1)", table) is None:
            return None
        return int(await self.conn.fetchval(f"SELECT count(*) FROM {table}"))

    async def metadata(self, collection_id: str, generation: int, doc_id: str) -> Any:
        table = self.table(collection_id, generation)
        return await self.conn.fetchval(f"SELECT metadata FROM {table} WHERE id = $1", doc_id)

    async def _fresh_activity(self) -> None:
        """pg_stat_activity as it is now: inside a transaction (the test's lock) Postgres
        would show the snapshot it took at the first look."""
        await self.conn.execute("SELECT pg_stat_clear_snapshot()")

    async def waiting_on_lock(self, statement: str) -> int | None:
        """The backend whose `statement` (its first words) waits for a lock, if any."""
        await self._fresh_activity()
        pid: int | None = await self.conn.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query ILIKE $1 || '%' AND pid <> pg_backend_pid()",
            statement,
        )
        return pid

    async def gone(self, pid: int) -> bool:
        """The backend has ended (its client died: its transaction was rolled back)."""
        await self._fresh_activity()
        return not await self.conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid
        )


@asynccontextmanager
async def service_database(postgres_admin_url: str) -> AsyncIterator[tuple[str, Database]]:
    """A database of its own, prepared as `make run` does and migrated: the embeddings
    role's URL, and a superuser's view into it. Dropped afterwards."""
    name = f"faults_{secrets.token_hex(4)}"
    admin_url = devstack.with_database(postgres_admin_url, name)
    urls = await devstack.bootstrap_database(admin_url, name)
    try:
        await asyncio.to_thread(devstack.migrate_all, {"embeddings": urls["embeddings"]})
        conn = await asyncpg.connect(admin_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            yield urls["embeddings"], Database(conn)
        finally:
            await conn.close()
    finally:
        await _drop_database(postgres_admin_url, name)
