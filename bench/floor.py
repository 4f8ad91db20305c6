"""The floor under the chat path on this machine: what two hops cost before any of our code.

    .venv/bin/python bench/floor.py [--requests 2000]

Runs the same shape as gateway -> inference -> upstream with nothing but the transport:
a "gateway" (plain ASGI under uvicorn: one Redis EVALSHA, then forward the body with
aiohttp) in front of an "inference" (plain ASGI: forward to the upstream with aiohttp) in
front of the zero-delay OpenAI-protocol fake. CPU per request of the two middle processes
is the least any implementation of this architecture on uvicorn + aiohttp + redis-py can
spend here; bench/chat_path.py measures ours. Writes bench/results/floor.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "libs" / "common" / "src"))
sys.path.insert(0, str(ROOT / "libs" / "devkit" / "src"))
from _minimal_asgi import HELPERS, SERVE  # noqa: E402

from common import ports  # noqa: E402
from devkit import devstack  # noqa: E402

HOP = (
    HELPERS
    + """
import os, aiohttp
from redis.asyncio import Redis
NEXT = os.environ["NEXT_URL"]
REDIS = os.environ.get("HOP_REDIS")
state = {}
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    if not state:
        state["http"] = aiohttp.ClientSession(auto_decompress=False)
        state["redis"] = Redis.from_url(REDIS) if REDIS else None
        state["hit"] = state["redis"].register_script("return redis.call('INCR', KEYS[1])") \\
            if REDIS else None
    body = await read_body(receive)
    if state["hit"] is not None:
        await state["hit"](keys=["floor:count"])
    async with state["http"].post(NEXT + scope["path"], data=body,
                                  headers={"content-type": "application/json",
                                           "authorization": "Bearer sk-floor"}) as r:
        data = await r.read()
    await send_json(send, r.status, data)
"""
    + SERVE
)


def serve_hop(
    workdir: str, next_url: str, redis_url: str | None
) -> tuple[subprocess.Popen[bytes], int]:
    """A hop on a free port (it serves the socket bound here: common.ports); the process
    and its port."""
    env = dict(os.environ, NEXT_URL=next_url, PYTHONPATH=workdir)
    if redis_url:
        env["HOP_REDIS"] = redis_url
    return ports.spawn([sys.executable, "-m", "floor_hop"], env=env, cwd=workdir)


BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


def wait(url: str) -> None:
    for _ in range(200):
        try:
            httpx.post(url, json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


@contextlib.contextmanager
def floor_stack() -> Iterator[tuple[str, dict[str, psutil.Process]]]:
    """Redis, the upstream and the two hops, warmed up; yields the chat URL of the first hop
    and the two hops' processes; stops it all on the way out (bench/chat_ab.py uses it too)."""
    workdir = tempfile.mkdtemp(prefix="floor-")
    Path(workdir, "floor_hop.py").write_text(HOP)
    redis: subprocess.Popen[bytes] | None = None
    servers: list[subprocess.Popen[bytes]] = []  # killed on the way out, last first
    try:
        # redis-server binds its port itself: start_redis takes another if it is taken.
        redis, redis_url = devstack.start_redis(Path(workdir))
        upstream, upstream_port = ports.spawn(
            [sys.executable, "-m", "devkit.fakes.run", "openai"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        servers.append(upstream)
        inference, inference_port = serve_hop(workdir, f"http://127.0.0.1:{upstream_port}/v1", None)
        servers.append(inference)
        gateway, gateway_port = serve_hop(workdir, f"http://127.0.0.1:{inference_port}", redis_url)
        servers.append(gateway)
        url = f"http://127.0.0.1:{gateway_port}/chat/completions"
        wait(f"http://127.0.0.1:{upstream_port}/v1/chat/completions")
        wait(url)
        with httpx.Client() as client:
            for _ in range(200):
                client.post(url, json=BODY)
        yield url, {"gateway": psutil.Process(gateway.pid),
                    "inference": psutil.Process(inference.pid)}  # fmt: skip
    finally:
        for proc in reversed(servers):
            proc.kill()
            proc.wait(10)
        if redis is not None:
            devstack.stop_process(redis)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    n = parser.parse_args().requests
    with floor_stack() as (url, procs), httpx.Client() as client:
        before = {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}
        for _ in range(n):
            assert client.post(url, json=BODY).status_code == 200
        cpu = {k: (sum(p.cpu_times()[:2]) - before[k]) * 1000 / n for k, p in procs.items()}
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "requests": n,
        "cpu_ms_per_request": {**cpu, "gateway+inference": sum(cpu.values())},
    }
    (ROOT / "bench" / "results" / "floor.json").write_text(json.dumps(result, indent=2))
    print("floor CPU ms per request:", json.dumps(result["cpu_ms_per_request"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
