"""The soak's own arithmetic (bench/soak.py): growth after the warm-up, the slope, a table's
growth against its rows, and the mix's schedule. The soak itself is `make soak`."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
# Appended, never prepended: bench/ holds scripts named like the services' packages.
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))

import soak  # noqa: E402


def test_slope_is_least_squares() -> None:
    assert soak.slope([(0, 1.0), (1, 3.0), (2, 5.0)]) == pytest.approx(2.0)
    # Noise around a flat line: no slope.
    assert soak.slope([(0, 10.0), (1, 12.0), (2, 11.0), (3, 12.0), (4, 10.0)]) == 0.0
    assert soak.slope([(5, 1.0)]) == 0.0
    assert soak.slope([(5, 1.0), (5, 2.0)]) == 0.0


def test_growth_starts_at_the_end_of_the_warm_up() -> None:
    # Memory climbs while warming up (caches, the model), then stays flat.
    points = [(0.0, 50.0), (30.0, 90.0), (60.0, 100.0), (120.0, 101.0), (180.0, 100.0)]
    grown = soak.growth(points, warmup=60)
    assert grown["start"] == 100.0
    assert grown["end"] == 100.0
    assert grown["growth_pct"] == 0.0
    assert grown["max"] == 101.0
    assert abs(grown["slope_per_hour"]) < 1e-9


def test_growth_of_a_leak_shows_in_percent_and_slope() -> None:
    points = [(float(t), 100.0 + t / 60) for t in range(0, 601, 60)]  # +1 MB a minute
    grown = soak.growth(points, warmup=120)
    assert grown["start"] == pytest.approx(102.0)
    assert grown["end"] == pytest.approx(110.0)
    assert grown["growth_pct"] == pytest.approx(8 / 102 * 100)
    assert grown["slope_per_hour"] == pytest.approx(60.0)
    assert grown["slope_pct_per_hour"] == pytest.approx(60 / 102 * 100)


def test_growth_with_no_sample_after_the_warm_up_takes_the_last() -> None:
    grown = soak.growth([(0.0, 5.0), (10.0, 7.0)], warmup=60)
    assert (grown["start"], grown["end"], grown["growth_pct"]) == (7.0, 7.0, 0.0)
    assert soak.growth([(0.0, 0.0), (10.0, 3.0)], warmup=0)["growth_pct"] == 0.0  # from zero


def test_table_growth_explained_by_its_rows() -> None:
    grown = soak.table_growth(
        {"bytes": 10_000_000, "rows": 10_000, "dead": 0},
        {"bytes": 20_500_000, "rows": 20_000, "dead": 12},
    )
    assert grown["new_rows"] == 10_000
    assert grown["new_bytes"] == 10_500_000
    assert grown["bytes_per_new_row"] == 1050
    assert grown["dead_end"] == 12
    assert grown["unexplained"] is False  # 0.5 MB beyond 1,000 bytes a row: within bounds


def test_table_growth_without_rows_is_unexplained() -> None:
    # Updates that never free their dead rows: bytes grow, rows do not.
    grown = soak.table_growth(
        {"bytes": 2_000_000, "rows": 100, "dead": 0},
        {"bytes": 9_000_000, "rows": 100, "dead": 50_000},
    )
    assert grown["new_rows"] == 0
    assert grown["unexplained_bytes"] == 7_000_000
    assert grown["unexplained"] is True
    # A small table's wobble (pages allocated ahead, a vacuum's free space) is not flagged.
    small = soak.table_growth({"bytes": 16_384, "rows": 3}, {"bytes": 65_536, "rows": 3})
    assert small["unexplained"] is False


def test_table_growth_from_empty() -> None:
    filled = soak.table_growth({"bytes": 8192, "rows": 0}, {"bytes": 50_000_000, "rows": 9000})
    assert filled["unexplained"] is False
    assert filled["bytes_per_new_row"] == pytest.approx((50_000_000 - 8192) / 9000)
    bloated = soak.table_growth({"bytes": 8192, "rows": 0}, {"bytes": 5_000_000, "rows": 0})
    assert bloated["unexplained"] is True


def test_an_index_built_after_the_warm_up_is_data_but_its_table_is_still_judged() -> None:
    before = {"bytes": 8_000_000, "table_bytes": 7_000_000, "index_bytes": 1_000_000,
              "indexes": 1, "rows": 1000}  # fmt: skip
    after = {"bytes": 60_000_000, "table_bytes": 28_000_000, "index_bytes": 32_000_000,
             "indexes": 2, "rows": 4000}  # fmt: skip
    built = soak.table_growth(before, after)
    assert built["indexes_built"] == 1
    assert built["unexplained"] is False  # the table grew with its rows: 7,000 bytes each
    # The same index growth with no index built: unexplained.
    assert soak.table_growth(before, {**after, "indexes": 1})["unexplained"] is True
    # A table part that outgrows its rows is flagged whatever the indexes do.
    bloated = soak.table_growth(before, {**after, "table_bytes": 60_000_000})
    assert bloated["unexplained"] is True


def sample(t: float, *, gateway: float, stream: int, rows: int, chats: int) -> dict[str, object]:
    return {
        "t": t,
        "rss_mb": {"gateway": gateway, "redis": 5.0},
        "cpu_seconds": {"gateway": t / 2},
        "redis": {"used_memory": 1_000_000, "keys": 40, "stream_length": stream,
                  "stream_pending": 0, "stream_lag": 0},
        "redis_keys": {"session": 3},
        "postgres_connections": 20,
        "tables": {"telemetry.llm_call_p1": {"bytes": rows * 500, "rows": rows, "dead": 0}},
        "made": {"chat": chats, "upsert": 2, "documents created": 8},
    }  # fmt: skip


def test_analyse_reports_each_series_after_the_warm_up() -> None:
    samples = [
        sample(0, gateway=80, stream=0, rows=0, chats=0),
        sample(60, gateway=100, stream=4, rows=600, chats=600),
        sample(120, gateway=104, stream=9, rows=1200, chats=1200),
        sample(180, gateway=112, stream=2, rows=1800, chats=1800),
    ]
    analysis = soak.analyse(samples, warmup=60)
    assert analysis["rss_mb"]["gateway"]["growth_pct"] == pytest.approx(12.0)
    assert analysis["targets"]["rss_over_10_pct"] == ["gateway"]  # redis is no service
    assert analysis["targets"]["stream_max_length_after_warmup"] == 9
    assert analysis["targets"]["unexplained_tables"] == []
    assert analysis["tables"]["telemetry.llm_call_p1"]["new_rows"] == 1200
    assert analysis["made_after_warmup"] == {"chat": 1200, "upsert": 0, "documents created": 0}
    assert analysis["model_calls_after_warmup"] == 1200
    assert analysis["cores_after_warmup"] == {"gateway": 0.5}


def test_schedule_holds_each_kind_as_often_as_its_weight() -> None:
    cycle = soak.schedule(soak.MIX)
    assert Counter(cycle) == Counter(soak.MIX)
    assert cycle == soak.schedule(soak.MIX)  # the same order every run
    assert len(cycle) == sum(soak.MIX.values()) == 20  # --rate 20: the weights per second
