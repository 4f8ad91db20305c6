"""The markdown tables of `make bench` (bench/suite.py), from its report (latest.json)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from repeats import per_round, spread, windows

OUR_SERVICES = ("gateway", "auth", "inference", "embeddings", "telemetry")
PEERS = ("litellm", "portkey")
LABELS = {
    "bare": "bare upstream",
    "ours": "ours (gateway)",
    "litellm": "LiteLLM",
    "portkey": "Portkey",
}
RSS_TARGET_MB = 150


def fmt(value: Any, digits: int = 1) -> str:
    """A number with `digits` decimals (thousands separated), or a dash when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |"
        for row in rows
    ]
    return "\n".join(lines)


def status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def _server(row: dict[str, Any] | None, key: str) -> float | None:
    """`key` (cpu_ms_per_request, rss_mb) of the server itself: our five services summed,
    or a peer's processes (LiteLLM's workers summed), or the bare upstream's."""
    values = row.get(key) if row else None
    if not row or not values:
        return None
    if row["target"] == "ours":
        return sum(values.get(name, 0.0) for name in OUR_SERVICES)
    found = values.get(row["target"] if row["target"] in PEERS else "upstream")
    return None if found is None else float(found)


def services_cpu(row: dict[str, Any] | None) -> float | None:
    return _server(row, "cpu_ms_per_request")


def server_rss(row: dict[str, Any] | None) -> float | None:
    return _server(row, "rss_mb")


def by_scenario(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        found.setdefault(row["scenario"], {})[row["target"]] = row
    return found


def _p50(row: dict[str, Any] | None, key: str = "latency_ms") -> float | None:
    if not _served(row) or not row or not row.get(key):
        return None
    value = row[key].get("p50")
    return float(value) if value is not None else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


MAIN_HEADER = [
    "scenario",
    "target",
    "req/s",
    "p50",
    "p95",
    "p99",
    "errors",
    "added p50",
    "TTFB p50 (added)",
    "server CPU/req",
    "upstream CPU/req",
    "generator CPU/req",
    "server RSS",
]
RATIO_HEADER = [
    "scenario",
    "ours / bare req/s",
    "ours / LiteLLM req/s",
    "ours / Portkey req/s",
    "LiteLLM / ours CPU per request",
    "Portkey / ours CPU per request",
    "added p50 ours (ms)",
    "added p50 LiteLLM (ms)",
    "added p50 Portkey (ms)",
]


def _installed(row: dict[str, Any] | None) -> bool:
    return row is not None and not row.get("not_installed")


def _served(row: dict[str, Any] | None) -> bool:
    """Measured, with at least one answer counted (not: not installed, cannot serve,
    skipped, or every request an error)."""
    return (
        _installed(row)
        and row is not None
        and not row.get("cannot_serve")
        and not row.get("skipped")
        and bool(row.get("ok", 1))
    )


def why_not(row: dict[str, Any] | None) -> str | None:
    """Why a row has no figures, in a few words; None when it has."""
    if row is None or row.get("not_installed"):
        return "not installed"
    if row.get("skipped"):
        return str(row["skipped"])
    if row.get("cannot_serve"):
        return f"cannot serve: {_cell_text(row['cannot_serve'])}"
    if not row.get("ok", 1):
        sample = row.get("error_sample") or f"statuses {row.get('statuses')}"
        return f"cannot serve: every request failed ({_cell_text(sample)})"
    return None


def _cell_text(text: str, limit: int = 90) -> str:
    """`text` on one line, short, with nothing that would break a markdown table."""
    flat = " ".join(str(text).split()).replace("|", "/")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _with_range(found: tuple[float, float, float] | None, digits: int) -> str:
    """ "median (min-max)" of a spread, or a dash."""
    if found is None:
        return "—"
    median, least, most = found
    if least == most:
        return fmt(median, digits)
    return f"{fmt(median, digits)} ({fmt(least, digits)}-{fmt(most, digits)})"


def _window_spread(
    row: dict[str, Any] | None, figure: Callable[[dict[str, Any]], float | None]
) -> tuple[float, float, float] | None:
    """`figure` of each of the row's windows: (median, min, max)."""
    if not _served(row):
        return None
    values = [v for v in (figure(w) for w in windows(row)) if v is not None]
    return spread(values)


def _rps(window: dict[str, Any]) -> float | None:
    value = window.get("rps")
    return None if value is None else float(value)


def _p50_of(key: str = "latency_ms") -> Callable[[dict[str, Any]], float | None]:
    def figure(window: dict[str, Any]) -> float | None:
        value = (window.get(key) or {}).get("p50")
        return None if value is None else float(value)

    return figure


def _added(key: str = "latency_ms") -> Callable[[dict[str, Any], dict[str, Any]], float | None]:
    """A window's p50 minus the bare upstream's window of the same round."""
    p50 = _p50_of(key)

    def figure(window: dict[str, Any], bare: dict[str, Any]) -> float | None:
        return _diff(p50(window), p50(bare))

    return figure


def _rps_ratio(window: dict[str, Any], other: dict[str, Any]) -> float | None:
    return _ratio(_rps(window), _rps(other))


def _cpu_ratio(window: dict[str, Any], other: dict[str, Any]) -> float | None:
    return _ratio(services_cpu(window), services_cpu(other))


def round_spread(
    figure: Callable[[dict[str, Any], dict[str, Any]], float | None],
    row: dict[str, Any] | None,
    other: dict[str, Any] | None,
) -> tuple[float, float, float] | None:
    """`figure(row's window, other's window)` round by round: (median, min, max)."""
    if not _served(row) or not _served(other):
        return None
    return spread(per_round(figure, row, other))


def _ttfb_text(row: dict[str, Any], bare: dict[str, Any] | None, target: str) -> str:
    """Time to first byte, p50, with what the target adds to the bare upstream's (round by
    round)."""
    ttfb = _window_spread(row, _p50_of("first_byte_ms"))
    if ttfb is None or row.get("kind") != "stream":  # a chunked JSON answer has no "first byte"
        return "—"
    added = None if target == "bare" else round_spread(_added("first_byte_ms"), row, bare)
    return _with_range(ttfb, 2) + (f" (+{_with_range(added, 2)})" if added else "")


def _main_row(
    name: str, label: str, target: str, row: dict[str, Any], bare: dict[str, Any] | None
) -> list[str]:
    """One target of one scenario: throughput, latency, CPU and memory; each the median of
    the row's windows with their range."""
    latency = row["latency_ms"]
    added = None if target == "bare" else round_spread(_added(), row, bare)
    return [
        name,
        label,
        _with_range(_window_spread(row, _rps), 1),
        _with_range(_window_spread(row, _p50_of()), 2),
        fmt(latency["p95"], 2),
        fmt(latency["p99"], 2),
        fmt(row["errors"], 0),
        _with_range(added, 2) if target != "bare" else "—",
        _ttfb_text(row, bare, target),
        _with_range(_window_spread(row, services_cpu), 2),
        fmt(row["cpu_ms_per_request"].get("upstream"), 2) if target != "bare" else "—",
        fmt(row["generator_cpu_ms_per_request"], 3),
        fmt(server_rss(row), 0),
    ]


def _cpu_row(name: str, ours: dict[str, Any]) -> list[str]:
    """Our CPU per request, process by process (medians of the windows)."""
    cpu = ours["cpu_ms_per_request"]
    return [
        name,
        *(fmt(cpu.get(n), 2) for n in OUR_SERVICES),
        _with_range(_window_spread(ours, services_cpu), 2),
        fmt(cpu.get("redis"), 2),
        fmt(cpu.get("postgres"), 2),
        fmt(cpu.get("upstream"), 2),
    ]


def _peer_cell(
    peer: dict[str, Any] | None, found: tuple[float, float, float] | None, digits: int
) -> str:
    """A ratio or an added latency against a peer, or why the peer has none."""
    why = why_not(peer)
    if why is not None:
        return why
    return _with_range(found, digits)


def _ratio_row(name: str, targets: dict[str, dict[str, Any]]) -> list[str]:
    """Ours against the bare upstream and each peer in one scenario, round by round: the
    median of the rounds' ratios with their range."""
    bare, ours = targets.get("bare"), targets.get("ours")
    peers = [targets.get(p) for p in PEERS]
    return [
        name,
        _with_range(round_spread(_rps_ratio, ours, bare), 3),
        *(_peer_cell(peer, round_spread(_rps_ratio, ours, peer), 1) for peer in peers),
        *(_peer_cell(peer, round_spread(_cpu_ratio, peer, ours), 1) for peer in peers),
        _with_range(round_spread(_added(), ours, bare), 2),
        *(_peer_cell(peer, round_spread(_added(), peer, bare), 2) for peer in peers),
    ]


def _label(target: str, chat: dict[str, Any]) -> str:
    peer = chat.get(target)
    if target == "litellm" and peer:
        workers = peer.get("workers")
        return f"LiteLLM {peer['version']}" + (f", {workers} workers" if workers else "")
    if target == "portkey" and peer:
        return f"Portkey {peer['version']}"
    return LABELS[target]


def chat_tables(chat: dict[str, Any]) -> str:
    main_rows, ratio_rows, cpu_rows = [], [], []
    for name, targets in by_scenario(chat["rows"]).items():
        bare = targets.get("bare")
        # Our governed key's scenarios have our row only (older reports: "skipped" rows).
        governed = bare is None or any(row.get("skipped") for row in targets.values())
        for target in LABELS:
            row = targets.get(target)
            label = _label(target, chat)
            why = why_not(row)
            if governed and (row is None or row.get("skipped")):
                continue
            if why is not None or row is None:
                main_rows.append([name, label, why or "—", *["—"] * 10])
                continue
            main_rows.append(_main_row(name, label, target, row, bare))
            if target == "ours":
                cpu_rows.append(_cpu_row(name, row))
        if not governed:
            ratio_rows.append(_ratio_row(name, targets))
    rounds = chat.get("rounds", 1)
    repeats = (
        f"Each row is the median of {rounds} windows of {chat['duration_seconds']:g} s, with "
        "their range (min-max) in brackets; the targets take turns window by window (bare, "
        "ours, LiteLLM, Portkey, then the next round), so they share the same minutes. "
        f"Warm-up {chat['warmup_seconds']:g} s before a row's first window, "
        f"{chat.get('rewarm_seconds', chat['warmup_seconds']):g} s before the others. "
        "Added latencies and ratios are taken round by round, then their median and range."
        if rounds > 1
        else f"Warm-up {chat['warmup_seconds']} s, then {chat['duration_seconds']} s measured "
        "per row."
    )
    parts = [
        "## Chat and embeddings: bare upstream, ours, LiteLLM, Portkey",
        f"{repeats} Delayed upstream: {chat['delay_ms']:g} ms per response. Latencies in ms; "
        "CPU in ms per request (user + system, /proc); ours = gateway + auth + inference + "
        "embeddings + telemetry; LiteLLM = all its worker processes; RSS after the run (MB).",
        table(MAIN_HEADER, main_rows),
        "### Ratios, measured in the same run",
        table(RATIO_HEADER, ratio_rows),
        "### Our CPU per request, by process (ms)",
        table(["scenario", *OUR_SERVICES, "services", "Redis", "Postgres", "upstream"], cpu_rows),
        "### What a policy costs (issue 18)",
        "The same chat request with an API key under a policy (a budget, RPM and TPM limits, "
        "a model list: every check runs, every call is reserved and settled) and without.",
        table(POLICY_HEADER, _policy_rows(by_scenario(chat["rows"]))),
    ]
    return "\n\n".join(parts)


POLICY_HEADER = [
    "concurrency", "CPU without (ms)", "CPU with (ms)", "added CPU (ms)",
    "p50 without", "p50 with", "Redis CPU added (ms)",
]  # fmt: skip


def _policy_cost(
    scenarios: dict[str, dict[str, dict[str, Any]]], concurrency: str
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Our rows of chat at `concurrency` without and with a governed key."""
    plain = scenarios.get(f"chat {concurrency}", {}).get("ours")
    governed = scenarios.get(f"chat {concurrency}, governed key", {}).get("ours")
    return plain, governed


def _services_cpu_median(row: dict[str, Any] | None) -> float | None:
    """The median over the row's windows of its server CPU per request (as the main table)."""
    found = _window_spread(row, services_cpu)
    return None if found is None else found[0]


def _policy_rows(scenarios: dict[str, dict[str, dict[str, Any]]]) -> list[list[str]]:
    rows = []
    for concurrency in ("c=1", "c=50"):
        plain, governed = _policy_cost(scenarios, concurrency)
        if not plain or not governed:
            continue
        redis = [r["cpu_ms_per_request"].get("redis") for r in (plain, governed)]
        rows.append(
            [
                concurrency,
                fmt(_services_cpu_median(plain), 2),
                fmt(_services_cpu_median(governed), 2),
                fmt(_diff(_services_cpu_median(governed), _services_cpu_median(plain)), 2),
                fmt(_p50(plain), 2),
                fmt(_p50(governed), 2),
                fmt(_diff(redis[1], redis[0]), 2),
            ]
        )
    return rows


def rss_table(report: dict[str, Any]) -> str:
    idle = report["idle_rss_mb"]
    rows = [[name, fmt(mb, 0), status(mb <= RSS_TARGET_MB)] for name, mb in idle.items()]
    peers = report.get("idle_rss_mb_peers") or {}
    if report.get("idle_rss_mb_litellm") is not None:  # older reports
        peers = {"litellm": report["idle_rss_mb_litellm"]}
    for name, mb in peers.items():
        rows.append([f"{LABELS[name]} (for comparison)", fmt(mb, 0), "—"])
    return "\n\n".join(
        [
            "## Idle RSS of every service (before any load; the local model not loaded)",
            table(["process", "RSS MB", f"≤ {RSS_TARGET_MB} MB"], rows),
        ]
    )


def floor_table(floor: dict[str, Any]) -> str:
    cpu = floor["cpu_ms_per_request"]
    return "\n\n".join(
        [
            "## Transport floor (bench/floor.py: the same two hops with nothing but the transport)",
            table(
                ["requests (c=1)", "gateway hop", "inference hop", "together"],
                [
                    [
                        fmt(floor["requests"], 0),
                        fmt(cpu["gateway"], 2),
                        fmt(cpu["inference"], 2),
                        fmt(cpu["gateway+inference"], 2),
                    ]
                ],
            ),
        ]
    )


def replicas(tel: dict[str, Any]) -> str:
    count = int(tel.get("replicas", 1))
    return "1 telemetry process" if count == 1 else f"{count} telemetry processes"


def telemetry_tables(tel: dict[str, Any]) -> str:
    ingestion, steady, usage = tel["ingestion"], tel["steady"], tel["usage_query"]
    cpu = ingestion["cpu_us_per_event"]
    lag = steady["lag_seconds"]
    rows = [
        [
            f"ingestion (backlog → Postgres), {replicas(tel)}",
            f"{fmt(ingestion['events_per_second'], 0)} events/s",
            f"{fmt(ingestion['events'], 0)} events in {fmt(ingestion['seconds'], 2)} s; "
            "CPU µs/event: " + ", ".join(f"{k} {fmt(v, 0)}" for k, v in cpu.items()),
        ],
        [
            f"lag at {fmt(steady['rate'], 0)} events/s",
            f"p50 {fmt(lag['p50'], 3)} s",
            f"p99 {fmt(lag['p99'], 3)} s, max {fmt(lag['max'], 3)} s ({fmt(steady['events'], 0)} "
            "events)",
        ],
    ]
    query_rows = []
    for who in ("admin", "member"):
        data = usage[who]
        for phase in ("first", "cold", "warm", "warm_after_prewarm"):
            if phase in data:
                sec = data[phase]["seconds"]
                query_rows.append(
                    [
                        who,
                        phase.replace("_", " "),
                        fmt(sec["min"], 3),
                        fmt(sec["median"], 3),
                        fmt(data[phase]["requests"], 0),
                    ]
                )
    return "\n\n".join(
        [
            "## Telemetry (bench/telemetry.py: its own Postgres and Redis)",
            table(["measurement", "value", "detail"], rows),
            f"### 30-day usage query over {fmt(usage['rows'], 0)} calls "
            "(`GET /v1/usage?group_by=day`, seconds; rows generated in "
            f"{fmt(usage['generate_seconds'], 1)} s; pre-warm "
            f"{fmt(usage.get('prewarm_seconds'), 1)} s)",
            table(["who", "cache", "min", "median", "calls counted"], query_rows),
        ]
    )


def vectors_tables(vec: dict[str, Any]) -> str:
    ingest = vec["ingest"]
    rows = [
        [
            fmt(q["ef_search"], 0),
            fmt(q["p50_ms"], 2),
            fmt(q["p95_ms"], 2),
            fmt(q.get("p99_ms"), 2),
            fmt(q["recall_at_10"], 3),
        ]
        for q in vec["queries"]
    ]
    local = vec.get("local_model", {})
    return "\n\n".join(
        [
            f"## Vectors (bench/embeddings.py: {fmt(ingest['vectors'], 0)} x {vec['dimension']}, "
            "straight to the embeddings service)",
            table(
                ["measurement", "value"],
                [
                    [
                        "bulk ingest",
                        f"{fmt(ingest['vectors_per_second'], 0)} vectors/s "
                        f"({fmt(ingest['seconds'], 1)} s)",
                    ],
                    [
                        "HNSW index ready after the ingest",
                        f"{fmt(vec['index_ready_after_ingest_seconds'], 1)} s",
                    ],
                    [
                        "local all-MiniLM-L6-v2, at inference",
                        f"{fmt(local.get('inference_texts_per_second'), 0)} texts/s",
                    ],
                    [
                        "local all-MiniLM-L6-v2, through an upsert",
                        f"{fmt(local.get('upsert_texts_per_second'), 0)} texts/s",
                    ],
                ],
            ),
            "### Queries, one at a time (ms; recall@10 against exact search)",
            table(["ef_search", "p50", "p95", "p99", "recall@10"], rows),
            *vector_floor_table(vec),
        ]
    )


def vector_floor_table(vec: dict[str, Any]) -> list[str]:
    """What is under each query figure: the service's statement from a bare asyncpg client,
    and from a minimal ASGI app (bench/embeddings.py)."""
    floor = vec.get("floor")
    if not floor:
        return []
    service = {q["ef_search"]: q["p50_ms"] for q in vec["queries"]}
    rows = [
        [
            fmt(f["ef_search"], 0),
            fmt(f["postgres_alone_p50_ms"], 2),
            fmt(f["minimal_app_p50_ms"], 2),
            fmt(service.get(f["ef_search"]), 2),
        ]
        for f in floor
    ]
    return [
        "### The floor under those figures (p50 ms, same collection and queries)",
        table(
            ["ef_search", "Postgres alone (asyncpg)", "minimal ASGI app + asyncpg", "the service"],
            rows,
        ),
    ]


def _chat_targets(chat: dict[str, Any]) -> list[list[str]]:
    sc = by_scenario(chat["rows"])
    c50, c1, s1 = sc.get("chat c=50", {}), sc.get("chat c=1", {}), sc.get("stream c=1", {})
    ours50, bare50, peer50 = c50.get("ours"), c50.get("bare"), c50.get("litellm")
    vs_peer = round_spread(_rps_ratio, ours50, peer50)
    vs_bare = round_spread(_rps_ratio, ours50, bare50)
    added = round_spread(_added(), c1.get("ours"), c1.get("bare"))
    out = [
        [
            "chat c=50: ≥ 10x LiteLLM's req/s",
            f"LiteLLM {why_not(peer50)}" if why_not(peer50) else f"{_with_range(vs_peer, 1)}x",
            status(None if vs_peer is None else vs_peer[0] >= 10),
        ],
        [
            "chat c=50: ≥ 0.10x the bare upstream's req/s",
            f"{_with_range(vs_bare, 3)}x",
            status(None if vs_bare is None else vs_bare[0] >= 0.10),
        ],
        [
            "chat c=1: added p50 ≤ 3 ms",
            f"{_with_range(added, 2)} ms",
            status(None if added is None else added[0] <= 3),
        ],
    ]
    for name, scenario in (("c=1", c1), ("c=50", c50)):
        cpu = _services_cpu_median(scenario["ours"]) if scenario.get("ours") else None
        out.append(
            [
                f"chat {name}: ≤ 2 ms CPU per request, our services summed",
                f"{fmt(cpu, 2)} ms",
                status(None if cpu is None else cpu <= 2),
            ]
        )
    for concurrency in ("c=1", "c=50"):
        plain, governed = _policy_cost(sc, concurrency)
        if plain and governed:
            added_cpu = _diff(_services_cpu_median(governed), _services_cpu_median(plain))
            out.append(
                [
                    f"chat {concurrency}, governed key: policy checks add ≤ 0.2 ms CPU",
                    f"{fmt(added_cpu, 2)} ms",
                    status(None if added_cpu is None else added_cpu <= 0.2),
                ]
            )
    ttfb = round_spread(_added("first_byte_ms"), s1.get("ours"), s1.get("bare"))
    out.append(
        [
            "stream c=1: added time to first byte ≤ 3 ms",
            f"{_with_range(ttfb, 2)} ms",
            status(None if ttfb is None else ttfb[0] <= 3),
        ]
    )
    return out


def _telemetry_targets(tel: dict[str, Any]) -> list[list[str]]:
    rate = tel["ingestion"]["events_per_second"]
    usage = tel["usage_query"]
    admin = usage["admin"]
    warm = admin["warm"]["seconds"]["median"]
    cold = admin["first"]["seconds"]["median"]
    return [
        [
            "telemetry ingestion ≥ 20,000 events/s",
            f"{fmt(rate, 0)} events/s ({replicas(tel)})",
            status(rate >= 20_000),
        ],
        [
            f"30-day usage query over {fmt(usage['rows'], 0)} calls < 1 s",
            f"warm {fmt(warm, 3)} s (median), cold {fmt(cold, 3)} s (first query)",
            status(warm < 1) + ("" if cold < 1 else " warm; cold missed"),
        ],
    ]


def _vector_targets(vec: dict[str, Any]) -> list[list[str]]:
    rate = vec["ingest"]["vectors_per_second"]
    out = [["vectors ingest ≥ 5,000/s", f"{fmt(rate, 0)} vectors/s", status(rate >= 5000)]]
    good = [q for q in vec["queries"] if q["recall_at_10"] >= 0.95]
    if not good:
        out.append(
            [
                "vectors query p50 ≤ 5 ms at recall@10 ≥ 0.95",
                "no ef_search reached recall 0.95",
                status(False),
            ]
        )
        return out
    best = min(good, key=lambda q: q["p50_ms"])
    out.append(
        [
            "vectors query p50 ≤ 5 ms at recall@10 ≥ 0.95",
            f"p50 {fmt(best['p50_ms'], 2)} ms at recall {fmt(best['recall_at_10'], 3)}"
            f" (ef_search {best['ef_search']})",
            status(best["p50_ms"] <= 5),
        ]
    )
    return out


def _rss_target(idle: dict[str, float]) -> list[str]:
    worst = max(idle, key=idle.__getitem__)
    return [
        f"every service ≤ {RSS_TARGET_MB} MB RSS idle",
        f"largest: {worst} {fmt(idle[worst], 0)} MB",
        status(all(mb <= RSS_TARGET_MB for mb in idle.values())),
    ]


def targets(report: dict[str, Any]) -> list[list[str]]:
    """Each target of issue 8: what was measured, met or missed."""
    out: list[list[str]] = []
    if report.get("chat"):
        out += _chat_targets(report["chat"])
    if report.get("telemetry"):
        out += _telemetry_targets(report["telemetry"])
    if report.get("vectors"):
        out += _vector_targets(report["vectors"])
    if report.get("idle_rss_mb"):
        out.append(_rss_target(report["idle_rss_mb"]))
    if report.get("semantic_cache"):
        out.append(_semantic_target(report["semantic_cache"]))
    return out


def _semantic_rows(sem: dict[str, Any], threshold: float) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for name in ("dev", "test", "all"):
        for f in sem["grid"][name]:
            if f["threshold"] == threshold:
                rows.append([
                    name, f"{threshold:.2f}", "yes" if f["guard"] else "no",
                    fmt(f["precision"], 3), fmt(f["recall"], 3),
                    "—" if f["false_hit_rate"] is None else f"{f['false_hit_rate']:.1%}",
                ])  # fmt: skip
    return rows


def semantic_tables(sem: dict[str, Any]) -> str:
    """The semantic cache at its recommended threshold (bench/results/semantic_cache.md has
    every threshold)."""
    threshold = sem.get("recommended_threshold")
    if threshold is None:
        return (
            "## Semantic cache (bench/semantic_cache.py)\n\n"
            "No threshold gives <= 1 % false hits with the guard: see semantic_cache.md."
        )
    return (
        f"## Semantic cache (bench/semantic_cache.py): the default threshold {threshold:.2f}\n\n"
        + table(
            ["pairs", "threshold", "guard", "precision", "recall", "false hits"],
            _semantic_rows(sem, threshold),
        )
    )


def _semantic_target(sem: dict[str, Any]) -> list[str]:
    threshold = sem.get("recommended_threshold")
    if threshold is None:
        return ["semantic cache: ≤ 1 % false hits at the default threshold", "none", "**missed**"]
    row = next(f for f in sem["grid"]["all"] if f["guard"] and f["threshold"] == threshold)
    return [
        "semantic cache: ≤ 1 % false hits at the default threshold",
        f"{row['false_hit_rate']:.1%} at {threshold:.2f} (recall {row['recall']:.3f})",
        "met",
    ]


def render(report: dict[str, Any]) -> str:
    start, end = report["machine_at_start"], report.get("machine_at_end", {})
    version = report.get("litellm_version") or "not installed (make bench-peers)"
    if report.get("litellm_version") and report.get("litellm_workers"):
        version += f" ({report['litellm_workers']} workers, one per core)"
    portkey = report.get("portkey_version") or "not installed (make bench-peers)"
    head = [
        f"# make bench, {report['when']}"
        + (" (--quick: smoke sizes)" if report.get("quick") else ""),
        f"Machine: {start['cpu']}, {start['nproc']} cores ({start['arch']}), "
        f"{start['memory_gb']} GB, Python {start['python']}. Load average (1, 5, 15 min) at "
        f"start {start['load_average']}, at end {end.get('load_average', '—')}. "
        f"Wall time {fmt(report.get('wall_seconds'), 0)} s. LiteLLM: {version}. "
        f"Portkey: {portkey}.",
    ]
    if report.get("plots"):
        head.append("Plots: " + ", ".join(f"`{path}`" for path in report["plots"]) + ".")
    parts = ["\n\n".join(head)]
    if report.get("chat"):
        parts.append(chat_tables(report["chat"]))
    if report.get("idle_rss_mb"):
        parts.append(rss_table(report))
    if report.get("floor"):
        parts.append(floor_table(report["floor"]))
    if report.get("telemetry"):
        parts.append(telemetry_tables(report["telemetry"]))
    if report.get("vectors"):
        parts.append(vectors_tables(report["vectors"]))
    if report.get("semantic_cache"):
        parts.append(semantic_tables(report["semantic_cache"]))
    parts.append("## Targets\n\n" + table(["target", "measured", "status"], targets(report)))
    if report.get("failures"):
        parts.append(
            "## Failures\n\n"
            + "\n".join(f"- {family}: {why}" for family, why in report["failures"].items())
        )
    return "\n\n".join(parts) + "\n"
