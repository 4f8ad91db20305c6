"""JsonRoute: the same answers as FastAPI's own body handling, from a faster JSON parser."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from common.errors import install_error_handlers
from common.json_bodies import JsonRoute
from devkit.testing import asgi_client


class Point(BaseModel):
    name: str
    values: list[Annotated[float, Field(allow_inf_nan=False)]]
    extra: dict[str, Any] = {}


def create_app(route_class: type[APIRoute]) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    router = APIRouter(route_class=route_class)

    @router.post("/points")
    async def post_point(point: Point) -> Point:
        return point

    app.include_router(router)
    return app


@pytest.fixture(params=[JsonRoute, APIRoute], ids=["json-route", "fastapi"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_app(request.param)) as c:
        yield c


def post(client: httpx.AsyncClient, body: bytes, content_type: str = "application/json") -> Any:
    return client.post("/points", content=body, headers={"content-type": content_type})


BODIES = [
    b'{"name": "p", "values": [1, 2.5, -3e-7], "extra": {"big": 123456789012345678901234567890}}',
    b'{"name": "caf\\u00e9", "values": [], "extra": {"a": 1, "a": 2}}',
]


@pytest.mark.parametrize("body", BODIES)
async def test_valid_bodies_parse_exactly_as_with_the_json_module(
    client: httpx.AsyncClient, body: bytes
) -> None:
    async with asgi_client(create_app(APIRoute)) as fastapi_client:
        fastapi_answer = await post(fastapi_client, body)
    response = await post(client, body)
    assert response.status_code == 200, response.text
    assert response.json() == fastapi_answer.json()


@pytest.mark.parametrize(
    ("body", "where"),
    [(b'{"name": "p", "values": [1,]}', 27), (b'{"name": "p"', 12)],
)
async def test_malformed_json_is_the_same_422_problem(
    client: httpx.AsyncClient, body: bytes, where: int
) -> None:
    response = await post(client, body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    (error,) = response.json()["errors"]
    assert error["type"] == "json_invalid"
    assert error["loc"][0] == "body"
    assert abs(error["loc"][1] - where) <= 1  # the standard library and jiter may differ by one


async def test_nan_parses_then_fails_validation_where_numbers_must_be_finite(
    client: httpx.AsyncClient,
) -> None:
    response = await post(client, b'{"name": "p", "values": [NaN]}')
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "values", 0]


async def test_a_body_that_is_not_json_is_refused_as_before(client: httpx.AsyncClient) -> None:
    response = await post(client, b"name=p", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 422


async def test_a_body_that_is_not_utf8_is_invalid_json_not_a_400() -> None:
    """FastAPI's own parsing answers 400 "error parsing the body" here."""
    async with asgi_client(create_app(JsonRoute)) as client:
        response = await post(client, b'{"name": "\xff"}')
    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "json_invalid"
