"""The app of test_sentry.py, run in a process of its own (sentry-sdk's integrations patch
Starlette and FastAPI for the whole process): `python sentry_probe.py DSN` builds an app
reporting to DSN, makes it fail one request that carries secrets, waits until the report
is sent, and prints the answer's status, trace id and request id as JSON.
Without DSN it builds the app only and prints whether sentry_sdk was imported."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import ClassVar

from fastapi import FastAPI, Request

from common.app import new_app
from common.settings import ServiceSettings
from devkit.testing import asgi_client

SECRETS = {
    "authorization": "sk-live-0123456789abcdefSECRET",
    "cookie": "cookie-0123456789SECRET",
    "password": "hunter2-0123456789SECRET",
    "api key in a local": "local-0123456789SECRET",
}


class SentryProbeSettings(ServiceSettings):
    service_name: ClassVar[str] = "sentryprobe"


@asynccontextmanager
async def no_lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield


def create_app(dsn: str | None) -> FastAPI:
    app = new_app(SentryProbeSettings(sentry_dsn=dsn), lifespan=no_lifespan, title="probe")

    @app.post("/v1/login")
    async def login(request: Request) -> None:
        body = await request.json()
        password = body["password"]
        api_key = SECRETS["api key in a local"]  # among the frame's variables
        if password and api_key:
            raise RuntimeError(f"the password is {password}")

    return app


async def fail_one_request(app: FastAPI) -> dict[str, object]:
    async with asgi_client(app) as client:
        response = await client.post(
            "/v1/login",
            json={"email": "someone@example.com", "password": SECRETS["password"]},
            headers={
                "Authorization": f"Bearer {SECRETS['authorization']}",
                "Cookie": f"session={SECRETS['cookie']}; csrf_token=abc",
            },
        )
    return {
        "status": response.status_code,
        "trace_id": response.json()["trace_id"],
        "request_id": response.headers["X-Request-ID"],
    }


def main(dsn: str | None) -> None:
    app = create_app(dsn)
    if dsn is None:
        print(json.dumps({"sentry_sdk imported": "sentry_sdk" in sys.modules}))
        return
    answer = asyncio.run(fail_one_request(app))
    import sentry_sdk

    sentry_sdk.flush(timeout=10)
    print(json.dumps(answer))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
