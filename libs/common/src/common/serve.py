"""Run one app under uvicorn with the common logging pipeline."""

from __future__ import annotations

import uvicorn

from common.logging import UVICORN_LOG_CONFIG
from common.settings import ServiceSettings


def serve(factory: str, settings: ServiceSettings) -> None:
    """`factory` is an import string for `create_app`, e.g. `auth.main:create_app`."""
    uvicorn.run(
        factory,
        factory=True,
        host=settings.host,
        port=settings.port,
        log_config=UVICORN_LOG_CONFIG,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
