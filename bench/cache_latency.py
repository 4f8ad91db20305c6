"""The response cache's latency through the gateway: what a hit takes (exact, semantic with
the embedding included) and what a miss adds to a call that goes to the provider.

    .venv/bin/python bench/cache_latency.py [--requests 400] [--rounds 5]

One platform (`make run`'s processes, fresh data) in front of the zero-delay OpenAI fake,
one client, one request at a time (the latency of one call, not a throughput). Each round
measures, back to back so that they share their minute:
- `hit-exact`: the same request with `"cache": {"mode": "exact"}`, answered from Redis;
- `hit-semantic`: a paraphrase of a cached prompt under a key whose cache default is
  semantic (each is an exact miss, then an embedding, a pgvector lookup and the guard);
- `bypass` and `miss-exact`: prompts never seen before, with the cache off and with the
  exact cache on (looked up, missed, the answer stored after it was sent): their
  difference is what the exact cache adds to a miss.
Reports p50 and p90 per kind per round, and the medians with ranges over the rounds.
Writes bench/results/cache_latency.json.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import time
from typing import Any

import httpx
from _common import RESULTS, admin_client, machine, percentile, platform, provision, utc_now
from suite import upstream

CACHED = "What is the chemical symbol for gold?"  # bench/data pair 41
PARAPHRASE = "what is gold's chemical symbol?"


def timed(client: httpx.Client, key: str, body: dict[str, Any], expect: str) -> float:
    started = time.perf_counter()
    response = client.post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200 or response.headers.get("x-cache") != expect:
        raise RuntimeError(f"expected {expect}: {response.status_code} "
                           f"{response.headers.get('x-cache')} {response.text[:200]}")  # fmt: skip
    return elapsed


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": text}],
            **extra}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="per kind per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    exact = {"cache": {"mode": "exact"}}
    kinds = ("hit-exact", "hit-semantic", "bypass", "miss-exact")
    rounds: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    with upstream() as (_, bare_url), platform(RESULTS / "cache_latency.log") as running:
        plain = provision(running.gateway, bare_url + "/v1")["plain"]
        with admin_client(running.gateway) as admin:
            created = admin.post("/auth/api-keys", json={
                "name": "semantic", "cache": {"mode": "semantic"}
            })  # fmt: skip
            created.raise_for_status()
            semantic = created.json()["key"]
        with httpx.Client(base_url=running.gateway, timeout=30) as client:
            # The local model loads in the background at start; the first lookups wait.
            client.post("/v1/embeddings", headers={"Authorization": f"Bearer {plain}"},
                        json={"model": "local/all-MiniLM-L6-v2", "input": "warm up"})  # fmt: skip
            timed(client, plain, chat("words:20", **exact), "miss")
            timed(client, semantic, chat(CACHED), "miss")
            time.sleep(1)  # the semantic entry is written after the answer

            def one(kind: str) -> float:
                if kind == "hit-exact":
                    return timed(client, plain, chat("words:20", **exact), "hit-exact")
                if kind == "hit-semantic":
                    return timed(client, semantic, chat(PARAPHRASE), "hit-semantic")
                fresh = chat(f"words:20 {secrets.token_hex(8)}", **(exact if kind == "miss-exact"
                                                                   else {}))  # fmt: skip
                return timed(client, plain, fresh, "miss" if kind == "miss-exact" else "bypass")

            for n in range(args.rounds):
                # Each kind in a block of its own (the answer of a miss is stored after it
                # was sent: interleaved, that write would land on the next kind's clock),
                # the blocks in a rotating order.
                order = kinds[n % len(kinds) :] + kinds[: n % len(kinds)]
                for kind in order:
                    one(kind)  # the block's first call pays for the switch
                    values = [one(kind) for _ in range(args.requests)]
                    rounds[kind].append({"p50": statistics.median(values),
                                         "p90": percentile(values, 90)})  # fmt: skip
    summary = {
        kind: {
            stat: {"median": statistics.median(r[stat] for r in rs),
                   "min": min(r[stat] for r in rs), "max": max(r[stat] for r in rs)}
            for stat in ("p50", "p90")
        }
        for kind, rs in rounds.items()
    }  # fmt: skip
    added = [m["p50"] - b["p50"] for m, b in zip(rounds["miss-exact"], rounds["bypass"],
                                                  strict=True)]  # fmt: skip
    report = {
        "when": utc_now(), "machine": machine(), "requests": args.requests,
        "rounds": rounds, "summary": summary,
        "miss_added_p50_ms": {"median": statistics.median(added), "min": min(added),
                              "max": max(added)},
    }  # fmt: skip
    (RESULTS / "cache_latency.json").write_text(json.dumps(report, indent=2))
    for kind in kinds:
        p50 = summary[kind]["p50"]
        print(f"{kind:13s} p50 {p50['median']:.2f} ms ({p50['min']:.2f}-{p50['max']:.2f})"
              f"  p90 {summary[kind]['p90']['median']:.2f} ms")  # fmt: skip
    m = report["miss_added_p50_ms"]
    print(f"exact miss adds {m['median']:.2f} ms to p50 ({m['min']:.2f}-{m['max']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
