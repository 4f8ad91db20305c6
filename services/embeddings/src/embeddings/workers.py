"""Background work of each replica: HNSW index builds and model changes (re-embedding).

Claims live in the `collection` row, so replicas share the work. Each worker renews its
claims every third of EMBEDDINGS_WORKER_STALE_SECONDS; a claim not renewed for that long
has lost its worker (SIGKILL, a lost node) and is taken over, by the restarted replica too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from common.db import transaction
from common.identity import Identity
from embeddings import repository
from embeddings.errors import Invalid
from embeddings.models import Collection
from embeddings.repository import DocumentTable, current_table, next_table
from embeddings.runtime import Runtime
from embeddings.service import acting_for, metadata_json
from embeddings.vectors import pack

log = structlog.get_logger(__name__)
RETRIES = 3


class Worker:
    def __init__(self) -> None:
        self.id = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.runtime: Runtime | None = None
        self._pending: set[uuid.UUID] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._building: set[uuid.UUID] = set()  # index builds this worker runs now
        self._renewing: asyncio.Task[None] | None = None
        self._stopping = False

    def poke(self, collection_id: uuid.UUID) -> None:
        self._pending.add(collection_id)
        self._wake.set()

    def start(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._task = asyncio.create_task(self._loop(), name="embeddings-worker")
        self._renewing = asyncio.create_task(self._renew(), name="embeddings-claims")

    async def stop(self, grace: float = 10.0) -> None:
        """Let the current step finish (a cancelled database call can leave its connection
        unusable), then stop; cancel only what is still running after `grace` seconds."""
        self._stopping = True
        self._wake.set()
        tasks = [t for t in (self._task, *self._jobs) if t is not None]
        late: set[asyncio.Task[None]] = set()
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
        for task in (*late, self._renewing):
            if task is None:
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _renew(self) -> None:
        """Renew this worker's claims every third of the stale time, while it lives."""
        assert self.runtime is not None
        runtime = self.runtime
        every = runtime.settings.worker_stale_seconds / 3
        wait = every
        while True:
            await asyncio.sleep(wait)
            if not self._jobs and not self._building:
                continue  # no claim of ours: an idle replica writes nothing
            try:
                async with transaction(runtime.sessionmaker) as db:
                    await repository.renew_claims(
                        db, worker=self.id, building=sorted(self._building)
                    )
                wait = every
            except Exception as exc:  # a row held past the lock timeout, Postgres away
                # Again soon, not a third of the stale time later: two misses in a row
                # must not hand a live job to another replica.
                wait = min(every, 1.0)
                log.warning("claims not renewed", error=str(exc) or type(exc).__name__)

    def _stale_before(self) -> datetime:
        assert self.runtime is not None
        return datetime.now(UTC) - timedelta(seconds=self.runtime.settings.worker_stale_seconds)

    async def _loop(self) -> None:
        assert self.runtime is not None
        runtime = self.runtime
        async with transaction(runtime.sessionmaker) as db:
            self._pending.update(
                await repository.collections_to_index(db, stale_before=self._stale_before())
            )
        while not self._stopping:
            try:
                await self._claim_reembeds()
                await self._take_abandoned_builds()
                for collection_id in list(self._pending):
                    if self._stopping:
                        return
                    await self._maybe_index(collection_id)
            except Exception:
                log.exception("embeddings worker pass failed")
            if self._stopping:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), runtime.settings.worker_poll_seconds)

    # ------------------------------------------------------------ index builds

    async def _take_abandoned_builds(self) -> None:
        """Builds whose builder died: a SIGKILL leaves the claim (`building`) and nothing
        else, and only a write would poke the collection again. Each pass looks for those
        whose claim went stale, this replica's own previous run's included."""
        assert self.runtime is not None
        async with transaction(self.runtime.sessionmaker) as db:
            self._pending.update(
                await repository.abandoned_index_builds(db, stale_before=self._stale_before())
            )

    async def _maybe_index(self, collection_id: uuid.UUID) -> None:
        assert self.runtime is not None
        runtime = self.runtime
        if await repository.written_lately(runtime.redis, collection_id):
            return  # still being written to: build when it is quiet
        async with transaction(runtime.sessionmaker) as db:
            # The row first, then its table, as a model switch takes them (it holds the row
            # while it drops the old table): the other order deadlocks with a switch.
            row = await repository.get_collection(db, collection_id=collection_id, lock="update")
            if row is None or row.index_status == "ready":
                self._pending.discard(collection_id)
                return
            table = current_table(row)
            if not await repository.has_rows(db, table, at_least=runtime.settings.index_min_rows):
                self._pending.discard(collection_id)  # the next write pokes again
                return
            claimed = await repository.claim_index_build(
                db, collection_id=row.id, generation=row.generation,
                stale_before=self._stale_before(),
            )  # fmt: skip
        if not claimed:
            self._pending.discard(collection_id)
            return
        started = time.monotonic()
        self._building.add(collection_id)
        try:
            # Its own transaction, touching no collection row: an upsert holds that row
            # (FOR SHARE) while it waits for the table, and would deadlock with us.
            async with transaction(runtime.sessionmaker) as db:
                await self._build(db, table)
            async with transaction(runtime.sessionmaker) as db:
                await repository.set_index_status(
                    db, collection_id=collection_id, generation=table.generation, status="ready"
                )
        except Exception as exc:
            # Written to again (lock timeout), deleted, or switched model meanwhile: the
            # claim is released and the next write (or pass) tries again.
            log.info("hnsw index not built", collection=str(collection_id), error=str(exc))
            async with transaction(runtime.sessionmaker) as db:
                await repository.set_index_status(
                    db, collection_id=collection_id, generation=table.generation, status="none"
                )
            return
        finally:
            self._building.discard(collection_id)
        self._pending.discard(collection_id)
        log.info("hnsw index built", collection=str(collection_id),
                 seconds=round(time.monotonic() - started, 2))  # fmt: skip

    async def _build(self, db: Any, table: DocumentTable) -> None:
        assert self.runtime is not None
        settings = self.runtime.settings
        await repository.build_index(
            db, table, m=settings.hnsw_m, ef_construction=settings.hnsw_ef_construction,
            memory=settings.index_build_memory,
        )  # fmt: skip

    # ------------------------------------------------------------ model changes

    async def _claim_reembeds(self) -> None:
        assert self.runtime is not None
        while not self._stopping:
            async with transaction(self.runtime.sessionmaker) as db:
                job = await repository.claim_reembed(
                    db, worker=self.id, stale_before=self._stale_before()
                )
            if job is None:
                return
            task = asyncio.create_task(self._reembed(job))
            self._jobs.add(task)
            task.add_done_callback(self._jobs.discard)

    async def _reembed(self, job: Collection) -> None:
        assert self.runtime is not None
        started = time.monotonic()
        try:
            await self._run_reembed(job, started)
        except Exception as exc:
            log.warning("re-embedding failed", collection=str(job.id), error=str(exc))
            await self._fail(job, str(exc) or type(exc).__name__)

    async def _run_reembed(self, job: Collection, started: float) -> None:
        assert self.runtime is not None
        runtime = self.runtime
        old, new = current_table(job), next_table(job)
        identity = acting_for(job)
        if not await self._catch_up(job, identity, old, new):
            return
        async with transaction(runtime.sessionmaker) as db:
            rows = await repository.count_documents(db, new)
        built = rows >= runtime.settings.index_min_rows
        if built:
            async with transaction(runtime.sessionmaker) as db:
                await self._build(db, new)
        seconds = await self._switch(job, identity, old, new, built=built, started=started)
        if seconds is None:
            return
        if not built:
            self.poke(job.id)
        log.info("re-embedded", collection=str(job.id), model=job.reembed_model, seconds=seconds)

    async def _catch_up(
        self, job: Collection, identity: Identity, old: DocumentTable, new: DocumentTable
    ) -> bool:
        """Copy, re-embedding, while writers go on writing to the old table, until nothing
        is left to copy (True); False if the job was released or is no longer ours."""
        assert self.runtime is not None
        runtime = self.runtime
        async with transaction(runtime.sessionmaker) as db:
            total = await repository.count_documents(db, old)
        done = 0
        while True:
            if self._stopping:
                await self._release(job)
                return False
            async with transaction(runtime.sessionmaker) as db:
                batch = await repository.stale_documents(
                    db, old, new, limit=runtime.settings.reembed_batch_size
                )
            if not batch:
                return True
            await self._copy(identity, job, new, batch)
            done += len(batch)
            async with transaction(runtime.sessionmaker) as db:
                if not await repository.reembed_progress(
                    db, collection_id=job.id, worker=self.id, done=done, total=max(total, done)
                ):
                    return False  # deleted, or taken over

    async def _switch(
        self, job: Collection, identity: Identity, old: DocumentTable, new: DocumentTable, *,
        built: bool, started: float,
    ) -> float | None:  # fmt: skip
        """In one transaction, holding the collection row (writers wait a moment): copy the
        last changes and the metadata, move the collection to the new table, drop the old
        one. The seconds the change took; None if the job is no longer ours."""
        assert self.runtime is not None
        async with transaction(self.runtime.sessionmaker) as db:
            row = await repository.get_collection(db, collection_id=job.id, lock="update")
            if row is None or row.reembed_worker != self.id or row.generation != job.generation:
                return None
            while batch := await repository.stale_documents(db, old, new, limit=10_000):
                await self._copy(identity, job, new, batch, db=db)  # the last few, writers wait
            await repository.finish_copy(db, old, new)
            seconds = round(time.monotonic() - started, 3)
            row.lineage = [
                *row.lineage,
                {"model": job.reembed_model, "dimension": job.reembed_dimension,
                 "since": datetime.now(UTC).isoformat(), "seconds": seconds},
            ]  # fmt: skip
            row.generation, row.model = row.generation + 1, job.reembed_model or row.model
            row.dimension = job.reembed_dimension or row.dimension
            row.index_status = "ready" if built else "none"
            _clear_reembed(row)
            row.reembed_seconds = seconds
            row.updated_at = datetime.now(UTC)
            await db.flush()
            await repository.drop_document_table(db, old)
        return seconds

    async def _copy(
        self, identity: Identity, job: Collection, new: DocumentTable, batch: Any, db: Any = None
    ) -> None:
        assert self.runtime is not None
        if any(r.text is None for r in batch):
            raise Invalid("Documents without text appeared; they cannot be re-embedded.")
        texts = [r.text for r in batch]
        for attempt in range(RETRIES):
            try:
                vectors = await self.runtime.inference.embed(
                    identity, job.reembed_model or "", texts, dimension=new.dimension
                )
                break
            except Exception:
                if attempt == RETRIES - 1:
                    raise
                await asyncio.sleep(2**attempt)
        columns = {
            "ids": [r.id for r in batch], "texts": texts,
            "metadata": [metadata_json(r.metadata) for r in batch],
            "hashes": [bytes(r.content_hash) for r in batch],
            "vectors": [pack(v) for v in vectors],
        }  # fmt: skip
        if db is not None:
            await repository.upsert_documents(db, new, **columns)
            return
        async with transaction(self.runtime.sessionmaker) as session:
            await repository.upsert_documents(session, new, **columns)

    async def _release(self, job: Collection) -> None:
        """Stopping: leave the job to whichever replica looks next (this one, restarted)."""
        assert self.runtime is not None
        async with transaction(self.runtime.sessionmaker) as db:
            row = await repository.get_collection(db, collection_id=job.id, lock="update")
            if row is not None and row.reembed_worker == self.id:
                row.reembed_worker = None

    async def _fail(self, job: Collection, error: str) -> None:
        assert self.runtime is not None
        async with transaction(self.runtime.sessionmaker) as db:
            row = await repository.get_collection(db, collection_id=job.id, lock="update")
            if row is None or row.reembed_worker != self.id:
                return
            await repository.drop_document_table(db, next_table(row))
            row.reembed_status, row.reembed_error, row.reembed_worker = "failed", error[:2000], None


def _clear_reembed(row: Collection) -> None:
    row.reembed_status = row.reembed_model = row.reembed_error = row.reembed_worker = None
    row.reembed_dimension = None
    row.reembed_for = row.reembed_started_at = row.reembed_heartbeat_at = None
    row.reembed_done = row.reembed_total = 0
