"""A local server that speaks Hugging Face's HTTP protocols as `huggingface_hub` expects them.

- TGI: `POST /v1/chat/completions` in OpenAI's format (what `AsyncInferenceClient(base_url=...)
  .chat_completion` calls), streamed or not; validation errors are TGI's 422.
- TEI: `POST /` and `POST /embed` with `{"inputs": str | [str], ...}`, answering a list of
  vectors (`feature_extraction` with a `base_url` posts to the URL itself), and TEI's
  OpenAI-compatible `POST /v1/embeddings`.
- Hub API: `GET /api/models` (`HfApi.list_models`) and `GET /api/models/{repo_id}`
  (`HfApi.model_info`) over a small fixed catalogue, with the Hub's error headers, so
  unknown and private repos raise `RepositoryNotFoundError`.

With `token`, the inference routes and the private repo need `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devkit.fakes.endpoints import Refused, bearer_key, json_body, same_secret
from devkit.fakes.faults import FaultControl, build_app
from devkit.fakes.openai_server import (
    DEFAULT_DIMENSIONS,
    OpenAIEndpoints,
    chat_problem,
    chat_response,
    embedding_inputs,
    embedding_vector,
)

__all__ = ["CATALOGUE", "DEFAULT_MODEL_ID", "PRIVATE_REPO", "create_hf_app", "hf_error"]

DEFAULT_MODEL_ID = "meta-llama/Llama-3.1-8B-Instruct"
PRIVATE_REPO = "acme-corp/internal-embedder"
TGI_FINGERPRINT = "3.3.6-native"
Credential = Literal["none", "valid", "invalid"]
_ERROR_TYPES = {401: "Unauthorized", 413: "Validation", 422: "Validation", 429: "Overloaded"}


def _repo(
    repo_id: str,
    *,
    pipeline_tag: str,
    library_name: str,
    tags: Sequence[str],
    downloads: int,
    likes: int,
    created_at: str,
    private: bool = False,
    gated: str | bool = False,
    parameters: int | None = None,
) -> dict[str, Any]:
    """One catalogue entry in the Hub's `model_info` shape (`siblings`, `sha`, ...)."""
    digest = hashlib.sha256(repo_id.encode()).hexdigest()
    entry: dict[str, Any] = {
        "_id": digest[:24],
        "id": repo_id,
        "modelId": repo_id,
        "author": repo_id.split("/", 1)[0],
        "sha": digest[:40],
        "createdAt": created_at,
        "lastModified": "2025-01-15T10:00:00.000Z",
        "private": private,
        "gated": gated,
        "disabled": False,
        "downloads": downloads,
        "likes": likes,
        "trendingScore": likes // 100,
        "library_name": library_name,
        "tags": list(tags),
        "pipeline_tag": pipeline_tag,
        "cardData": {"license": "apache-2.0", "language": ["en"]},
        "siblings": [
            {"rfilename": ".gitattributes"},
            {"rfilename": "README.md"},
            {"rfilename": "config.json"},
            {"rfilename": "model.safetensors"},
        ],
        "spaces": [],
        "usedStorage": 1_000_000 * (parameters or 1) // 250_000,
    }
    if parameters is not None:
        entry["safetensors"] = {"parameters": {"BF16": parameters}, "total": parameters}
    return entry


_EMBEDDER_TAGS = ("feature-extraction", "sentence-similarity", "en")
_LLAMA_CHAT_TAGS = (
    "transformers",
    "safetensors",
    "llama",
    "text-generation",
    "conversational",
    "en",
)
CATALOGUE: tuple[dict[str, Any], ...] = (
    _repo(
        "sentence-transformers/all-MiniLM-L6-v2",
        pipeline_tag="sentence-similarity",
        library_name="sentence-transformers",
        tags=["sentence-transformers", "pytorch", "bert", *_EMBEDDER_TAGS, "license:apache-2.0"],
        downloads=95_000_000,
        likes=3_900,
        created_at="2022-03-02T23:29:05.000Z",
        parameters=22_713_216,
    ),
    _repo(
        "BAAI/bge-small-en-v1.5",
        pipeline_tag="feature-extraction",
        library_name="sentence-transformers",
        tags=["sentence-transformers", "onnx", "bert", *_EMBEDDER_TAGS, "license:mit"],
        downloads=5_000_000,
        likes=350,
        created_at="2023-09-12T05:39:54.000Z",
        parameters=33_360_000,
    ),
    _repo(
        DEFAULT_MODEL_ID,
        pipeline_tag="text-generation",
        library_name="transformers",
        tags=[*_LLAMA_CHAT_TAGS, "license:llama3.1"],
        downloads=6_000_000,
        likes=4_500,
        created_at="2024-07-18T08:56:00.000Z",
        gated="manual",
        parameters=8_030_261_248,
    ),
    _repo(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        pipeline_tag="text-generation",
        library_name="transformers",
        tags=[*_LLAMA_CHAT_TAGS, "license:apache-2.0"],
        downloads=400_000,
        likes=200,
        created_at="2024-10-31T13:41:35.000Z",
        parameters=134_515_008,
    ),
    _repo(
        PRIVATE_REPO,
        pipeline_tag="feature-extraction",
        library_name="sentence-transformers",
        tags=["sentence-transformers", "feature-extraction"],
        downloads=12,
        likes=0,
        created_at="2025-02-01T09:00:00.000Z",
        private=True,
    ),
)
_BY_ID = {entry["id"]: entry for entry in CATALOGUE}
_LISTED_KEYS = (
    "_id", "id", "likes", "trendingScore", "private", "downloads", "tags", "pipeline_tag",
    "library_name", "createdAt", "modelId",
)  # fmt: skip
_SORT_KEYS = {"downloads", "likes", "trendingScore", "createdAt", "lastModified"}


def hf_error(
    status: int,
    message: str | None = None,
    retry_after: float | None = None,
    *,
    error_code: str | None = None,
) -> JSONResponse:
    """An error as TGI/TEI and the Hub send it: `{"error", "error_type"}` plus the Hub's
    `X-Error-Message` (and `X-Error-Code`) headers, which `huggingface_hub` reads."""
    text = message or _default_message(status)
    error_type = _ERROR_TYPES.get(status, "Backend" if status >= 500 else "Validation")
    headers = {"x-error-message": text}
    if error_code is not None:
        headers["x-error-code"] = error_code
    if retry_after is not None:
        headers["retry-after"] = str(math.ceil(retry_after))
    return JSONResponse(
        {"error": text, "error_type": error_type}, status_code=status, headers=headers
    )


def _default_message(status: int) -> str:
    if status == 429:
        return "Model is overloaded"
    if status >= 500:
        return "Request failed during generation: Server error"
    return "Request failed"


class _HfRoutes:
    """The endpoints, bound to one app's settings."""

    def __init__(self, token: str | None, model_id: str, dimensions: int, latency: float) -> None:
        self.token = token
        self.model_id = model_id
        self.dimensions = dimensions
        self.latency = latency
        self.openai = OpenAIEndpoints(token, (model_id,), dimensions, latency)

    def routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/embeddings", self.openai.embeddings, methods=["POST"]),
            Route("/v1/models", self.openai.list_models, methods=["GET"]),
            Route("/", self.embed, methods=["POST"]),
            Route("/embed", self.embed, methods=["POST"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/api/models", self.list_models, methods=["GET"]),
            Route("/api/models/{repo_id:path}", self.model_info, methods=["GET"]),
        ]

    async def chat_completions(self, request: Request) -> Response:
        payload = await self._payload(request)
        if isinstance(payload, dict):
            payload.setdefault("model", self.model_id)  # TGI does not need a model
        if problem := chat_problem(payload):
            return hf_error(422, f"Input validation error: {problem[0]}")
        if self.latency:
            await asyncio.sleep(self.latency)
        return chat_response(payload, model=self.model_id, system_fingerprint=TGI_FINGERPRINT)

    async def embed(self, request: Request) -> Response:
        """TEI's `/embed`: a vector per input, always a list of lists."""
        payload = await self._payload(request)
        texts = embedding_inputs(payload.get("inputs")) if isinstance(payload, dict) else None
        if texts is None:
            return hf_error(422, "Input validation error: `inputs` cannot be empty")
        dimensions = payload.get("dimensions") or self.dimensions
        if not isinstance(dimensions, int) or dimensions < 1:
            return hf_error(422, "Input validation error: `dimensions` must be positive")
        if self.latency:
            await asyncio.sleep(self.latency)
        return JSONResponse([embedding_vector(text, dimensions) for text in texts])

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def list_models(self, request: Request) -> Response:
        """`GET /api/models?search=&author=&filter=&pipeline_tag=&sort=&limit=&full=`."""
        params = request.query_params
        authorized = self._hub_credential(request) == "valid"
        search = (params.get("search") or "").lower()
        author = params.get("author")
        pipeline_tag = params.get("pipeline_tag")
        tags = params.getlist("filter")
        entries = [
            entry
            for entry in CATALOGUE
            if (authorized or not entry["private"])
            and search in entry["id"].lower()
            and (author is None or entry["author"] == author)
            and (pipeline_tag is None or entry["pipeline_tag"] == pipeline_tag)
            and all(tag in entry["tags"] or tag == entry["library_name"] for tag in tags)
        ]
        sort = params.get("sort")
        if sort in _SORT_KEYS:
            entries.sort(key=lambda entry: entry[sort], reverse=params.get("direction") != "1")
        limit = params.get("limit")
        if limit is not None and limit.isdigit():
            entries = entries[: int(limit)]
        full = params.get("full") in ("true", "True", "1")
        expand = params.getlist("expand")
        return JSONResponse([_listed(entry, full=full, expand=expand) for entry in entries])

    async def model_info(self, request: Request) -> Response:
        """`GET /api/models/{repo_id}[/revision/{revision}]`, with the Hub's errors."""
        repo_id = request.path_params["repo_id"].split("/revision/", 1)[0]
        credential = self._hub_credential(request)
        entry = _BY_ID.get(repo_id)
        if entry is None:
            return hf_error(404, "Repository not found", error_code="RepoNotFound")
        if entry["private"] and credential != "valid":
            return hf_error(401, "Invalid username or password.", error_code="RepoNotFound")
        return JSONResponse(entry)

    def _credential(self, request: Request) -> Credential:
        """ "none", "valid" or "invalid": what the request's bearer token is worth."""
        key = bearer_key(request)
        if key is None:
            return "none"
        return "valid" if same_secret(key, self.token) else "invalid"

    def _hub_credential(self, request: Request) -> Credential:
        """The credential of a Hub API request, which refuses an invalid one with a 401."""
        credential = self._credential(request)
        if credential == "invalid":
            raise Refused(hf_error(401, "Invalid credentials in Authorization header"))
        return credential

    async def _payload(self, request: Request) -> Any:
        """The JSON body of an inference request, refused with a 401 unless the bearer
        token matches (when one is set) and with TGI's 422 when it is not JSON."""
        if self.token is not None and self._credential(request) != "valid":
            raise Refused(
                hf_error(401, "Authorization header is correct, but the token seems invalid")
            )
        return await json_body(request, _unparsable)


def _listed(entry: dict[str, Any], *, full: bool, expand: list[str]) -> dict[str, Any]:
    """An entry as `list_models` shows it: a summary, everything with `full`, or `expand`."""
    if full:
        return entry
    if expand:
        return {key: entry[key] for key in ("_id", "id", *expand) if key in entry}
    return {key: entry[key] for key in _LISTED_KEYS}


def _unparsable() -> Response:
    return hf_error(422, "Failed to parse the request body as JSON")


def _not_found_message(request: Request) -> str:
    return f"{request.method} {request.url.path} not found"


def create_hf_app(
    control: FaultControl | None = None,
    *,
    token: str | None = None,
    model_id: str = DEFAULT_MODEL_ID,
    dimensions: int = DEFAULT_DIMENSIONS,
    latency: float = 0.0,
) -> Starlette:
    """The Hugging Face fake: TGI chat, TEI embeddings, Hub model listing and info.

    `model_id` is what TGI says it serves; `token` guards the inference routes and opens
    the private repo; `latency` seconds are waited before each inference response."""
    routes = _HfRoutes(token, model_id, dimensions, latency)
    return build_app(
        routes.routes(),
        control=control,
        render_error=hf_error,
        not_found_message=_not_found_message,
    )
