"""Steady traffic in threads while a fault is injected: every answer kept with its time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True)
class Answer:
    sent: float  # time.monotonic() when the request left
    took: float  # seconds until the answer (or the client's give-up)
    status: int  # 0: no HTTP answer (connection refused, reset, timed out)
    content_type: str
    body: str


@dataclass
class Load:
    """`workers` threads sending `request(client)` back to back until stopped."""

    request: Callable[[httpx.Client], httpx.Response]
    base_url: str
    workers: int = 4
    timeout: float = 10.0
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, daemon=True) for _ in range(self.workers)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def _work(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=self.timeout) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    response = self.request(client)
                    kind = response.headers.get("content-type", "")
                    took = time.monotonic() - sent
                    answer = Answer(sent, took, response.status_code, kind, response.text)
                except httpx.HTTPError as exc:
                    answer = Answer(sent, time.monotonic() - sent, 0, "", repr(exc))
                with self._lock:
                    self.answers.append(answer)
                if answer.status != 200:
                    time.sleep(0.02)  # a failing platform is not hammered in a tight loop

    def since(self, moment: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.sent >= moment]

    def between(self, start: float, end: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if start <= a.sent < end]

    def wait_for(self, condition: Callable[[list[Answer]], bool], within: float) -> float:
        """Poll until `condition(answers so far)`; the time it held (monotonic)."""
        deadline = time.monotonic() + within
        while True:
            with self._lock:
                answers = list(self.answers)
            if condition(answers):
                return time.monotonic()
            if time.monotonic() > deadline:
                last = [(a.status, a.body[:120]) for a in answers[-5:]]
                raise AssertionError(f"not within {within} s; the last answers: {last}")
            time.sleep(0.05)


def counted_calls(
    gateway: str, headers: dict[str, str], expected: int, *, retry_errors: bool = False
) -> int:
    """The member's successful calls as /v1/usage counts them, polled until it counts
    `expected` (or 30 s passed: then what it counts). A usage query that fails is an
    assertion error at once, unless `retry_errors` (then only past the 30 s)."""
    with httpx.Client(base_url=gateway, timeout=10, headers=headers) as client:
        deadline = time.monotonic() + 30
        while True:
            usage = client.get("/v1/usage")
            if usage.status_code == 200:
                totals = usage.json()["totals"]
                calls = int(totals["requests"] - totals["errors"])
                if calls >= expected or time.monotonic() > deadline:
                    return calls
            elif not retry_errors or time.monotonic() > deadline:
                raise AssertionError(usage.text)
            time.sleep(0.25)
