"""Every error an app returns is RFC 9457 problem+json with a trace id, and leaks nothing."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from common.app import PlatformApp, instrument
from common.errors import Problem
from common.settings import ServiceSettings
from common.tracing import configure_tracing
from devkit.testing import asgi_client

TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


class ErrDemoSettings(ServiceSettings):
    service_name: ClassVar[str] = "errdemo"


class OutOfCredit(Problem):
    status, slug, title = 402, "out-of-credit", "Out of Credit"


class Signup(BaseModel):
    email: str
    password: str
    age: int


def create_app() -> FastAPI:
    configure_tracing(ErrDemoSettings.service_name)
    app = PlatformApp()
    instrument(app, ErrDemoSettings())

    @app.post("/v1/completions")
    async def complete() -> None:
        raise OutOfCredit(
            "The call costs 50 credits; 30 are left.",
            headers={"Retry-After": "3600"},
            balance=30,
            cost=50,
        )

    @app.get("/v1/teapot")
    async def teapot() -> None:
        raise HTTPException(418)

    @app.post("/v1/signups")
    async def signup(body: Signup) -> dict[str, str]:
        return {"email": body.email}

    @app.get("/v1/crash")
    async def crash() -> None:
        raise RuntimeError("secret internals")

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_app()) as client:
        yield client


def problem(response: httpx.Response, *, status: int, instance: str) -> dict[str, Any]:
    """The problem body, after checking what every problem response has."""
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["instance"] == instance
    assert isinstance(body["type"], str)
    assert isinstance(body["title"], str)
    assert TRACE_ID.match(body["trace_id"])
    return body


async def test_problem_subclass_renders_its_type_detail_extra_fields_and_headers(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/v1/completions")

    body = problem(response, status=402, instance="/v1/completions")
    assert body["type"] == "urn:llm-platform:problem:out-of-credit"
    assert body["title"] == "Out of Credit"
    assert body["detail"] == "The call costs 50 credits; 30 are left."
    assert body["balance"] == 30
    assert body["cost"] == 50
    assert response.headers["retry-after"] == "3600"


async def test_http_exception_becomes_a_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/teapot")

    body = problem(response, status=418, instance="/v1/teapot")
    assert body["type"] == "about:blank"
    assert body["title"] == "I'm a Teapot"
    assert "detail" not in body  # the default detail only repeats the title


async def test_validation_error_lists_locations_without_echoing_the_input(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/signups", json={"email": "ada@example.com", "password": "hunter2", "age": "x"}
    )

    body = problem(response, status=422, instance="/v1/signups")
    assert body["type"] == "urn:llm-platform:problem:validation"
    assert [error["loc"] for error in body["errors"]] == [["body", "age"]]
    assert body["errors"][0]["type"] == "int_parsing"
    assert "hunter2" not in response.text
    assert "ada@example.com" not in response.text


async def test_unexpected_error_is_500_without_internals(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/crash")

    body = problem(response, status=500, instance="/v1/crash")
    assert body["title"] == "Internal Server Error"
    assert "secret internals" not in response.text
    assert "RuntimeError" not in response.text
    assert "Traceback" not in response.text


@pytest.mark.parametrize("path", ["/v1/nope", "/v1/teapot/extra"])
async def test_unknown_path_is_404_problem(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)

    body = problem(response, status=404, instance=path)
    assert body["title"] == "Not Found"


async def test_wrong_method_is_405_problem_with_allow_header(client: httpx.AsyncClient) -> None:
    response = await client.delete("/v1/teapot")

    body = problem(response, status=405, instance="/v1/teapot")
    assert body["title"] == "Method Not Allowed"
    assert response.headers["allow"] == "GET"
