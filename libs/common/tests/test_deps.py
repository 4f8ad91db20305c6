"""The caller checks every service shares: a user, a permission, one answer for each."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, ClassVar

import pytest
from fastapi import APIRouter, Depends

from common.app import create_service_app
from common.deps import CurrentUser, require
from common.identity import Identity, IdentityKind
from common.settings import ServiceSettings
from devkit.testing import asgi_client

KEY = "k" * 40
USER_ID = "00000000-0000-0000-0000-000000000001"


class DepsSettings(ServiceSettings):
    service_name: ClassVar[str] = "depstest"


@asynccontextmanager
async def _no_lifespan(_: object) -> AsyncIterator[None]:
    yield


router = APIRouter()


@router.get("/v1/me")
async def me(identity: CurrentUser) -> dict[str, str]:
    return {"sub": identity.sub}


@router.get("/v1/read")
async def read(identity: Annotated[Identity, Depends(require("things:read"))]) -> str:
    return identity.sub


@router.get("/v1/either")
async def either(identity: Annotated[Identity, Depends(require("own:read", "all:read"))]) -> str:
    return identity.sub


APP = create_service_app(
    DepsSettings(environment="test", internal_signing_key=KEY),
    public=router, lifespan=_no_lifespan, title="deps",
)  # fmt: skip


def user(*permissions: str, kind: IdentityKind = "user") -> Identity:
    return Identity(sub=USER_ID, kind=kind, iss="gateway", permissions=permissions)


SERVICE = Identity(sub="service:embeddings", kind="service", iss="embeddings",
                   permissions=("things:read", "own:read"))  # fmt: skip
AUTHENTICATION_REQUIRED = (401, "urn:llm-platform:problem:authentication-required")
MISSING_PERMISSION = (403, "urn:llm-platform:problem:missing-permission")


@pytest.mark.parametrize(
    ("identity", "path", "refused"),
    [
        pytest.param(user(), "/v1/me", None, id="any-user"),
        pytest.param(user(kind="api_key"), "/v1/me", None, id="an-api-key"),
        pytest.param(SERVICE, "/v1/me", AUTHENTICATION_REQUIRED, id="a-service-is-no-user"),
        pytest.param(user("things:read"), "/v1/read", None, id="with-the-permission"),
        pytest.param(user("own:read"), "/v1/read", MISSING_PERMISSION, id="without-it"),
        pytest.param(SERVICE, "/v1/read", AUTHENTICATION_REQUIRED, id="a-service-with-it"),
        pytest.param(user("all:read"), "/v1/either", None, id="with-one-of-them"),
        pytest.param(user("things:read"), "/v1/either", MISSING_PERMISSION, id="with-neither"),
    ],
)
async def test_the_caller_is_a_user_with_the_permission(
    identity: Identity, path: str, refused: tuple[int, str] | None
) -> None:
    async with asgi_client(APP, identity=identity, key=KEY.encode()) as client:
        response = await client.get(path)

    if refused is None:
        assert response.status_code == 200, response.text
    else:
        assert (response.status_code, response.json()["type"]) == refused
        assert response.headers["content-type"] == "application/problem+json"


async def test_the_missing_permission_is_named() -> None:
    async with asgi_client(APP, identity=user(), key=KEY.encode()) as client:
        response = await client.get("/v1/either")

    assert response.json()["detail"] == "This needs the own:read permission."


def test_require_names_a_permission() -> None:
    with pytest.raises(ValueError, match="permission"):
        require()
