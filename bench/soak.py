"""bench/soak: a chaos soak. Receivers and workers SIGKILLed, Redis and PostgreSQL crashed and
restarted, 1ClickImpact (the emulator's strict profile) failing at random, for a while; then
every event is let settle, and the planned captures, the impacts standing at the emulator and
the ledger's captured rows are compared. Exits 0 only if all three agree exactly.

Everything runs on loopback, on a private PostgreSQL and Redis started for the run (never the
shared ones), and every process started is ended at the end, on Ctrl-C and on failure too.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from psycopg.rows import dict_row

from bench.chaos import Chaos, Service, Stack
from bench.processes import ROOT, free_port
from bench.report import record_soak, soak_text
from bench.servers import PrivatePostgres, PrivateRedis
from bench.settling import Settler, database_state, say
from bench.traffic import Delivery, Sender, plan_deliveries
from bench.verdict import Verdict, judge, planned_captures, rules_toml, soak_rules, table

log = logging.getLogger("soak")

CP_KEY, IMPACT_KEY = "cp_live_sandbox", "test_sandbox"  # the emulator's keys
CREATE_ENDPOINTS = ("capture_carbon", "plant_tree", "clean_ocean")


class SetupError(Exception):
    """The soak could not start (a server missing, a process that would not start)."""


@dataclass
class Config:
    duration_s: float
    deliveries: int
    seed: int
    receivers: int
    workers: int
    threads: int
    failure_rate: float
    interval_s: float
    outage_s: tuple[float, float]
    http_timeout_s: float
    reconcile_after_s: float
    late_finish_s: float
    lease_s: float
    audit_interval_s: float
    max_retries: int
    settle_timeout_s: float
    profile: str
    out: Path
    json: bool
    record: bool
    command: str


class Soak:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.out = config.out
        self.redis: PrivateRedis | None = None
        self.postgres: PrivatePostgres | None = None
        self.emulator: Service | None = None
        self.stack: Stack | None = None
        self.sender: Sender | None = None
        self.chaos: Chaos | None = None
        self.secret = secrets.token_hex(32)
        self.env: dict[str, str] = {}
        self.settler: Settler | None = None
        self.timings: dict[str, float] = {}
        self.rules = soak_rules()
        self.versions: dict[str, str] = {}

    # -- the run --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        config = self.config
        started_at = datetime.now(UTC)
        began = time.monotonic()
        self.setup()
        self.versions = versions(self.postgres, self.redis)  # the code as it starts
        self.timings["setup_s"] = time.monotonic() - began
        distinct, sends = plan_deliveries(config.deliveries, random.Random(config.seed))
        assert self.stack is not None and self.redis is not None and self.postgres is not None
        self.sender = Sender(sends, self.stack.bases, self.secret.encode(), duration_s=config.duration_s * 0.85)
        self.chaos = Chaos(
            self.stack,
            self.redis,
            self.postgres,
            self.control,
            random.Random(f"{config.seed}-chaos"),
            duration_s=config.duration_s,
            interval_s=config.interval_s,
            outage_s=config.outage_s,
            late_finish_s=config.late_finish_s,
        )
        say(f"chaos for {config.duration_s:g}s: {len(distinct)} distinct deliveries, {len(sends)} sends, "
            f"{config.receivers} receivers, {config.workers} workers, seed {config.seed}")
        self.sender.start()
        self.chaos.start()
        chaos_began = time.monotonic()
        chaos_ends = time.monotonic() + config.duration_s
        next_report = time.monotonic() + 15
        while time.monotonic() < chaos_ends:
            time.sleep(0.5)
            if self.chaos.error is not None:
                raise SetupError(f"the chaos loop failed: {self.chaos.error!r}")
            if time.monotonic() >= next_report:
                next_report += 15
                state = database_state(self.postgres.url)
                say(f"{len(self.chaos.record.actions)} chaos actions; {self.sender.answered()} of "
                    f"{len(sends)} sends answered; events {state['events'] if state else '(database down)'}")
        self.chaos.stop()
        say("chaos over: bringing everything back, 1ClickImpact stops failing at random")
        self.chaos.restore()
        self.stack.wait_ready()
        self.control("profile", {"random_failure_rate": 0})
        self.timings["chaos_s"] = time.monotonic() - chaos_began
        settle_began = time.monotonic()

        self.settler = Settler(
            self.postgres.url,
            self.env,
            self.sender,
            self.chaos.supervise,
            timeout_s=config.settle_timeout_s,
            quiet_s=config.late_finish_s + 3 + 2,  # a late create, the strict listings' lag, a margin
            stall_s=max(60.0, 4 * config.reconcile_after_s, 3 * config.lease_s),
        )
        settled = self.settler.settle()
        self.timings["settle_s"] = time.monotonic() - settle_began
        verdict, emulator = self.judge(distinct)
        self.timings["total_s"] = time.monotonic() - began
        return self.summary(started_at, distinct, sends, settled, verdict, emulator)

    def setup(self) -> None:
        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            self.redis = PrivateRedis(self.out)
            self.redis.start()
            self.postgres = PrivatePostgres(max_connections=300)
            self.postgres.init()
            self.postgres.start()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            raise SetupError(f"a private PostgreSQL and Redis are needed: {exc}") from exc
        from carbonhook.migrate import upgrade

        upgrade(self.postgres.url)
        port = free_port()
        profile_flag = ["--profile", config.profile]
        self.emulator = Service("emulator", ["emulate", "--port", str(port), *profile_flag], {}, self.out / "emulator.log", port)
        self.emulator.start()
        wait_for(lambda: self._answers(f"{self.emulator_url}/_emulator/profile"), 30, "the emulator to start", self.emulator)
        profile = self.control("profile", {
            "name": config.profile,
            "random_failure_rate": config.failure_rate,
            "late_finish_s": config.late_finish_s,
            "seed": config.seed,
        })
        say(f"emulator: {profile}")
        rules = self.out / "rules.toml"
        rules.write_text(rules_toml(self.rules))
        self.env = {
            "CARBONHOOK_DATABASE_URL": self.postgres.url,
            "CARBONHOOK_BROKER_URL": self.redis.url,
            "CARBONHOOK_WEBHOOK_SECRETS": self.secret,
            "CARBONHOOK_ADMIN_TOKEN": secrets.token_hex(32),
            "CARBONHOOK_CARBONPASS_API_URL": f"{self.emulator_url}/api/v1",
            "CARBONHOOK_CARBONPASS_API_KEY": CP_KEY,
            "CARBONHOOK_IMPACT_API_URL": self.emulator_url,
            "CARBONHOOK_IMPACT_API_KEY": IMPACT_KEY,
            "CARBONHOOK_RULES_FILE": str(rules),
            "CARBONHOOK_HTTP_TIMEOUT_S": f"{config.http_timeout_s:g}",
            "CARBONHOOK_RECONCILE_AFTER_S": f"{config.reconcile_after_s:g}",
            "CARBONHOOK_LEASE_S": f"{config.lease_s:g}",
            "CARBONHOOK_AUDIT_INTERVAL_S": f"{config.audit_interval_s:g}",
            "CARBONHOOK_SWEEP_INTERVAL_S": "1",
            # The soak pushes deliveries faster than the default 5 calls a second: the budgets
            # are spent but never waited on (a 429 fault still pauses every worker).
            "CARBONHOOK_CARBONPASS_RATE": "10000",
            "CARBONHOOK_IMPACT_RATE": "10000",
            "CARBONHOOK_MAX_RETRIES": str(config.max_retries),
            "CARBONHOOK_RETRY_MIN_BACKOFF_S": "0.5",
            "CARBONHOOK_RETRY_MAX_BACKOFF_S": "4",
            "CARBONHOOK_DB_POOL_SIZE": "4",
            "CARBONHOOK_INTAKE_POOL_SIZE": "8",
            "CARBONHOOK_LOG_FORMAT": "json",
        }
        self.stack = Stack(self.out, self.env, config.receivers, config.workers, config.threads)
        self.stack.start()
        try:
            self.stack.wait_ready()
        except RuntimeError as exc:
            raise SetupError(str(exc)) from exc

    @property
    def emulator_url(self) -> str:
        assert self.emulator is not None
        return self.emulator.base

    def control(self, path: str, payload: dict[str, Any]) -> Any:
        """POST to the emulator's control API; its answer."""
        answer = httpx.post(f"{self.emulator_url}/_emulator/{path}", json=payload, timeout=10)
        if answer.status_code >= 400:
            raise SetupError(f"emulator refused {path} {payload}: {answer.status_code} {answer.text}")
        return answer.json()

    @staticmethod
    def _answers(url: str) -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    # -- the verdict ----------------------------------------------------------------------

    def judge(self, distinct: list[Delivery]) -> tuple[Verdict, dict[str, Any]]:
        assert self.sender is not None
        impacts = httpx.get(f"{self.emulator_url}/_emulator/impacts", timeout=30).json()
        cancelled = httpx.get(f"{self.emulator_url}/_emulator/cancelled", timeout=30).json()
        calls = httpx.get(f"{self.emulator_url}/_emulator/calls", timeout=30).json()
        assert self.settler is not None
        with self.settler.connect() as conn, conn.cursor(row_factory=dict_row) as cur:
            ledger = cur.execute("SELECT * FROM captures ORDER BY id").fetchall()
            events = cur.execute(
                "SELECT id, type, subject_id, event_ts, received_at, status, attempts, last_error, note FROM events ORDER BY id"
            ).fetchall()
            attempts = cur.execute("SELECT * FROM event_attempts ORDER BY id").fetchall()
            deployment = str(cur.execute("SELECT id FROM deployment").fetchone()["id"])  # type: ignore[index]
        # Everything the verdict reads, kept for a post-mortem (the database goes with the run).
        for name, rows in (("impacts", impacts), ("cancelled", cancelled), ("calls", calls),
                           ("captures", ledger), ("events", events), ("event_attempts", attempts)):
            (self.out / f"{name}.json").write_text(json.dumps(rows, indent=1, default=str))
        answers: dict[tuple[str, str, str], set[int]] = {}
        for outcome in self.sender.outcomes:
            if outcome.event_id is not None:
                answers.setdefault(outcome.delivery.identity, set()).add(outcome.event_id)
        verdict = judge(
            planned=planned_captures(distinct, self.rules),
            impacts=impacts,
            cancelled=len(cancelled),
            ledger=ledger,
            deployment=deployment,
            deliveries=distinct,
            answers=answers,
            events=events,
            tagless=not httpx.get(f"{self.emulator_url}/_emulator/profile", timeout=30).json()[
                "records_metadata"
            ],
        )
        creates = [c for c in calls if c["endpoint"] in CREATE_ENDPOINTS]
        emulator = {
            "create_calls": len(creates),
            "create_calls_failed": sum(1 for c in creates if c["status"] is None or c["status"] >= 500),
            "create_answers": dict(Counter(str(c["status"]) for c in creates)),
            "listing_calls": sum(1 for c in calls if c["endpoint"] in ("records", "customer_records")),
            "cancelled": len(cancelled),
        }
        return verdict, emulator

    def summary(
        self,
        started_at: datetime,
        distinct: list[Delivery],
        sends: list[Delivery],
        settled: bool,
        verdict: Verdict,
        emulator: dict[str, Any],
    ) -> dict[str, Any]:
        assert self.sender is not None and self.chaos is not None
        failures: Counter[str] = Counter()
        for outcome in self.sender.outcomes:
            failures.update(outcome.failures)
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.config).items()}
        return {
            "ok": settled and verdict.agree,
            "settled": settled,
            "command": self.config.command,
            "started": started_at.isoformat(timespec="seconds"),
            "config": config,
            "versions": self.versions,
            "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
            "deliveries": {
                "distinct": len(distinct),
                "sends": len(sends),
                "resends": len(sends) - len(distinct),
                "http_attempts": sum(o.tries for o in self.sender.outcomes),
                "refused_or_broken": dict(failures),
                "unanswered": self.sender.unanswered(),
            },
            "chaos": self.chaos.record.as_dict(),
            "emulator": emulator,
            "replays": self.settler.replays if self.settler is not None else [],
            "verdict": {
                "agree": verdict.agree,
                "planned": verdict.planned,
                "standing": verdict.standing,
                "ledger": verdict.ledger,
                "cancelled": verdict.cancelled,
                "events": verdict.events,
                "captures": verdict.captures,
                "discrepancies": [asdict(d) for d in verdict.discrepancies],
                "blocked_signatures": verdict.blocked,
            },
            "table": table(verdict),
        }

    # -- the end --------------------------------------------------------------------------

    def close(self) -> None:
        """End every process this run started, whatever state it is in."""
        if self.sender is not None:
            self.sender.stop()
        if self.chaos is not None:
            self.chaos.stop()
        if self.stack is not None:
            self.stack.end()
        if self.emulator is not None:
            self.emulator.end()
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.remove()


def versions(postgres: PrivatePostgres | None, redis: PrivateRedis | None) -> dict[str, str]:
    found = {"python": platform.python_version()}
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=False)
        found["carbonhook"] = commit.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except OSError:
        pass
    if postgres is not None:
        found["postgresql"] = postgres.bindir.parent.name
    if redis is not None:
        done = subprocess.run([redis.binary, "--version"], capture_output=True, text=True, check=False)
        found["redis"] = done.stdout.split(" v=")[1].split()[0] if " v=" in done.stdout else done.stdout.strip()
    return found


def wait_for(predicate: Any, timeout: float, what: str, service: Service | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline or (service is not None and service.popen is not None and not service.alive()):
            tail = service.output()[-3000:] if service is not None else ""
            raise SetupError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.1)


def parse_args(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(prog="bench/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180, help="seconds of chaos (default 180)")
    parser.add_argument("--deliveries", type=int, default=None, help="distinct deliveries (default: 2 per second of chaos)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--receivers", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="threads per worker")
    parser.add_argument("--failure-rate", type=float, default=0.2, help="share of create calls that fail at random")
    parser.add_argument("--interval", type=float, default=None, help="mean seconds between chaos actions (default: duration/40, 1 to 5)")
    parser.add_argument("--http-timeout", type=float, default=1.0, help="CARBONHOOK_HTTP_TIMEOUT_S")
    parser.add_argument("--reconcile-after", type=float, default=8.0, help="CARBONHOOK_RECONCILE_AFTER_S; keep it above --late-finish + the strict listings' lag (3 s)")
    parser.add_argument("--late-finish", type=float, default=2.0, help="how late a create that finishes late lands (s)")
    parser.add_argument("--lease", type=float, default=10.0, help="CARBONHOOK_LEASE_S")
    parser.add_argument("--audit-interval", type=float, default=5.0, help="CARBONHOOK_AUDIT_INTERVAL_S")
    parser.add_argument("--max-retries", type=int, default=12, help="CARBONHOOK_MAX_RETRIES")
    parser.add_argument("--settle-timeout", type=float, default=240, help="seconds to let everything settle after the chaos")
    parser.add_argument(
        "--profile",
        choices=["strict", "kind"],
        default="strict",
        help="the emulated 1ClickImpact: strict (listings late, without metadata; the default) or kind",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "soak", help="logs and summary.json")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout (progress stays on stderr)")
    parser.add_argument("--record", action="store_true", help="add this run to bench/SOAK.md and bench/RESULTS.md")
    args = parser.parse_args(argv)
    if args.receivers < 1 or args.workers < 1:
        parser.error("at least one receiver and one worker")
    interval = args.interval or min(5.0, max(1.0, args.duration / 40))
    return Config(
        duration_s=args.duration,
        deliveries=args.deliveries or max(10, int(args.duration * 2)),
        seed=args.seed,
        receivers=args.receivers,
        workers=args.workers,
        threads=args.threads,
        failure_rate=args.failure_rate,
        interval_s=interval,
        outage_s=(1.0, 5.0),
        http_timeout_s=args.http_timeout,
        reconcile_after_s=args.reconcile_after,
        late_finish_s=args.late_finish,
        lease_s=args.lease,
        audit_interval_s=args.audit_interval,
        max_retries=args.max_retries,
        settle_timeout_s=args.settle_timeout,
        profile=args.profile,
        out=args.out,
        json=args.json,
        record=args.record,
        command=shlex.join(["bench/soak", *(argv if argv is not None else sys.argv[1:])]),
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # Both end the run cleanly; SIGINT explicitly, as a shell may start a background job with
    # it ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    soak = Soak(config)
    try:
        summary = soak.run()
    except KeyboardInterrupt:
        say("interrupted: ending every process started")
        return 130
    except SetupError as exc:
        say(f"could not run: {exc}")
        return 2
    finally:
        # A second Ctrl-C must not cut the clean-up short: it is bounded (seconds).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        soak.close()
    (config.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if config.record:
        record_soak(summary)
    text = soak_text(summary)
    if config.json:
        print(text, file=sys.stderr)
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(text)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
