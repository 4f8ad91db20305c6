"""Public routes of the inference service (reached through the gateway, identity verified)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from common.identity import CurrentIdentity

router = APIRouter()


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


@router.get("/v1/models", tags=["inference"])
async def list_models(_: CurrentIdentity) -> ModelList:
    """The models the caller can call, in OpenAI's format.

    Empty until providers and aliases are configured: no provider adapter is installed in
    this version yet, so there is nothing to list."""
    return ModelList(data=[])
