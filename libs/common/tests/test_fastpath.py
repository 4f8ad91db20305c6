"""common.fastpath: a fast route answers what it can; the FastAPI route gets the rest, body
and all."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from common.errors import Problem
from common.fastpath import FastRoutes, committed, fast_route

routed: list[str] = []  # the ids the FastAPI route answered


async def handler(request: Request, params: Mapping[str, str]) -> Response | None:
    body = json.loads(await request.body())
    if body.get("invalid"):
        raise ValueError("the route gives this its own 422")
    if body.get("boom"):
        raise RuntimeError("the database went away")
    if "after_commit" in body:
        committed(request)  # the model call would start here
        raise {"problem": Refused("the provider refused"), "value": ValueError("odd answer")}[
            body["after_commit"]
        ]
    if not body.get("fast"):
        return None
    return JSONResponse({"via": "fast", "id": params["id"], "body": body})


async def on_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"via": "on_error", "error": str(exc)}, status_code=500)


class Refused(Problem):
    status = 502


async def on_problem(request: Request, exc: Exception) -> Response:
    return JSONResponse({"via": "on_problem", "error": str(exc)}, status_code=502)


def client() -> httpx.AsyncClient:
    app = FastAPI()
    routed.clear()

    @app.post("/items/{id}")
    async def route(id: str, request: Request) -> dict[str, Any]:
        routed.append(id)
        return {"via": "route", "id": id, "body": json.loads(await request.body())}

    @app.get("/items/{id}")
    async def read(id: str) -> dict[str, Any]:
        return {"via": "route", "id": id}

    @app.post("/items/{id}/more")
    async def more(id: str) -> dict[str, Any]:
        return {"via": "route", "id": id}

    wrapped = FastRoutes(
        app, [fast_route("POST", "/items/{id}", handler)], on_error,
        {Problem: on_problem, Exception: on_error},
    )  # fmt: skip
    transport = httpx.ASGITransport(app=wrapped, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://t")


async def test_the_fast_route_answers_when_it_can() -> None:
    async with client() as http:
        answer = await http.post("/items/a1", json={"fast": True})

    assert answer.json() == {"via": "fast", "id": "a1", "body": {"fast": True}}
    assert routed == []


async def test_the_route_answers_what_the_fast_route_gives_up_with_the_same_body() -> None:
    async with client() as http:
        declined = await http.post("/items/a2", json={"fast": False, "n": 1})
        invalid = await http.post("/items/a3", json={"invalid": True})

    assert declined.json() == {"via": "route", "id": "a2", "body": {"fast": False, "n": 1}}
    assert invalid.json() == {"via": "route", "id": "a3", "body": {"invalid": True}}


async def test_an_unexpected_error_is_answered_once_not_retried() -> None:
    """A database that went away must not make the caller wait twice."""
    async with client() as http:
        failed = await http.post("/items/a6", json={"boom": True})

    assert failed.status_code == 500
    assert failed.json() == {"via": "on_error", "error": "the database went away"}
    assert routed == []


async def test_past_committed_errors_are_the_apps_answers_never_a_second_run() -> None:
    """A handler that has started its side effects (a billed model call) never gives the
    request to the route: a Problem gets the app's handler for it, anything else on_error."""
    async with client() as http:
        refused = await http.post("/items/a7", json={"after_commit": "problem"})
        odd = await http.post("/items/a8", json={"after_commit": "value"})

    assert (refused.status_code, refused.json()["via"]) == (502, "on_problem")
    assert (odd.status_code, odd.json()["via"]) == (500, "on_error")
    assert routed == []


async def test_other_methods_and_paths_go_to_the_routes() -> None:
    async with client() as http:
        read = await http.get("/items/a4")
        longer = await http.post("/items/a5/more", json={"fast": True})
        unknown = await http.post("/other", json={"fast": True})

    assert read.json() == {"via": "route", "id": "a4"}
    assert longer.json() == {"via": "route", "id": "a5"}
    assert unknown.status_code == 404


def test_a_template_matches_one_segment_per_parameter() -> None:
    route = fast_route("POST", "/v1/collections/{id}/query", handler)

    found = route.path.fullmatch("/v1/collections/abc-1/query")
    assert found is not None
    assert found.groupdict() == {"id": "abc-1"}
    assert route.path.fullmatch("/v1/collections/a/b/query") is None
    assert route.path.fullmatch("/v1/collections//query") is None
    assert route.path.fullmatch("/v1/collectionsX/a/query") is None
