"""The soak's service processes and the chaos done to them: receivers and workers killed and
restarted, Redis and PostgreSQL crashed and restarted, the emulator told to fail.

Every process is started here and ended here by its own pid; a process that exits without
being told to is recorded and restarted, as a supervisor (systemd, Kubernetes) would.
"""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.processes import ROOT, clean_env, free_port
from bench.servers import PrivatePostgres, PrivateRedis

log = logging.getLogger("soak")


class Service:
    """One `carbonhook serve` or `carbonhook worker`, restartable; its log appended across lives."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log_path: Path, port: int | None = None) -> None:
        self.name = name
        self.args = args
        self.env = dict(env)
        self.log = log_path
        self.port = port
        self.popen: subprocess.Popen[bytes] | None = None
        self.lives = 0
        self._life_starts_at = 0  # where this life's output begins in the log
        self.down_on_purpose = False  # killed by the chaos: its exit is not a surprise

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        self.lives += 1
        self._life_starts_at = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            out.write(f"\n--- {self.name}: life {self.lives}, started {time.strftime('%H:%M:%S')}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "carbonhook", *self.args],
                env=clean_env(self.env),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C reaches the soak, which ends it in order
            )
        self.down_on_purpose = False

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.down_on_purpose = True
            self.popen.send_signal(sig)

    def end(self, timeout: float = 5) -> None:
        """SIGTERM, then SIGKILL after `timeout`."""
        if self.popen is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def ready(self) -> bool:
        """A receiver answers /healthz; a worker has logged "worker started" in this life."""
        if not self.alive():
            return False
        if self.port is not None:
            try:
                httpx.get(f"{self.base}/healthz", timeout=1)
                return True
            except httpx.HTTPError:
                return False
        with self.log.open("rb") as log:
            log.seek(self._life_starts_at)
            return b"worker started" in log.read()


class Stack:
    """The receivers and the workers around one PostgreSQL, one Redis and the emulator."""

    def __init__(self, out: Path, env: Mapping[str, str], receivers: int, workers: int, threads: int) -> None:
        self.receivers = [
            Service(f"receiver{n}", ["serve", "--port", str(port)], env, out / f"receiver{n}.log", port)
            for n, port in ((n, free_port()) for n in range(1, receivers + 1))
        ]
        self.workers = [
            Service(f"worker{n}", ["worker", "--threads", str(threads)], env, out / f"worker{n}.log")
            for n in range(1, workers + 1)
        ]

    @property
    def services(self) -> list[Service]:
        return [*self.receivers, *self.workers]

    def bases(self) -> list[str]:
        return [r.base for r in self.receivers]

    def start(self) -> None:
        for service in self.services:
            service.start()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for service in self.services:
            while not service.ready():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{service.name} not ready after {timeout:g}s:\n{service.output()[-3000:]}")
                if not service.alive():
                    service.start()  # exited at start-up (a service still coming back): again
                time.sleep(0.2)

    def end(self) -> None:
        """Every process: SIGTERM to all at once, SIGKILL to what is left after 5 s."""
        for service in self.services:
            service.signal(signal.SIGTERM)
        for service in self.services:
            service.end(timeout=5)


@dataclass
class ChaosRecord:
    """What the chaos did, for the summary."""

    kills: Counter[str] = field(default_factory=Counter)  # receiver / worker, by SIGKILL
    stops: Counter[str] = field(default_factory=Counter)  # worker, by SIGTERM
    restarts: Counter[str] = field(default_factory=Counter)  # redis / postgres, after a crash or stop
    outages_s: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)  # injected at the emulator, by endpoint
    unexpected_exits: list[dict[str, Any]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kills": dict(self.kills),
            "stops": dict(self.stops),
            "service_restarts": dict(self.restarts),
            "outage_seconds": {k: round(v, 1) for k, v in self.outages_s.items()},
            "faults_injected": dict(self.faults),
            "unexpected_exits": self.unexpected_exits,
            "actions": self.actions,
        }


# The kinds of chaos and how often each is drawn; each one runs at least once per soak.
ACTIONS = {
    "kill receiver": 3,
    "kill worker": 3,
    "stop worker": 1,
    "crash redis": 2,
    "crash postgres": 2,
    "emulator faults": 2,
}
FAULT_ENDPOINTS = ("capture_carbon", "plant_tree", "records", "customer_records", "crp")


class Chaos:
    """A seeded loop on its own thread: an action every `interval_s` on average; what it
    brought down comes back after a seeded outage of `outage_s` (low, high)."""

    def __init__(
        self,
        stack: Stack,
        redis: PrivateRedis,
        postgres: PrivatePostgres,
        emulator: Callable[[str, dict[str, Any]], Any],
        rng: random.Random,
        *,
        duration_s: float,
        interval_s: float,
        outage_s: tuple[float, float],
        late_finish_s: float,
    ) -> None:
        self.stack = stack
        self.redis = redis
        self.postgres = postgres
        self.emulator = emulator
        self.rng = rng
        self.duration_s = duration_s
        self.interval_s = interval_s
        self.outage_s = outage_s
        self.late_finish_s = late_finish_s
        self.record = ChaosRecord()
        self._comebacks: list[tuple[float, str, Callable[[], bool]]] = []
        self._down_since: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-chaos", daemon=True)
        self._lock = threading.Lock()  # the thread and `restore` never act at once
        self._started = 0.0
        self.error: BaseException | None = None

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90)

    def restore(self, timeout: float = 60) -> None:
        """Bring back everything the chaos brought down, now (after `stop`)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._comebacks:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"could not bring back {[c[1] for c in self._comebacks]}")
                self._comeback_due(float("inf"))
                if self._comebacks:
                    time.sleep(0.2)
            self._supervise()

    # -- the loop -------------------------------------------------------------------------

    def _plan(self) -> list[tuple[float, str]]:
        """When each action happens (seconds from the start): every kind once, spread over
        the first 80% of the run in a seeded order, and random draws between them."""
        kinds = list(ACTIONS)
        self.rng.shuffle(kinds)
        plan = [(self.duration_s * 0.8 * (n + 0.5) / len(kinds), kind) for n, kind in enumerate(kinds)]
        at = self.rng.uniform(0.5, 1.5) * self.interval_s
        names, weights = list(ACTIONS), list(ACTIONS.values())
        while at < self.duration_s * 0.9:
            plan.append((at, self.rng.choices(names, weights)[0]))
            at += self.rng.uniform(0.5, 1.5) * self.interval_s
        return sorted(plan)

    def _run(self) -> None:
        plan = self._plan()
        try:
            while not self._stop.wait(0.1):
                now = time.monotonic()
                with self._lock:
                    self._comeback_due(now)
                    self._supervise()
                    while plan and self._started + plan[0][0] <= now:
                        self._act(plan.pop(0)[1])
                if now - self._started >= self.duration_s:
                    return
        except BaseException as exc:  # surfaced by the soak, which then stops
            self.error = exc
            log.exception("chaos loop failed")

    def _comeback_due(self, now: float) -> None:
        due = [c for c in self._comebacks if c[0] <= now]
        for entry in due:
            try:
                back = entry[2]()
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                self._note(f"{entry[1]} did not come back yet ({str(exc).splitlines()[0]}); again")
                back = False
            if back:
                self._comebacks.remove(entry)

    def _later(self, what: str, comeback: Callable[[], bool]) -> None:
        self._comebacks.append((time.monotonic() + self.rng.uniform(*self.outage_s), what, comeback))

    def _note(self, text: str) -> None:
        elapsed = time.monotonic() - self._started
        self.record.actions.append(f"{elapsed:6.1f}s {text}")
        log.info("chaos: %s", text)

    def supervise(self) -> None:
        """Restart a service that exited without being told to; record it."""
        with self._lock:
            self._supervise()

    def _supervise(self) -> None:
        for service in self.stack.services:
            if service.popen is None or service.alive() or service.down_on_purpose:
                continue
            tail = [line for line in service.output().splitlines() if line.strip()][-3:]
            self.record.unexpected_exits.append({
                "service": service.name,
                "life": service.lives,
                "exit_code": service.popen.returncode,
                "redis_up": self.redis.running,
                "postgres_up": self.postgres.running,
                "last_lines": tail,
            })
            self._note(f"{service.name} exited by itself ({service.popen.returncode}); restarted")
            service.start()

    def _act(self, kind: str) -> None:
        if kind in ("kill receiver", "kill worker", "stop worker"):
            self._hit_process(kind)
        elif kind == "crash redis":
            self._crash_redis()
        elif kind == "crash postgres":
            self._crash_postgres()
        else:
            self._emulator_faults()

    def _hit_process(self, kind: str) -> None:
        group = self.stack.receivers if kind == "kill receiver" else self.stack.workers
        alive = [s for s in group if s.alive() and not s.down_on_purpose]
        if not alive:
            return
        service = self.rng.choice(alive)
        sig = signal.SIGTERM if kind == "stop worker" else signal.SIGKILL
        service.signal(sig)
        (self.record.stops if sig == signal.SIGTERM else self.record.kills)[service.name.rstrip("0123456789")] += 1
        self._note(f"{'SIGTERM' if sig == signal.SIGTERM else 'SIGKILL'} {service.name}")

        def comeback() -> bool:
            if service.alive():  # a SIGTERM'd worker finishing what it holds: not yet
                return False
            service.start()
            self._note(f"{service.name} restarted")
            return True

        self._later(service.name, comeback)

    def _crash_redis(self) -> None:
        if not self.redis.running:
            return
        self.redis.crash()
        self._down_since["redis"] = time.monotonic()
        self._note("Redis SIGKILLed (no persistence: every message lost)")

        def comeback() -> bool:
            self.redis.start()
            self._back("redis")
            return True

        self._later("redis", comeback)

    def _crash_postgres(self) -> None:
        if not self.postgres.running:
            return
        mode = self.rng.choice(["kill", "immediate", "fast"])
        if mode == "kill":
            self.postgres.crash()
            self._note("PostgreSQL postmaster SIGKILLed")
        else:
            self.postgres.stop(mode)
            self._note(f"PostgreSQL stopped ({mode})")
        self._down_since["postgres"] = time.monotonic()

        def comeback() -> bool:
            self.postgres.start()
            self._back("postgres")
            return True

        self._later("postgres", comeback)

    def _back(self, name: str) -> None:
        down = time.monotonic() - self._down_since.pop(name)
        self.record.restarts[name] += 1
        self.record.outages_s[name] += down
        self._note(f"{'Redis' if name == 'redis' else 'PostgreSQL'} back after {down:.1f}s")

    def _emulator_faults(self) -> None:
        endpoint = self.rng.choice(FAULT_ENDPOINTS)
        create = endpoint in ("capture_carbon", "plant_tree")
        modes = ["status", "reset_before"] + (["drop", "reset_after", "late_finish"] if create else [])
        mode = self.rng.choice(modes)
        fault: dict[str, Any] = {"endpoint": endpoint, "mode": mode, "times": self.rng.randint(1, 3)}
        if mode == "status":
            fault["status"] = self.rng.choice([500, 502, 503, 429])
            if fault["status"] == 429:
                fault["retry_after"] = 1
        if mode == "late_finish":
            fault["delay_s"] = self.late_finish_s
        self.emulator("faults", fault)
        self.record.faults[endpoint] += fault["times"]
        detail = f" {fault['status']}" if mode == "status" else ""
        self._note(f"emulator: next {fault['times']} {endpoint} call(s) fail: {mode}{detail}")
