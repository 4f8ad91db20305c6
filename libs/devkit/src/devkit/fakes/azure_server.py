"""A local server that speaks Azure OpenAI's data-plane API as the `openai` SDK's Azure
client (`AzureOpenAI`) calls it.

Routes: `POST /openai/deployments/{deployment}/chat/completions` (JSON or server-sent
events) and `POST /openai/deployments/{deployment}/embeddings`. The bodies and answers are
OpenAI's (the OpenAI fake's deterministic replies, answered by the deployment's model);
what differs is checked as Azure does:

- `api-version` query parameter: 400 MissingApiVersionParameter without one;
- `api-key` header (not a bearer token): 401 without the right one, when a key is set;
- the deployment in the path: 404 DeploymentNotFound for one the resource does not have.

Like Azure with its default content filter, answers carry `prompt_filter_results`: in a
chat completion, and as a first stream event with no choices (before the assistant's role).
Errors are in Azure's shape, `{"error": {"code", "message"}}` (the code a string), with
`retry-after` on a 429. Faults and request recording are the other fakes' (`FaultControl`).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from types import MappingProxyType
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from devkit.fakes.endpoints import Refused, json_body, same_secret
from devkit.fakes.faults import FaultControl, build_app
from devkit.fakes.openai_server import DEFAULT_DIMENSIONS, OpenAIEndpoints

__all__ = ["DEFAULT_DEPLOYMENTS", "AzureEndpoints", "azure_error", "create_azure_app"]

# Deployment name -> the model it serves (what answers name in `model`).
DEFAULT_DEPLOYMENTS: Mapping[str, str] = MappingProxyType(
    {"chat-prod": "gpt-4o-mini", "embed-prod": "text-embedding-3-small"}
)
_MESSAGES: dict[int, str] = {
    400: "Bad request.",
    401: (
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
        "provide a valid key for an active subscription and use a correct regional API "
        "endpoint for your resource."
    ),
    404: "Resource not found",
    408: "The operation was timeout.",
    429: (
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API have "
        "exceeded call rate limit of your current OpenAI S0 pricing tier. Please retry "
        "after a moment."
    ),
    500: "The server had an error while processing your request. Sorry about that!",
    503: "The service is temporarily unable to process your request. Please try again later.",
}
_SAFE = {"filtered": False, "severity": "safe"}
PROMPT_FILTER_RESULTS = [
    {
        "prompt_index": 0,
        "content_filter_results": {
            name: _SAFE for name in ("hate", "self_harm", "sexual", "violence")
        },
    }
]
_DEPLOYMENT_NOT_FOUND = (
    "The API deployment for this resource does not exist. If you created the deployment "
    "within the last 5 minutes, please wait a moment and try again."
)


def azure_error(
    status: int, message: str | None = None, retry_after: float | None = None, *,
    code: str | None = None,
) -> JSONResponse:  # fmt: skip
    """An error as Azure OpenAI answers one: `{"error": {"code", "message"}}`."""
    headers = {} if retry_after is None else {"retry-after": str(math.ceil(retry_after))}
    body = {
        "error": {
            "code": code or str(status),
            "message": message or _MESSAGES.get(status, "Error."),
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


class AzureEndpoints(OpenAIEndpoints):
    """OpenAI's chat and embeddings endpoints under Azure's paths, version and key."""

    def __init__(
        self, api_key: str | None, deployments: Mapping[str, str], dimensions: int,
        latency: float,
    ) -> None:  # fmt: skip
        super().__init__(api_key, tuple(deployments.values()), dimensions, latency)
        self.deployments = dict(deployments)

    def routes(self) -> list[Route]:
        prefix = "/openai/deployments/{deployment}"
        return [
            Route(f"{prefix}/chat/completions", self.chat_completions, methods=["POST"]),
            Route(f"{prefix}/embeddings", self.embeddings, methods=["POST"]),
        ]

    async def chat_completions(self, request: Request) -> Response:
        """OpenAI's answer, with the content filter's results as Azure adds them."""
        response = await super().chat_completions(request)
        if response.status_code != 200:
            return response
        if isinstance(response, StreamingResponse):
            response.body_iterator = _filtered(response.body_iterator)
            return response
        body = {**json.loads(bytes(response.body)), "prompt_filter_results": PROMPT_FILTER_RESULTS}
        return JSONResponse(body, headers={"x-request-id": response.headers["x-request-id"]})

    def _authorize(self, request: Request) -> None:
        if not request.query_params.get("api-version"):
            raise Refused(
                azure_error(
                    400,
                    "The api-version query parameter (?api-version=) is required for all requests.",
                    code="MissingApiVersionParameter",
                )
            )
        if self.api_key is not None and not same_secret(
            request.headers.get("api-key", ""), self.api_key
        ):
            raise Refused(azure_error(401))

    async def _payload(self, request: Request) -> Any:
        """The body, as OpenAI's endpoints read it: `model` is the deployment's model."""
        self._authorize(request)
        model = self.deployments.get(request.path_params["deployment"])
        if model is None:
            raise Refused(azure_error(404, _DEPLOYMENT_NOT_FOUND, code="DeploymentNotFound"))
        payload = await json_body(request, _unparsable)
        return {**payload, "model": model} if isinstance(payload, dict) else payload


async def _filtered(events: AsyncIterable[Any]) -> AsyncIterator[Any]:
    """A stream's events after the prompt filter's, which Azure sends first."""
    first = {
        "choices": [], "created": 0, "id": "", "model": "", "object": "",
        "prompt_filter_results": PROMPT_FILTER_RESULTS,
    }  # fmt: skip
    yield b"data: " + json.dumps(first, separators=(",", ":")).encode() + b"\n\n"
    async for event in events:
        yield event


def _unparsable() -> Response:
    return azure_error(400, "Could not parse the JSON body of the request.")


def _not_found_message(request: Request) -> str:
    return _MESSAGES[404]


def create_azure_app(
    control: FaultControl | None = None,
    *,
    api_key: str | None = None,
    deployments: Mapping[str, str] = DEFAULT_DEPLOYMENTS,
    dimensions: int = DEFAULT_DIMENSIONS,
    latency: float = 0.0,
) -> Starlette:
    """The Azure OpenAI fake: one resource with `deployments` (name -> model). With
    `api_key`, requests without that `api-key` header get 401; `control` injects faults
    and records requests."""
    endpoints = AzureEndpoints(api_key, deployments, dimensions, latency)
    return build_app(
        endpoints.routes(),
        control=control,
        render_error=azure_error,
        not_found_message=_not_found_message,
    )
