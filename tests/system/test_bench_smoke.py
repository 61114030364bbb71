"""The benchmark still runs: `bench/run --smoke`, tiny counts, no figure is judged.

Only that every section ran to its end and measured something; how fast is for `bench/run`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import PG_ADMIN_URL, REDIS_URL, ROOT, service_missing

BENCH_REDIS = REDIS_URL.rsplit("/", 1)[0] + "/14"  # the bench flushes its database


def run_smoke(out: Path, *extra: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONHOOK_")}
    env |= {"CARBONHOOK_BENCH_PG": PG_ADMIN_URL, "CARBONHOOK_BENCH_REDIS": BENCH_REDIS}
    env["PYTHON"] = sys.executable  # the interpreter running the tests, with every dependency
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "run"), "--smoke", "--out", str(out), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (out / "RESULTS.md").read_text().startswith("# carbonhook benchmark results")
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


def assert_intake_measured(results: dict[str, Any], variants: set[str]) -> None:
    intake = results["intake"]
    assert variants <= set(intake), sorted(intake)
    for name in variants:
        assert intake[name], name
        assert all(run["requests"] > 0 and run["errors"] == 0 for run in intake[name]), name


def test_the_smoke_benchmark_runs_on_sqlite(tmp_path: Path):
    results = run_smoke(tmp_path / "out")
    assert_intake_measured(
        results, {"ceiling", "sqlite new", "sqlite duplicate", "sqlite stored new"}
    )
    assert results["listing"]["stored"] == 2000
    assert results["listing"]["admin API"]["runs"] > 0
    assert any("receiver" in name for name in results["memory"])
    assert results["skipped"]  # processing and replay need PostgreSQL + Redis


def test_the_smoke_benchmark_runs_on_postgres_and_redis(tmp_path: Path):
    import psycopg
    import redis

    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
        redis.Redis.from_url(BENCH_REDIS, socket_timeout=3).ping()
    except (psycopg.OperationalError, redis.RedisError) as exc:
        service_missing("PostgreSQL and Redis", exc)
    results = run_smoke(tmp_path / "out", "--backends", "postgres")
    assert_intake_measured(
        results, {"ceiling", "postgres new", "postgres duplicate", "postgres stored new"}
    )
    (processing,) = results["processing"]
    assert processing["events_in_window"] > 0
    assert processing["events_per_s"] > 0
    assert processing["calls_per_event"] == pytest.approx(2, abs=0.1)
    replay = results["replay"]
    assert replay["total_s"] is not None, replay  # every replayed event was processed
    assert replay["replays recorded"] == replay["events"] == results["listing"]["failed stored"]
    # The meter saw every group. Each figure is whole clock ticks (10 ms) of processes sampled
    # every 0.5 s: the smoke's few events can cost a group less than a tick (PostgreSQL read
    # 0.0 once), so only the sum must show work.
    cpu = replay["cpu_s"]
    assert set(cpu) == {"workers", "the replay command", "PostgreSQL", "Redis", "emulator"}
    assert all(seconds >= 0 for seconds in cpu.values()) and sum(cpu.values()) > 0, cpu
    assert not results["skipped"]


def test_the_processing_rate_does_not_round_down_to_whole_waves():
    from bench.harness import completion_rate

    # 8 threads finishing together every 216 ms: 296 events in an 8 s window that ends just
    # before a wave. The plain count says 37.0/s; the events come at 8 / 0.216 = 37.04/s.
    period = 0.216
    finished = [k * period + j / 1000 for k in range(1, 38) for j in range(8)]
    assert completion_rate(finished, len(finished), 8.0) == pytest.approx(8 / period, rel=0.002)
    # Staggered threads (waves drifted apart): the same rate.
    staggered = sorted(k * period + j * period / 8 for k in range(37) for j in range(8))
    assert completion_rate(staggered, len(staggered), 8.0) == pytest.approx(8 / period, rel=0.002)
    # Too few distinct times for a slope: the plain count.
    assert completion_rate([1.0, 1.0, 2.0], 3, 2.0) == 1.5
