"""Run one app under uvicorn with the common logging pipeline."""

from __future__ import annotations

import gc
import logging
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.importer import import_from_string

from common import ports
from common.logging import UVICORN_LOG_CONFIG
from common.settings import ServiceSettings

STARTUP_FAILURE = 3  # uvicorn's exit code when a server cannot start
# How long an idle keep-alive connection stays open (uvicorn's default: 5 s). Longer than
# any client of ours keeps one in its pool (the gateway's aiohttp pools 30 s, httpx 5 s)
# and than a load balancer's idle timeout (60 s on AWS's ALB): the client closes first.
# Were the server first, a request sent on a connection just as the server closes it would
# fail (`make soak` saw the gateway answer 502 for a stream that way).
KEEP_ALIVE_SECONDS = 75


def serve(factory: str, settings: ServiceSettings) -> None:
    """`factory` is an import string for `create_app`, e.g. `auth.main:create_app`.

    It serves the listening socket its launcher handed it (common.ports: `make run`, the
    tests), else one it binds on settings.host:port; a port in use ends the process with
    uvicorn's start-up failure code and a line naming the port and, if visible, its holder.
    """
    app = import_from_string(factory)()
    sock = ports.inherited()
    if sock is None:
        try:
            sock = ports.listen(settings.host, settings.port)
        except OSError as exc:
            logging.getLogger("uvicorn.error").error("cannot listen: %s", exc)
            sys.exit(STARTUP_FAILURE)
    # What importing and building the app allocated lives as long as the process: out of
    # the collector's sight (gc.freeze), and young collections ten times rarer than the
    # default 700 allocations. Batch work (thousands of events or vectors per request)
    # otherwise spends ~6 % of its CPU in collections that scan the whole heap.
    gc.collect()
    gc.freeze()
    gc.set_threshold(7000, 10, 10)
    run(
        app,
        sock,
        log_config=UVICORN_LOG_CONFIG,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
    )


def run(app: Any, sock: socket.socket, **options: Any) -> None:
    """uvicorn.run on a listening socket of ours, idle connections kept KEEP_ALIVE_SECONDS,
    with uvicorn's exit code when the app cannot start (its lifespan failed)."""
    host, port = sock.getsockname()[:2]
    options.setdefault("timeout_keep_alive", KEEP_ALIVE_SECONDS)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, **options))
    logging.getLogger("uvicorn.error").info("listening on %s:%s", host, port)
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)
