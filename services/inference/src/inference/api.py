"""Public routes of the inference service (reached through the gateway, identity verified)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from pydantic_core import from_json, to_json
from sqlalchemy.ext.asyncio import AsyncSession

from common import sse
from common.db import DbSession, LazyDbSession, lazy_transaction
from common.deps import require
from common.disconnect import until_disconnect
from common.fastpath import committed
from common.identity import Identity, require_identity
from common.json_bodies import JsonRoute, OpenAIRoute
from inference import service
from inference.cache import CacheRules, parse_cache_control
from inference.chat_schema import ChatRequest
from inference.deps import RuntimeDep
from inference.errors import CredentialNotFound
from inference.pricing import Price
from inference.runtime import Runtime
from inference.schemas import (
    MODEL_NAME,
    AliasCreate,
    AliasRead,
    CacheCleared,
    ChatCompletion,
    CredentialCreate,
    CredentialRead,
    EmbeddingList,
    EmbeddingsRequest,
    HubModel,
    Model,
    ModelList,
    PriceChangeList,
    PriceList,
    PriceRead,
)

router = APIRouter(tags=["inference"], route_class=JsonRoute)

INVOKE = Depends(require("inference:invoke"))
MANAGE = Depends(require("providers:manage"))
MANAGE_SHARED = Depends(require("providers:manage_shared"))
MODELS = Depends(require("models:read"))


@router.get("/v1/models")
async def list_models(
    identity: Annotated[Identity, MODELS], db: DbSession, runtime: RuntimeDep
) -> ModelList:
    """The aliases and models you can call, in OpenAI's format."""
    created = int(time.time())
    found = await service.list_models(runtime, db, identity=identity)
    return ModelList(data=[Model(id=i, created=created, owned_by=o) for i, o in found])


@router.get("/v1/models/{model:path}")
async def get_model(
    model: str, identity: Annotated[Identity, MODELS], db: DbSession, runtime: RuntimeDep
) -> Model:
    """One model you can call (any that GET /v1/models lists), in OpenAI's format."""
    found, owned_by = await service.get_model(runtime, db, identity=identity, model=model)
    return Model(id=found, created=int(time.time()), owned_by=owned_by)


async def chat_completions(
    body: ChatRequest,
    http: Request,
    identity: Annotated[Identity, INVOKE],
    db: LazyDbSession,
    runtime: RuntimeDep,
) -> Response:
    """OpenAI's chat completions; `stream: true` answers with server-sent events. The
    request is checked against OpenAI's schema (400 naming the field), then forwarded as
    sent: fields we do not know reach providers that take them."""
    sent: dict[str, Any] = await http.json()  # parsed once, for the validation
    return await _chat(http, identity, db, runtime, sent, stream=body.stream)


async def _chat(
    http: Request,
    identity: Identity,
    db: AsyncSession,
    runtime: Runtime,
    sent: dict[str, Any],
    *,
    stream: bool,
) -> Response:
    """The answer to a chat request checked already (the route's, or fast_chat's)."""
    request = {name: value for name, value in sent.items() if value is not None}
    asked = CacheRules.of(request.pop("cache", None))  # ours, never a provider's
    control = parse_cache_control(http.headers.get("cache-control"))
    if stream:
        events, headers = await service.chat_stream(
            runtime, db, identity=identity, request=request, cache=asked, cache_control=control
        )
        response = sse.response(events)
        response.headers.update(headers)
        return response
    body_out, headers = await until_disconnect(
        http,
        service.chat(
            runtime, db, identity=identity, request=request, cache=asked, cache_control=control
        ),
    )
    # pydantic-core's dump (as for embeddings): half json.dumps' time, and a provider's NaN
    # becomes null rather than a 500.
    return Response(to_json(body_out), media_type="application/json", headers=headers)


CHAT_PATH = "/v1/chat/completions"


async def fast_chat(http: Request, params: Mapping[str, str]) -> Response | None:
    """`chat_completions` below FastAPI's router (common.fastpath): the same checks in the
    same terms (the signed identity, the permission, the body against ChatRequest, parsed
    as JsonRoute parses it), giving up (None, a Problem, a ValueError) wherever the route
    would answer with an error, which it then does. Past them the request is committed:
    the model call is made once, and its errors are answered by the app's handlers as the
    route's are. Saves FastAPI's routing and dependency solving, a third of this service's
    CPU per call (bench/README.md, issue 22)."""
    content_type = http.headers.get("content-type", "")
    if content_type.partition(";")[0].strip().lower() != "application/json":
        return None  # FastAPI's own content negotiation decides
    identity = await require_identity(http)
    if identity.user_id is None or not identity.has("inference:invoke"):
        return None  # require("inference:invoke") answers 401 or 403
    sent = from_json(await http.body(), allow_inf_nan=True)
    if not isinstance(sent, dict):
        return None
    body = ChatRequest.model_validate(sent)  # a ValidationError: the route's 400
    committed(http)
    runtime: Runtime = http.app.state.runtime
    async with lazy_transaction(http.app.state.sessionmaker) as db:
        return await _chat(http, identity, db, runtime, sent, stream=body.stream)


# The answers' models document the routes only (`responses`), and are never used to check
# an answer: these routes build their own (a provider's body passed on, vectors dumped once)
# and pay nothing per request for the documentation.
ANSWERED_BY_PROVIDER = "A provider's answer, in OpenAI's format."
INVALID_BODY: dict[int | str, dict[str, Any]] = {
    400: {"description": "The body is not valid (OpenAI's invalid_request_error)."}
}

router.add_api_route(
    CHAT_PATH, chat_completions, methods=["POST"], response_model=None,
    route_class_override=OpenAIRoute,
    responses={
        200: {
            "model": ChatCompletion,
            "description": ANSWERED_BY_PROVIDER,
            # One server-sent event (before OpenAPI 3.2, an event stream's schema is its
            # events'): with `stream: true`.
            "content": {"text/event-stream": {"schema": {
                "type": "object",
                "required": ["data"],
                "properties": {"data": {
                    "type": "string",
                    "description": "A chat.completion.chunk object; the last event's data "
                    "is `[DONE]`.",
                }},
            }}},
        },
        **INVALID_BODY,
    },
)  # fmt: skip


async def embeddings(
    body: EmbeddingsRequest,
    http: Request,
    identity: Annotated[Identity, INVOKE],
    db: LazyDbSession,
    runtime: RuntimeDep,
) -> Response:
    """OpenAI's embeddings: `input` a string or a list of strings."""
    inputs = [body.input] if isinstance(body.input, str) else body.input
    answer, headers = await until_disconnect(
        http,
        service.embeddings(
            runtime, db, identity=identity, model=body.model, inputs=inputs,
            encoding=body.encoding_format, dimensions=body.dimensions,
        ),
    )  # fmt: skip
    # pydantic-core's dump, as FastAPI's own for a dict answer, without its copy and check.
    return Response(to_json(answer), media_type="application/json", headers=headers)


router.add_api_route(
    "/v1/embeddings", embeddings, methods=["POST"], response_model=None,
    route_class_override=OpenAIRoute,
    responses={200: {"model": EmbeddingList, "description": ANSWERED_BY_PROVIDER},
               **INVALID_BODY},
)  # fmt: skip


@router.post("/v1/providers/credentials", status_code=status.HTTP_201_CREATED)
async def create_credential(
    body: CredentialCreate,
    identity: Annotated[Identity, MANAGE],
    db: DbSession,
    runtime: RuntimeDep,
) -> CredentialRead:
    """Store a provider key, encrypted. It is never shown again: only its last 4 characters."""
    return CredentialRead.model_validate(
        await service.create_credential(runtime, db, identity=identity, body=body),
        from_attributes=True,
    )


@router.get("/v1/providers/credentials")
async def list_credentials(
    identity: Annotated[Identity, MANAGE], db: DbSession
) -> list[CredentialRead]:
    """Your credentials and the shared ones (keys never included)."""
    return [
        CredentialRead.model_validate(r, from_attributes=True)
        for r in await service.list_credentials(db, identity=identity)
    ]


@router.delete("/v1/providers/credentials/{credential_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_credential(
    credential_id: str, identity: Annotated[Identity, MANAGE], db: DbSession, runtime: RuntimeDep
) -> None:
    try:
        parsed = uuid.UUID(credential_id)
    except ValueError:
        raise CredentialNotFound("No such credential.") from None
    await service.delete_credential(runtime, db, identity=identity, credential_id=parsed)


@router.post("/v1/providers/aliases", status_code=status.HTTP_201_CREATED)
async def save_alias(
    body: AliasCreate,
    identity: Annotated[Identity, MANAGE],
    db: DbSession,
    runtime: RuntimeDep,
) -> AliasRead:
    """Create or replace an alias: its targets, tried by its `strategy`. Your own (over
    your credentials or shared ones; only you see and call it) unless `shared`, which needs
    providers:manage_shared and shared credentials."""
    return AliasRead.model_validate(
        await service.save_alias(runtime, db, identity=identity, body=body), from_attributes=True
    )


@router.get("/v1/providers/aliases")
async def list_aliases(identity: Annotated[Identity, MODELS], db: DbSession) -> list[AliasRead]:
    """The shared aliases and your own."""
    return [
        AliasRead.model_validate(a, from_attributes=True)
        for a in await service.list_aliases(db, identity=identity)
    ]


@router.delete("/v1/providers/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_alias(
    alias: str,
    identity: Annotated[Identity, MANAGE],
    db: DbSession,
    runtime: RuntimeDep,
    shared: bool | None = None,
) -> None:
    """Your own alias of that name, else the shared one (providers:manage_shared);
    `shared=true` or `false` names which."""
    await service.delete_alias(runtime, db, identity=identity, alias=alias, shared=shared)


@router.get("/v1/providers/prices")
async def list_prices(
    identity: Annotated[Identity, MODELS],
    db: DbSession,
    runtime: RuntimeDep,
    provider: Annotated[str | None, Query(pattern=r"^[a-z]{1,32}$")] = None,
) -> PriceList:
    """Every model's price (USD per 1M tokens) and where it comes from: an admin's, the
    deployment's INFERENCE_PRICES or the catalog's (with the date it was checked)."""
    return await service.list_prices(runtime, db, provider=provider)


@router.get("/v1/providers/prices/changes")
async def price_changes(
    identity: Annotated[Identity, MANAGE_SHARED],
    db: DbSession,
    model: Annotated[str | None, Query(pattern=MODEL_NAME, max_length=300)] = None,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> PriceChangeList:
    """The audit of the admins' prices, newest first: who set or deleted which, from what
    to what."""
    return await service.price_changes(db, model=model, before=before, limit=limit)


PriceModel = Annotated[str, Path(pattern=MODEL_NAME, max_length=300)]


@router.put("/v1/providers/prices/{model:path}")
async def set_price(
    model: PriceModel,
    body: Price,
    identity: Annotated[Identity, MANAGE_SHARED],
    db: DbSession,
    runtime: RuntimeDep,
) -> PriceRead:
    """Set a model's price (`provider/model`), over INFERENCE_PRICES' and the catalog's.
    Every replica uses it within INFERENCE_CACHE_SECONDS. Audited."""
    return await service.set_price(runtime, db, identity=identity, model=model, price=body)


@router.delete("/v1/providers/prices/{model:path}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_price(
    model: PriceModel,
    identity: Annotated[Identity, MANAGE_SHARED],
    db: DbSession,
    runtime: RuntimeDep,
) -> None:
    """Remove an admin's price: INFERENCE_PRICES' or the catalog's applies again. Audited."""
    await service.delete_price(runtime, db, identity=identity, model=model)


@router.delete("/v1/cache")
async def clear_cache(
    identity: Annotated[Identity, INVOKE],
    runtime: RuntimeDep,
    scope: Annotated[str | None, Query(pattern=r"^(all|(user|team):[0-9a-fA-F-]{36})$")] = None,
) -> CacheCleared:
    """Forget cached answers: your own scope's (your team's when you call with a team key),
    or, for admins (providers:manage_shared), `scope=all` or one `user:<id>` / `team:<id>`."""
    return CacheCleared(entries=await service.clear_cache(runtime, identity=identity, scope=scope))


@router.get(
    "/v1/hub/models",
    response_model=None,
    responses={200: {"model": list[HubModel], "description": "The models found."}},
)
async def hub_models(
    identity: Annotated[Identity, MODELS],
    db: DbSession,
    runtime: RuntimeDep,
    search: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[dict[str, Any]]:
    """Search the Hugging Face Hub (with your HF credential, when you have one)."""
    return await service.hub_search(runtime, db, identity=identity, search=search, limit=limit)


@router.get(
    "/v1/hub/models/{repo_id:path}",
    response_model=None,
    responses={200: {"model": HubModel, "description": "The model's card data."}},
)
async def hub_model(
    repo_id: Annotated[str, Path(pattern=r"^[\w.-]+(/[\w.-]+)?$", max_length=200)],
    identity: Annotated[Identity, MODELS],
    db: DbSession,
    runtime: RuntimeDep,
) -> dict[str, Any]:
    return await service.hub_model(runtime, db, identity=identity, repo_id=repo_id)
