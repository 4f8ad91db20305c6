"""SENTRY_DSN: an unhandled error of a route reaches Sentry tagged with the ids a user quotes,
and no secret of the request goes with it. Sentry here is a local HTTP receiver that keeps
the envelopes the real sentry-sdk sends it (no network); the app runs in a process of its
own (sentry_probe.py), since sentry-sdk patches Starlette for the whole process."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings

from .sentry_probe import SECRETS

PROBE = Path(__file__).with_name("sentry_probe.py")


class Receiver:
    """A Sentry endpoint on 127.0.0.1 that records each envelope it is sent, decompressed."""

    def __init__(self) -> None:
        self.envelopes: list[bytes] = []
        received = self.envelopes

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                received.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.dsn = f"http://public@127.0.0.1:{self.server.server_address[1]}/1"

    def events(self) -> list[dict[str, Any]]:
        """The error events among the envelopes' items (sessions and the like left out)."""
        events = []
        for envelope in self.envelopes:
            lines = envelope.split(b"\n")
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                if json.loads(header).get("type") == "event":
                    events.append(json.loads(payload))
        return events


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def probe(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(PROBE), *args], check=True, capture_output=True, timeout=120
    )
    answer: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return answer


def test_an_unhandled_error_is_reported_with_its_ids_and_without_secrets(
    receiver: Receiver,
) -> None:
    answer = probe(receiver.dsn)

    assert answer["status"] == 500
    [event] = receiver.events()
    assert event["exception"]["values"][-1]["type"] == "RuntimeError"
    assert event["request"]["method"] == "POST"
    assert event["tags"] == {
        "service": "sentryprobe",
        "trace_id": answer["trace_id"],
        "request_id": answer["request_id"],
    }
    sent = b"\n".join(receiver.envelopes).decode()
    for what, secret in SECRETS.items():
        assert secret not in sent, what


def test_without_a_dsn_sentry_sdk_is_not_even_imported() -> None:
    assert probe() == {"sentry_sdk imported": False}


class PrefixedSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PROBE_")


def test_the_dsn_is_given_once_or_per_app_and_empty_means_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SENTRY_DSN", "https://public@sentry.example/1")
    assert PrefixedSettings().sentry_dsn == SecretStr("https://public@sentry.example/1")
    monkeypatch.setenv("PROBE_SENTRY_DSN", "https://public@sentry.example/2")
    assert PrefixedSettings().sentry_dsn == SecretStr("https://public@sentry.example/2")
    monkeypatch.setenv("PROBE_SENTRY_DSN", "")
    assert PrefixedSettings().sentry_dsn is None
