"""Azure OpenAI through the official SDK's Azure client (`openai.AsyncAzureOpenAI`).

Azure speaks OpenAI's protocol (bodies, streams, usage and error JSON alike) with three
differences, which the SDK's Azure client handles: requests go to the credential's resource
endpoint under `/openai/deployments/{deployment}/...`, carry an `api-version` query
parameter, and authenticate with an `api-key` header instead of a bearer token. So this is
the OpenAI provider (same guarded connection pool, answer limits, error mapping, stream
reading) with another client per credential:

- the credential's `base_url` is the resource endpoint (https://<resource>.openai.azure.com);
- its `api_version` (required for azure credentials) is sent with every call;
- the model name after `azure/` is the *deployment* name, which the SDK puts in the path.

Model lists: Azure's data plane has no generally available list of a resource's
deployments (`GET /openai/deployments` was retired with API version 2023-05-15; deployments
are a management-plane, ARM, resource), and `GET /openai/models` lists the models the
resource *could* deploy, not the deployment names callers must use. Listing those would
advertise names that answer 404 DeploymentNotFound, so an azure credential contributes no
models to /v1/models: callers name their deployments (or aliases over them).
"""

from __future__ import annotations

import re
from typing import Any

from openai import AsyncAzureOpenAI, AsyncOpenAI

from inference.providers.base import (
    ChatResult,
    ChunkStream,
    Credential,
    EmbeddingResult,
    ProviderError,
)
from inference.providers.openai import OpenAIProvider

# Azure's rule for deployment names: letters, digits, '-', '_' and '.', at most 64.
DEPLOYMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def deployment(model: str) -> str:
    """`model` as a deployment name; else the 404 an unknown deployment gets, without a
    call (no deployment can have that name)."""
    if DEPLOYMENT_NAME.match(model) is None:
        raise ProviderError(
            f"No Azure OpenAI deployment can be named {model[:80]!r} (letters, digits, "
            "'-', '_' and '.', at most 64 characters).",
            kind="http_404",
            retryable=False,
            status=404,
        )
    return model


class AzureOpenAIProvider(OpenAIProvider):
    name = "azure"

    def _new_client(self, credential: Credential) -> AsyncOpenAI:
        if not credential.base_url or not credential.api_version:
            # The API refuses such credentials; one stored before that rule cannot be used.
            raise ProviderError(
                "This azure credential lacks its base_url or api_version: add it again.",
                kind="http_400",
                retryable=False,
                status=400,
            )
        return AsyncAzureOpenAI(
            api_key=credential.api_key or "none",
            # The resource endpoint; one given with the SDK's "/openai" suffix works too.
            azure_endpoint=credential.base_url.removesuffix("/openai"),
            api_version=credential.api_version,
            max_retries=0,  # failover.py retries, with its own policy and deadline
            timeout=self._timeout,
            http_client=self._http,
        )

    async def chat(self, credential: Credential, model: str, request: dict[str, Any]) -> ChatResult:
        return await super().chat(credential, deployment(model), request)

    async def chat_stream(
        self, credential: Credential, model: str, request: dict[str, Any]
    ) -> ChunkStream:
        return await super().chat_stream(credential, deployment(model), request)

    async def embed(
        self, credential: Credential, model: str, inputs: list[str], dimensions: int | None = None
    ) -> EmbeddingResult:
        return await super().embed(credential, deployment(model), inputs, dimensions)

    async def list_models(self, credential: Credential) -> list[str]:
        return []  # no data-plane list of deployments: see the module's docstring
