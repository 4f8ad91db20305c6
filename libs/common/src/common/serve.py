"""Run one app under uvicorn with the common logging pipeline."""

from __future__ import annotations

import gc

import uvicorn
from uvicorn.importer import import_from_string

from common.logging import UVICORN_LOG_CONFIG
from common.settings import ServiceSettings


def serve(factory: str, settings: ServiceSettings) -> None:
    """`factory` is an import string for `create_app`, e.g. `auth.main:create_app`."""
    app = import_from_string(factory)()
    # What importing and building the app allocated lives as long as the process: out of
    # the collector's sight (gc.freeze), and young collections ten times rarer than the
    # default 700 allocations. Batch work (thousands of events or vectors per request)
    # otherwise spends ~6 % of its CPU in collections that scan the whole heap.
    gc.collect()
    gc.freeze()
    gc.set_threshold(7000, 10, 10)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=UVICORN_LOG_CONFIG,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
