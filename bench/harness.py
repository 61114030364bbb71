"""bench/run: intake, processing, scale and memory of carbonhook, measured in one run.

Every figure that is compared with another is measured close in time to it: the ceiling and
each intake variant take turns, round after round, on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import deliveries, report
from bench.load import LoadResult, run_load, wrk_path, wrk_version
from bench.processes import ROOT, CpuMeter, Process, clean_env, free_port, pids_named
from bench.profiles import start_recording, summarize
from bench.stores import Broker, Events, PostgresDatabases, sqlite_database
from receiver.signature import sign

SECRET = "bench-webhook-secret-91c4"
ADMIN_TOKEN = "bench-admin-token"
CP_KEY, IMPACT_KEY = "cp_live_sandbox", "test_sandbox"
RULES = Path(__file__).with_name("rules.toml")
CALLS_PER_EVENT = 2
SECTIONS = ("intake", "listing", "processing", "replay")


def completion_rate(finished: list[float], counted: int, window_s: float) -> float:
    """Events per second in a window: the least-squares slope of the running count over the
    finish times. Threads that started together finish in waves (one event per thread), so
    `counted / window_s` rounds down by up to a wave at the window's end (2.7% at 8 threads and
    37 waves); the slope does not. Too few distinct times for a slope: the plain count."""
    if len(set(finished)) < 3:
        return counted / window_s
    return statistics.linear_regression(finished, range(len(finished))).slope


@dataclass
class Config:
    smoke: bool
    out: Path
    report: Path
    backends: tuple[str, ...]
    loadgen: str
    seconds: float
    rounds: int
    warmup_s: float
    connections: int = 32
    stored: int = 1_000_000
    latency_ms: float = 100.0
    worker_threads: int = 8
    worker_processes: tuple[int, ...] = (1, 2)
    process_window_s: float = 8.0
    replay_timeout_s: float = 300.0
    replay_processes: int | None = None  # default: the most of `worker_processes`
    listing_runs: int = 20
    cli_runs: int = 5
    profile: bool = False
    sections: frozenset[str] = frozenset(SECTIONS)
    against: Path | None = None
    command: str = ""


@dataclass
class Run:
    """Everything measured, in the shape report.py renders."""

    config: dict[str, Any]
    machine: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    intake: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    listing: dict[str, Any] = field(default_factory=dict)
    processing: list[dict[str, Any]] = field(default_factory=list)
    replay: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    profiles: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


class Bench:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.out = config.out
        self.run = Run(config={k: str(v) for k, v in asdict(config).items()})
        self.processes: list[Process] = []
        self.pg = PostgresDatabases()
        self.broker = Broker()
        self.generator = config.loadgen
        self._file_serial = 0
        self.emulator_process: Process | None = None

    # -- processes -------------------------------------------------------------------------

    def start(
        self, name: str, args: list[str], env: dict[str, str], root: Path | None = None
    ) -> Process:
        process = Process(name, args, env, self.out / f"{name}.log", root=root or ROOT)
        self.processes.append(process)
        return process

    def stop(self, process: Process) -> None:
        process.stop()
        self.processes.remove(process)

    def service_env(self, database_url: str, broker_url: str) -> dict[str, str]:
        return {
            "CARBONHOOK_DATABASE_URL": database_url,
            "CARBONHOOK_BROKER_URL": broker_url,
            "CARBONHOOK_WEBHOOK_SECRETS": SECRET,
            "CARBONHOOK_CARBONPASS_API_KEY": CP_KEY,
            "CARBONHOOK_IMPACT_API_KEY": IMPACT_KEY,
            "CARBONHOOK_CARBONPASS_API_URL": f"{self.emulator_url}/api/v1",
            "CARBONHOOK_IMPACT_API_URL": self.emulator_url,
            "CARBONHOOK_RULES_FILE": str(RULES),
            "CARBONHOOK_ADMIN_TOKEN": ADMIN_TOKEN,
            # Nothing is lost in a benchmark: keep the sweeper out of the measurements.
            "CARBONHOOK_SWEEP_INTERVAL_S": "3600",
            # Throughput is measured, not the APIs' rate limits (5 a second by default): set
            # far above what the emulator is asked, the budgets are spent but never waited on.
            "CARBONHOOK_CARBONPASS_RATE": "10000",
            "CARBONHOOK_IMPACT_RATE": "10000",
        }

    def start_receiver(
        self, name: str, database_url: str, broker_url: str, root: Path | None = None
    ) -> tuple[Process, str]:
        port = free_port()
        process = self.start(
            name,
            ["-m", "carbonhook", "serve", "--port", str(port)],
            self.service_env(database_url, broker_url),
            root=root,
        )
        return process, f"http://127.0.0.1:{port}"

    def start_worker(self, name: str, database_url: str, processes: int) -> Process:
        args = ["-m", "carbonhook", "worker", "--processes", str(processes)]
        args += ["--threads", str(self.config.worker_threads)]
        worker = self.start(name, args, self.service_env(database_url, self.broker.url))
        worker.wait_output("worker started", count=processes, timeout=60)
        return worker

    def emulator(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        answer = httpx.post(f"{self.emulator_url}/_emulator/{path}", json=payload or {}, timeout=10)
        answer.raise_for_status()
        return answer.json() if answer.content else None

    def emulator_calls(self) -> int:
        return len(httpx.get(f"{self.emulator_url}/_emulator/calls", timeout=30).json())

    # -- the run ---------------------------------------------------------------------------

    def main(self) -> Run:
        started = time.monotonic()
        self.preflight()
        self.describe()
        self.emulator_url = f"http://127.0.0.1:{free_port()}"
        port = self.emulator_url.rsplit(":", 1)[1]
        emulator = self.start("emulator", ["-m", "carbonhook", "emulate", "--port", port], {})
        emulator.wait_http(f"{self.emulator_url}/_emulator/calls")
        self.emulator_process = emulator
        sections = self.config.sections
        try:
            if sections & {"intake", "listing", "replay"}:
                self.prepare_stored()
            if "intake" in sections:
                self.intake()
            if "listing" in sections:
                self.listing()
            if "postgres" in self.config.backends:
                if "processing" in sections:
                    self.processing()
                if "replay" in sections:
                    self.bulk_replay()
            elif sections & {"processing", "replay"}:
                self.run.skipped.append(
                    "processing and bulk replay: they need PostgreSQL + Redis "
                    "(run with --backends sqlite,postgres)"
                )
        finally:
            for process in reversed(list(self.processes)):
                self.stop(process)
            if self.pg.created:
                self.pg.drop_all()
            if "postgres" in self.config.backends:
                self.broker.flush()
        self.run.timings["total_s"] = time.monotonic() - started
        return self.run

    def preflight(self) -> None:
        if self.generator == "auto":
            self.generator = "wrk" if wrk_path() else "python"
        if self.generator == "wrk" and not wrk_path():
            raise SystemExit(
                "bench: wrk is not installed: apt-get install wrk (or --loadgen python)"
            )
        if self.generator == "python":
            self.run.checks.append(
                "load generator: the Python fallback (wrk missing); it shares the CPU with the "
                "receiver and may bound the ceiling: install wrk for real figures"
            )
        if "postgres" in self.config.backends:
            for what, why in (
                ("PostgreSQL", self.pg.available()),
                ("Redis", self.broker.available()),
            ):
                if why is not None:
                    raise SystemExit(f"bench: {what} is not reachable: {why}")

    def describe(self) -> None:
        import dramatiq
        import sqlalchemy
        import starlette
        import uvicorn

        meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        self.run.machine = {
            "nproc": str(os.cpu_count()),
            "memory": f"{int(meminfo[1]) / 1024 / 1024:.1f} GiB",
            "cpu": cpu,
            "kernel": platform.release(),
            "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        }
        self.run.versions = {
            "python": platform.python_version(),
            "uvicorn": uvicorn.__version__,
            "starlette": starlette.__version__,
            "sqlalchemy": sqlalchemy.__version__,
            "dramatiq": dramatiq.__version__,
            "wrk": wrk_version(),
            "load generator": self.generator,
        }
        for name in ("uvloop", "httptools", "asyncpg", "aiosqlite", "psycopg", "redis"):
            try:
                module = __import__(name)
                self.run.versions[name] = str(getattr(module, "__version__", "?"))
            except ImportError:
                self.run.versions[name] = "not installed"
        if "postgres" in self.config.backends:
            self.run.versions["postgresql server"] = self.pg.version()
            self.run.versions["redis server"] = self.broker.version()

    # -- intake ----------------------------------------------------------------------------

    def new_file(self, tag: str, count: int) -> Path:
        self._file_serial += 1
        path = self.out / f"requests-{self._file_serial}.txt"
        return deliveries.write_new(
            path, count, tag=f"{tag}{self._file_serial}", secret=SECRET.encode()
        )

    def prepare_stored(self) -> None:
        """The database with `stored` past events, for the scale figures."""
        pg = "postgres" in self.config.backends
        started = time.monotonic()
        self.big_url = self.pg.create("stored") if pg else sqlite_database(self.out / "stored.db")
        stored = Events(self.big_url)
        stored.seed(self.config.stored)
        self.run.timings["seed_s"] = time.monotonic() - started
        self.run.listing |= {
            "stored": stored.count(),
            "failed stored": stored.count(["failed"]),
            "backend": "postgres" if pg else "sqlite",
        }
        stored.close()

    def intake(self) -> None:
        """The ceiling and every receiver variant, taking turns round after round."""
        config = self.config
        pg = "postgres" in config.backends
        port = free_port()
        ceiling = self.start(
            "ceiling", ["-m", "bench.ceiling", "--port", str(port), "--secret", SECRET], {}
        )
        targets = {"ceiling": Target(ceiling, f"http://127.0.0.1:{port}", None)}
        # SQLite runs as the single-node deployment does, with the in-process broker; PostgreSQL
        # with Redis, as in production. Both hand every new event to the broker.
        plan: list[tuple[str, str, str, Path | None]] = []
        if "sqlite" in config.backends:
            plan.append(("sqlite", sqlite_database(self.out / "intake.db"), "memory://", None))
        if pg:
            self.broker.flush()
            plan.append(("postgres", self.pg.create("intake"), self.broker.url, None))
        stored_name = "postgres stored" if pg else "sqlite stored"
        plan.append((stored_name, self.big_url, self.broker.url if pg else "memory://", None))
        if config.against is not None:
            tree = config.against.name
            if "sqlite" in config.backends:
                against_db = sqlite_database(self.out / "against.db")
                plan.append((f"sqlite [{tree}]", against_db, "memory://", config.against))
            if pg:
                plan.append(
                    (
                        f"postgres [{tree}]",
                        self.pg.create("against"),
                        self.broker.url,
                        config.against,
                    )
                )
        for name, database, broker_url, root in plan:
            process, url = self.start_receiver(
                "receiver-" + name.replace(" ", "-").replace("[", "").replace("]", ""),
                database,
                broker_url,
                root=root,
            )
            targets[name] = Target(
                process, url, Events(database), redis=broker_url.startswith("redis")
            )
        for name, target in targets.items():
            target.process.wait_http(target.url if name == "ceiling" else f"{target.url}/healthz")

        variants: list[tuple[str, str, bool]] = []
        for name in targets:
            if name == "ceiling":
                continue
            variants.append((f"{_kind(name)} new{_suffix(name)}", name, False))
            if "stored" not in name:
                variants.append((f"{_kind(name)} duplicate{_suffix(name)}", name, True))
                path, body = deliveries.write_duplicate(
                    self.out / f"duplicate-{len(variants)}.txt",
                    tag=f"dup{len(variants)}",
                    secret=SECRET.encode(),
                )
                self.post(targets[name].url, [body])
                targets[name].duplicate = path
        per_run = max(2000, int(12_000 * config.seconds))
        ceiling_file = self.new_file("ceil", per_run)

        def measure(label: str, name: str, duplicate: bool, seconds: float) -> LoadResult:
            target = targets[name]
            url = target.url + "/webhooks/carbonpass"
            if target.events is None:
                return self.load(url, ceiling_file, shared=False, seconds=seconds)
            before = target.events.count()
            handed_before = self.broker.messages() if target.redis else 0
            if duplicate:
                assert target.duplicate is not None
                result = self.load(url, target.duplicate, shared=True, seconds=seconds)
                if target.events.count() != before:
                    self.run.checks.append(f"{label}: duplicates stored new rows")
                return result
            result = self.load(url, self.new_file("n", per_run), shared=False, seconds=seconds)
            stored_rows = target.events.count() - before
            # With the in-process broker (SQLite) the hand-off cannot be seen from here.
            lag = self.broker.wait_handed(handed_before + stored_rows) if target.redis else 0.0
            if result.wrapped:
                self.run.checks.append(f"{label}: ran out of distinct bodies ({result.wrapped}x)")
            # Requests still in flight when the generator stops are stored but not counted.
            if not 0 <= stored_rows - result.requests <= config.connections:
                self.run.checks.append(
                    f"{label}: {result.requests} answered, {stored_rows} rows stored"
                )
            if lag > 1:
                self.run.checks.append(
                    f"{label}: the broker hand-off was {lag:.1f} s behind when the run ended"
                )
            return result

        if config.warmup_s:
            for name in targets:
                measure(f"warm-up {name}", name, False, config.warmup_s)
        intake: dict[str, list[dict[str, Any]]] = {"ceiling": []}
        intake |= {label: [] for label, _, _ in variants}
        intake["ceiling"].append(
            asdict_result(measure("ceiling", "ceiling", False, config.seconds))
        )
        for round_no in range(config.rounds):
            # Rotate the order so no variant always follows the same one.
            shift = round_no % len(variants)
            for label, name, duplicate in variants[shift:] + variants[:shift]:
                result = measure(label, name, duplicate, config.seconds)
                intake[label].append(asdict_result(result) | {"round": round_no})
                time.sleep(0.3)
            intake["ceiling"].append(
                asdict_result(measure("ceiling", "ceiling", False, config.seconds))
            )
        self.run.intake = intake
        if config.profile:
            self.profile_intake(targets, variants, measure)
        for name, target in targets.items():
            kind = "bare Starlette" if name == "ceiling" else "receiver"
            self.run.memory[f"{name} ({kind}), intake"] = max(
                target.process.peak_rss_mib().values()
            )
            self.stop(target.process)
            if target.events is not None:
                target.events.close()

    def load(self, url: str, requests: Path, *, shared: bool, seconds: float) -> LoadResult:
        return run_load(
            self.generator,
            url,
            requests,
            shared=shared,
            connections=self.config.connections,
            seconds=seconds,
        )

    def post(self, base: str, bodies: list[bytes], concurrency: int = 16) -> None:
        """Deliver each body once through the receiver; each must be accepted."""

        async def send_all() -> None:
            queue = list(bodies)
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:

                async def sender() -> None:
                    while queue:
                        body = queue.pop()
                        signature = sign(body, secret=SECRET.encode())
                        answer = await client.post(
                            "/webhooks/carbonpass",
                            content=body,
                            headers={"X-CarbonPass-Signature": signature},
                        )
                        if answer.status_code != 202:
                            raise RuntimeError(
                                f"delivery refused: {answer.status_code} {answer.text}"
                            )

                await asyncio.gather(*(sender() for _ in range(concurrency)))

        asyncio.run(send_all())

    def profile_intake(
        self,
        targets: dict[str, Target],
        variants: list[tuple[str, str, bool]],
        measure: Callable[[str, str, bool, float], LoadResult],
    ) -> None:
        """One extra, unmeasured run per variant under py-spy (sampling costs CPU here)."""
        for label, name, duplicate in [("ceiling", "ceiling", False), *variants]:
            raw = self.out / f"profile-{label.replace(' ', '-')}.txt"
            spy = start_recording(targets[name].process.pid, self.config.seconds, raw)
            measure(f"profiled {label}", name, duplicate, self.config.seconds)
            spy.wait(60)
            if raw.exists():
                summary_path = raw.with_name(raw.stem + "-summary.txt")
                summary_path.write_text(summarize(raw))
                self.run.profiles[label] = str(summary_path)

    # -- scale: listing --------------------------------------------------------------------

    def listing(self) -> None:
        """Failed events among the stored ones: the query, the admin API, the CLI."""
        from carbonhook.database import create_sync_engine
        from carbonhook.event_queries import EventFilter
        from carbonhook.store import EventStore

        config = self.config
        database_url = self.big_url
        receiver, base = self.start_receiver("receiver-listing", database_url, "memory://")
        receiver.wait_http(f"{base}/healthz")
        store = EventStore(create_sync_engine(database_url, pool_size=1))
        failed = EventFilter(status="failed")
        store.list_events(failed, limit=50)
        query = timed(lambda: store.list_events(failed, limit=50), config.listing_runs)
        store.engine.dispose()
        with httpx.Client(base_url=base, timeout=30) as client:
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

            def api() -> None:
                answer = client.get("/admin/api/events?status=failed&limit=50", headers=headers)
                answer.raise_for_status()
                if len(answer.json()["events"]) != min(50, self.run.listing["failed stored"]):
                    self.run.checks.append("admin API listing: wrong number of events")

            api()
            api_times = timed(api, config.listing_runs)
        self.stop(receiver)
        env = self.service_env(database_url, "memory://")
        cli_times = timed(
            lambda: self.cli(["events", "list", "--status", "failed"], env), config.cli_runs
        )
        start_up = timed(lambda: self.cli(["events", "list", "--help"], env), config.cli_runs)
        self.run.listing |= {
            "query": summary(query),
            "admin API": summary(api_times),
            "CLI": summary(cli_times),
            "CLI start-up (--help)": summary(start_up),
        }

    def cli(self, args: list[str], env: dict[str, str]) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "carbonhook", *args],
            env=clean_env(env),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"carbonhook {' '.join(args)} failed:\n{done.stderr}")

    # -- processing ------------------------------------------------------------------------

    def processing(self) -> None:
        """Events processed per second against the emulator with `latency_ms` per call."""
        config = self.config
        database = self.pg.create("processing")
        events = Events(database)
        receiver, base = self.start_receiver("receiver-processing", database, self.broker.url)
        receiver.wait_http(f"{base}/healthz")
        latency_s = config.latency_ms / 1000
        for processes in config.worker_processes:
            threads = processes * config.worker_threads
            nominal = threads / (CALLS_PER_EVENT * latency_s)
            wanted = int(nominal * (config.process_window_s + 4) * 1.3) + threads
            events.settle_in_flight()
            self.broker.flush()
            self.emulator("reset")
            self.emulator("latency", {"ms": config.latency_ms})
            now = time.time()
            bodies = [
                deliveries.delivery(f"crp_proc{processes}_{n}", _utc(now)) for n in range(wanted)
            ]
            self.post(base, bodies)
            self.broker.wait_handed(len(bodies))
            done_before = events.count(["succeeded"])
            worker = self.start_worker(f"worker-{processes}p", database, processes)
            # Warm: let one wave per thread finish, then count over a fixed window.
            deadline = time.monotonic() + 60
            while events.count(["succeeded"]) - done_before < threads:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker made no progress:\n{worker.output()[-3000:]}")
                time.sleep(0.02)
            t0, w0, c0 = time.monotonic(), time.time(), events.count(["succeeded"])
            time.sleep(config.process_window_s)
            t1, w1, c1 = time.monotonic(), time.time(), events.count(["succeeded"])
            finished = events.finish_times(f"crp_proc{processes}_", w0, w1)
            rate = completion_rate(finished, c1 - c0, t1 - t0)
            # The rule makes two calls per event (GET /crp/{id}, POST /v1/capture_carbon).
            bound = threads / (CALLS_PER_EVENT * latency_s)
            if c1 - done_before >= wanted:
                self.run.checks.append(f"processing {processes}p: ran out of events in the window")
            peaks = worker.peak_rss_mib()
            label = (
                f"worker, {processes} process(es) x {config.worker_threads} threads, "
                f"{config.latency_ms:g} ms latency (per process)"
            )
            self.run.memory[label] = max(
                peak for pid, peak in peaks.items() if pid != worker.pid or processes == 1
            )
            self.stop(worker)
            processed = events.count(["succeeded"]) - done_before
            per_event = self.emulator_calls() / processed if processed else 0.0
            if abs(per_event - CALLS_PER_EVENT) > 0.1:
                self.run.checks.append(
                    f"processing {processes}p: {per_event:.2f} API calls per event, "
                    f"not {CALLS_PER_EVENT}"
                )
            self.run.processing.append(
                {
                    "processes": processes,
                    "threads": config.worker_threads,
                    "events_per_s": rate,
                    "calls_per_event": per_event,
                    "bound_per_s": bound,
                    "ratio": rate / bound,
                    "window_s": t1 - t0,
                    "events_in_window": c1 - c0,
                }
            )
        self.stop(receiver)
        events.close()

    # -- scale: bulk replay ----------------------------------------------------------------

    def bulk_replay(self) -> None:
        """`carbonhook events replay --status failed`, timed until every replayed event is done."""
        config = self.config
        events = Events(self.big_url)
        events.settle_in_flight()
        self.broker.flush()
        self.emulator("reset")
        failed = events.count(["failed"])
        processes = config.replay_processes or max(config.worker_processes)
        worker = self.start_worker("worker-replay", self.big_url, processes)
        spy = None
        if config.profile:
            raw = self.out / "profile-workers-replay.txt"
            spy = start_recording(worker.pid, 30, raw)
        env = self.service_env(self.big_url, self.broker.url)
        command_pids: list[int] = []
        meter = CpuMeter(
            {
                "workers": worker.pids,
                "the replay command": lambda: command_pids,
                "PostgreSQL": lambda: pids_named("postgres"),
                "Redis": lambda: pids_named("redis-server"),
                "emulator": self.emulator_process.pids if self.emulator_process else list,
            }
        )
        started = time.monotonic()
        command = subprocess.Popen(
            [sys.executable, "-m", "carbonhook", "events", "replay", "--status", "failed"],
            env=clean_env(env),
            cwd=ROOT,
            stdout=(self.out / "replay-command.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        command_pids.append(command.pid)
        command_s = None
        finished = None
        sampled = 0.0
        while time.monotonic() - started < config.replay_timeout_s:
            if time.monotonic() - sampled > 0.5:  # a backend that ends keeps its last sample
                meter.sample()
                sampled = time.monotonic()
            if command_s is None and command.poll() is not None:
                command_s = time.monotonic() - started
                if command.returncode != 0:
                    raise RuntimeError("events replay failed: see replay-command.log")
            if command_s is not None and not events.count(["pending", "queued", "processing"]):
                finished = time.monotonic() - started
                break
            time.sleep(0.1)
        meter.sample()
        if command_s is None:
            command.kill()
            command.wait()
        self.run.replay = {
            "events": failed,
            "processes": processes,
            "threads": config.worker_threads,
            "command_s": command_s,
            "total_s": finished,
            "timeout_s": config.replay_timeout_s,
            "after": events.by_status(),
            "replays recorded": events.scalar("SELECT count(*) FROM replays"),
            "cpu_s": meter.seconds(),
        }
        peaks = worker.peak_rss_mib()
        self.run.memory[
            f"worker, {processes} process(es) x {config.worker_threads} threads, bulk replay (per process)"
        ] = max(peak for pid, peak in peaks.items() if pid != worker.pid or processes == 1)
        if spy is not None:
            spy.wait(60)
            raw = self.out / "profile-workers-replay.txt"
            if raw.exists():
                summary_path = self.out / "profile-workers-replay-summary.txt"
                summary_path.write_text(summarize(raw))
                self.run.profiles["workers during bulk replay"] = str(summary_path)
        self.stop(worker)
        events.close()


@dataclass
class Target:
    """A server under load; `events` watches its database (None for the ceiling)."""

    process: Process
    url: str
    events: Events | None
    duplicate: Path | None = None
    redis: bool = False  # its receiver hands events to the bench's Redis


def _kind(name: str) -> str:
    return name.split(" [", 1)[0]


def _suffix(name: str) -> str:
    return name[len(_kind(name)) :] and " " + name[len(_kind(name)) :].strip()


def _utc(epoch: float) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(int(epoch), UTC)


def asdict_result(result: LoadResult) -> dict[str, Any]:
    return asdict(result) | {"rps": result.rps}


def timed(action: Callable[[], Any], runs: int) -> list[float]:
    """Wall time of each of `runs` calls, in ms."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return times


def summary(times_ms: list[float]) -> dict[str, float]:
    ordered = sorted(times_ms)
    return {
        "median_ms": statistics.median(ordered),
        "p95_ms": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max_ms": ordered[-1],
        "runs": len(ordered),
    }


def parse_args(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny counts, a few seconds: checks the harness runs"
    )
    parser.add_argument(
        "--out", type=Path, help="logs, request files, raw results (default bench/out/<mode>)"
    )
    parser.add_argument(
        "--report",
        type=Path,
        help="where RESULTS.md goes (default: bench/RESULTS.md, or OUT/RESULTS.md with --smoke)",
    )
    parser.add_argument(
        "--backends", default=None, help="sqlite,postgres (default: both; sqlite with --smoke)"
    )
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--seconds", type=float, help="length of each intake run")
    parser.add_argument("--rounds", type=int, help="intake rounds (each variant once per round)")
    parser.add_argument("--stored", type=int, help="events stored before the scale runs")
    parser.add_argument("--profile", action="store_true", help="py-spy the receivers and workers")
    parser.add_argument(
        "--replay-processes", type=int, help="worker processes for the bulk replay (default 2)"
    )
    parser.add_argument(
        "--only",
        help=f"comma-separated sections to run, of: {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--against",
        type=Path,
        help="another checkout of carbonhook: its receivers run in the same intake rounds",
    )
    args = parser.parse_args(argv)
    smoke = args.smoke
    out = args.out or ROOT / "bench" / "out" / ("smoke" if smoke else "full")
    backends = tuple((args.backends or ("sqlite" if smoke else "sqlite,postgres")).split(","))
    for backend in backends:
        if backend not in ("sqlite", "postgres"):
            parser.error(f"unknown backend {backend!r}")
    for section in (args.only or "").split(","):
        if section and section not in SECTIONS:
            parser.error(f"unknown section {section!r}")
    config = Config(
        smoke=smoke,
        out=out,
        report=args.report or (out / "RESULTS.md" if smoke else ROOT / "bench" / "RESULTS.md"),
        backends=backends,
        loadgen=args.loadgen,
        seconds=args.seconds or (1 if smoke else 5),
        rounds=args.rounds or (1 if smoke else 3),
        warmup_s=0 if smoke else 2,
        stored=args.stored or (2_000 if smoke else 1_000_000),
        profile=args.profile,
        replay_processes=args.replay_processes,
        sections=frozenset((args.only or ",".join(SECTIONS)).split(",")),
        against=args.against.resolve() if args.against else None,
        command=" ".join(["bench/run", *(argv if argv is not None else sys.argv[1:])]),
    )
    if smoke:
        config.worker_processes = (1,)
        config.process_window_s = 1.0
        config.replay_timeout_s = 60.0
        config.listing_runs = 3
        config.cli_runs = 1
    return config


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    config.out.mkdir(parents=True, exist_ok=True)
    result = Bench(config).main()
    (config.out / "results.json").write_text(json.dumps(asdict(result), indent=2, default=str))
    text = report.render(result, config)
    config.report.parent.mkdir(parents=True, exist_ok=True)
    config.report.write_text(text)
    print(text)
    print(f"bench: report written to {config.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
