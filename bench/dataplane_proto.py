"""A prototype of a chat data plane that parses almost nothing, measured step by step
(issue 22). Not wired into the product: it shows what each step saves, against the same
zero-delay upstream, on this machine.

    .venv/bin/python bench/dataplane_proto.py [--rounds 3] [--duration 6]

The same two-hop shape as the product and bench/floor.py: a "gateway" (plain ASGI under
uvicorn: one Redis EVALSHA for the key and rate limit, the caller's identity signed with
HMAC-SHA256 as common.identity.sign does, the body relayed as bytes with aiohttp) in front
of an "inference" hop that does, per LEVEL (cumulative, each keeps the previous ones):

    sdk      the body parsed and checked against inference.chat_schema.ChatRequest; the
             call through the openai SDK (`client.post(..., cast_to=object)`, the product's
             adapter, one client per credential made once); the answer parsed into a dict,
             its model renamed, dumped again; the call event as common.llm_events
             .LlmCallEvent (28 fields) dumped with to_fields; events XADDed in batches every
             50 ms (as inference.events.EventSink)
    raw      no SDK: the same request written with aiohttp on one kept session, headers
             prebuilt per credential; the answer still parsed and dumped
    scan     the answer relayed as bytes: its `model` renamed by one bytes replace, usage
             read from its tail (rfind b'"usage"', then raw_decode of that one object)
    event    the call event built from the few fields the hop knows, formatted once
    nocheck  the request not validated: only `model` read (a scan), the body forwarded
             as is (what Portkey does; the product keeps its validation)
    onehop   `event`'s work done in the gateway itself, no second hop (the product's
             gateway would take credentials and routes from inference, cached)

Each level runs in the same minutes as the floor (bench/floor.py's hops, no work at all):
per round, one bench/loadgen.py window per level at c=1 and c=50, the order rotated between
rounds. Prints the CPU ms per request of the two hops (utime+stime from /proc), median and
range over the rounds, and what each step saved; writes bench/results/dataplane_proto.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from _common import RESULTS, UPSTREAM_KEY, machine, start_upstream, stop, utc_now
from _minimal_asgi import HELPERS, SERVE
from chat_ab import window
from floor import floor_stack

from common import ports
from devkit import devstack

LEVELS = ("sdk", "raw", "scan", "event", "nocheck", "onehop")
PROMPT = [{"role": "user", "content": "hello there"}]

HOP = (
    HELPERS
    + r'''
import asyncio, hashlib, hmac, json, os, time, uuid
import aiohttp
from redis.asyncio import Redis
from pydantic_core import from_json

LEVEL = os.environ["LEVEL"]
ROLE = os.environ["ROLE"]  # gateway or inference
NEXT = os.environ["NEXT_URL"]
KEY = os.environ["UPSTREAM_KEY"]
SIGNING = b"k" * 32
state = {}
LEVELS = ("sdk", "raw", "scan", "event", "nocheck", "onehop")
AT = LEVELS.index(LEVEL)


def setup():
    state["http"] = aiohttp.ClientSession(auto_decompress=False)
    state["redis"] = Redis.from_url(os.environ["HOP_REDIS"])
    state["hit"] = state["redis"].register_script("return redis.call('INCR', KEYS[1])")
    state["events"] = []
    state["flusher"] = asyncio.get_running_loop().create_task(flush())
    state["headers"] = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
    if ROLE == "inference" and LEVEL == "sdk":
        import openai
        state["sdk"] = openai.AsyncOpenAI(api_key=KEY, base_url=NEXT, max_retries=0,
                                          http_client=openai.DefaultAioHttpClient())


async def flush():
    """As inference.events.EventSink: one XADD pipeline per 50 ms batch."""
    while True:
        await asyncio.sleep(0.05)
        events, state["events"] = state["events"], []
        if events:
            async with state["redis"].pipeline(transaction=False) as pipe:
                for fields in events:
                    pipe.xadd("proto:events", fields, maxlen=10000, approximate=True)
                await pipe.execute()


def sign(path):
    body = {"sub": "00000000-0000-0000-0000-00000000000a", "kind": "user", "iss": "gateway",
            "roles": ["member"], "permissions": ["inference:invoke"], "iat": time.time(),
            "aud": "inference", "kid": "k1"}
    payload = json.dumps(body, separators=(",", ":")).encode()
    mac = hmac.new(SIGNING, b"POST\n" + path.encode() + b"\n" + payload, hashlib.sha256)
    return payload.hex() + "." + mac.hexdigest()


def usage_of(answer: bytes):
    """Usage from the tail of an OpenAI answer: the last `"usage":` key, one object."""
    at = answer.rfind(b'"usage"')
    if at < 0:
        return None
    colon = answer.find(b":", at + 7)
    text = answer[colon + 1:].decode()
    try:
        value, _ = json.JSONDecoder().raw_decode(text.lstrip())
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def model_of(body: bytes):
    at = body.find(b'"model"')
    start = body.find(b'"', body.find(b":", at) + 1)
    return body[start + 1:body.find(b'"', start + 1)].decode()


def full_event(model, usage, started):
    from common.llm_events import LlmCallEvent
    return LlmCallEvent(
        id=str(uuid.uuid4()), occurred_at=time.time(), user_id="u", api_key_id="k",
        provider="openai", model=model, alias=None, status="ok", error_type=None,
        prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get(
            "completion_tokens"), usage_estimated=False, cost_usd="0.000001000",
        latency_ms=round((time.monotonic() - started) * 1000, 3), ttft_ms=None, stream=False,
        attempts=1, fallback=False, operation="chat", trace_id=None, span_id=None,
        trace_sampled=False, team_id=None, cached_prompt_tokens=0, reasoning_tokens=0,
        cache=None, saved_usd=None,
    ).to_fields()


def lean_event(model, usage, started):
    return {"event": '{"id":"%s","occurred_at":%.6f,"user_id":"u","model":"%s",'
            '"prompt_tokens":%d,"completion_tokens":%d,"latency_ms":%.3f,"status":"ok"}' % (
                uuid.uuid4(), time.time(), model, usage.get("prompt_tokens", 0),
                usage.get("completion_tokens", 0), (time.monotonic() - started) * 1000)}


async def infer(body: bytes, upstream: str):
    """The inference hop's work at LEVEL: (status, answer bytes)."""
    started = time.monotonic()
    if AT < LEVELS.index("nocheck"):
        from inference.chat_schema import ChatRequest
        sent = from_json(body)
        ChatRequest.model_validate(sent)
        model = sent["model"]
        request = {k: v for k, v in sent.items() if v is not None}
        request["model"] = model.partition("/")[2]
    else:
        model = model_of(body)
        request = None
    if LEVEL == "sdk":
        answer = await state["sdk"].post("/chat/completions", body=request, cast_to=object)
        status = 200
    else:
        data = json.dumps(request).encode() if request is not None else body.replace(
            model.encode(), model.partition("/")[2].encode(), 1)
        async with state["http"].post(upstream + "/chat/completions", data=data,
                                      headers=state["headers"]) as r:
            raw, status = await r.read(), r.status
        answer = json.loads(raw) if AT < LEVELS.index("scan") else None
    if answer is not None:
        answer["model"] = model
        usage = answer.get("usage") or {}
        out = json.dumps(answer).encode()
    else:
        out = raw.replace(b'"model":"' + model.partition("/")[2].encode() + b'"',
                          b'"model":"' + model.encode() + b'"', 1)
        usage = usage_of(raw) or {}
    build = full_event if AT < LEVELS.index("event") else lean_event
    state["events"].append(build(model, usage, started))
    return status, out


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    if not state:
        setup()
    body = await read_body(receive)
    if ROLE == "inference":
        status, data = await infer(body, NEXT)
        return await send_json(send, status, data)
    await state["hit"](keys=["proto:count"])
    if LEVEL == "onehop":
        status, data = await infer(body, NEXT)
        return await send_json(send, status, data)
    headers = {"content-type": "application/json", "x-identity": sign(scope["path"])}
    async with state["http"].post(NEXT + scope["path"], data=body, headers=headers) as r:
        data = await r.read()
    await send_json(send, r.status, data)
'''
    + SERVE
)


@contextlib.contextmanager
def hops(level: str, upstream_url: str, redis_url: str) -> Iterator[tuple[str, list[Any]]]:
    """The two hops at `level` (one for onehop); the first hop's chat URL and the processes."""
    workdir = tempfile.mkdtemp(prefix="proto-")
    Path(workdir, "proto_hop.py").write_text(HOP)
    env = dict(os.environ, PYTHONPATH=workdir, LEVEL=level, HOP_REDIS=redis_url,
               UPSTREAM_KEY=UPSTREAM_KEY)  # fmt: skip
    started: list[subprocess.Popen[bytes]] = []
    try:
        if level == "onehop":
            gateway, port = ports.spawn(
                [sys.executable, "-m", "proto_hop"],
                cwd=workdir,
                env=dict(env, ROLE="gateway", NEXT_URL=upstream_url),
            )
            started.append(gateway)
        else:
            inference, inference_port = ports.spawn(
                [sys.executable, "-m", "proto_hop"],
                cwd=workdir,
                env=dict(env, ROLE="inference", NEXT_URL=upstream_url),
            )
            started.append(inference)
            gateway, port = ports.spawn(
                [sys.executable, "-m", "proto_hop"],
                cwd=workdir,
                env=dict(env, ROLE="gateway", NEXT_URL=f"http://127.0.0.1:{inference_port}"),
            )
            started.append(gateway)
        url = f"http://127.0.0.1:{port}/chat/completions"
        _wait(url)
        yield url, [psutil.Process(p.pid) for p in started]
    finally:
        for proc in reversed(started):
            proc.kill()
            proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait(url: str) -> None:
    import time

    import httpx

    body = {"model": "openai/gpt-4o-mini", "messages": PROMPT}
    for _ in range(300):
        try:
            answer = httpx.post(url, json=body, timeout=5)
            if answer.status_code == 200:
                for _ in range(200):
                    httpx.post(url, json=body, timeout=5)
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--levels", nargs="*", default=list(LEVELS))
    parser.add_argument("--concurrency", nargs="*", type=int, default=[1, 50])
    args = parser.parse_args()
    load_before = machine()["load_average"]
    body = {"model": "openai/gpt-4o-mini", "messages": PROMPT}
    rows: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="proto-redis-"))
    redis: subprocess.Popen[bytes] | None = None
    upstream: subprocess.Popen[bytes] | None = None
    try:
        redis, redis_url = devstack.start_redis(workdir)
        upstream, port = start_upstream()
        upstream_url = f"http://127.0.0.1:{port}/v1"
        with contextlib.ExitStack() as stack:
            floor_url, floor_procs = stack.enter_context(floor_stack())
            running = {level: stack.enter_context(hops(level, upstream_url, redis_url))
                       for level in args.levels}  # fmt: skip
            targets = ["floor", *args.levels]
            for round_no in range(args.rounds):
                shift = round_no % len(targets)
                for concurrency in args.concurrency:
                    for target in targets[shift:] + targets[:shift]:
                        if target == "floor":
                            url, procs = floor_url, list(floor_procs.values())
                            sent = dict(body, model="gpt-4o-mini")
                        else:
                            (url, procs), sent = running[target], body
                        result = window(url, sent, None, concurrency, {"hops": procs},
                                        warmup=args.warmup, duration=args.duration)  # fmt: skip
                        cpu = result["cpu"]["hops"]
                        rows.append({"round": round_no, "level": target,
                                     "concurrency": concurrency, "cpu_ms": cpu,
                                     "rps": result["rps"], "errors": result["errors"]})  # fmt: skip
                        print(f"  round {round_no} c={concurrency:<3} {target:<8} "
                              f"{result['rps']:7.1f} req/s  hops {cpu:.3f} ms/req  "
                              f"errors {result['errors']}", flush=True)  # fmt: skip
    finally:
        stop(upstream)
        if redis is not None:
            devstack.stop_process(redis)
        shutil.rmtree(workdir, ignore_errors=True)
    report(rows, args, load_before)
    return 0


def report(rows: list[dict[str, Any]], args: argparse.Namespace, load_before: list[float]) -> None:
    summary: dict[str, Any] = {}
    print(f"\nload average before {load_before}, after {machine()['load_average']}")
    print("| level | c | CPU ms/req, both hops (median, range) | saved vs previous | x floor |")
    print("|---|---|---|---|---|")
    for concurrency in args.concurrency:
        previous = None
        medians: dict[str, float] = {}
        for level in ["floor", *args.levels]:
            values = [r["cpu_ms"] for r in rows
                      if r["level"] == level and r["concurrency"] == concurrency]  # fmt: skip
            if not values:
                continue
            median = statistics.median(values)
            medians[level] = median
            summary[f"{level} c={concurrency}"] = {"median": median, "min": min(values),
                                                   "max": max(values)}  # fmt: skip
            saved = "" if previous is None or level == "floor" else f"{previous - median:+.3f}"
            ratio = median / medians["floor"] if "floor" in medians else float("nan")
            print(
                f"| {level} | {concurrency} | {median:.3f} ({min(values):.3f}-{max(values):.3f})"
                f" | {saved} | {ratio:.2f} |"
            )
            if level != "floor":
                previous = median
    (RESULTS / "dataplane_proto.json").write_text(json.dumps(
        {"when": utc_now(), "machine": machine(), "load_before": load_before,
         "rounds": args.rounds, "duration": args.duration, "rows": rows,
         "summary": summary}, indent=2))  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
