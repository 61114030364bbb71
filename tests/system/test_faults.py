"""The reliability proofs: real receiver and worker processes on real PostgreSQL and Redis,
broken on purpose (kill -9, SIGTERM, a broker or a database stopped, a dropped connection,
429s, refusals, races and load), each ending with every event settled and one capture each.

The shared PostgreSQL and Redis are never stopped: a test that stops one runs its own
(tests/services.py). Every test here runs a private Redis when `redis-server` is at hand, so that
another run's workers on the shared Redis can neither take these messages nor wipe them.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from receiver.signature import HEADER, sign
from tests.support import (
    CP_KEY,
    IMPACT_KEY,
    ROOT,
    SECRET,
    Proc,
    RunningEmulator,
    free_port,
    make_body,
    query,
    wait_http,
    wait_until,
)

if TYPE_CHECKING:  # imported by pytest as a plugin (below), so only named here
    from tests.services import PrivatePostgres, PrivateRedis

pytest_plugins = ("tests.services",)
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

RULES = """
[[rule]]
name = "published"
on = "crp.generated"
when = { status = "published" }
capture_lbs = 500
customer_email = "esg@example.com"
customer_name = "Example Ltd"
"""

TWO_RULES = (
    RULES
    + """
[[rule]]
name = "flat"
on = "crp.generated"
capture_lbs = 3
"""
)

# Small enough that leases, sweeps and reconciliation happen within seconds.
FAST = {
    "CARBONHOOK_LEASE_S": "3",
    # Hundreds of events at once: the rate limits (tests/workers/test_rate_limit.py) are not
    # what these faults test.
    "CARBONHOOK_CARBONPASS_RATE": "1000",
    "CARBONHOOK_IMPACT_RATE": "1000",
    "CARBONHOOK_SWEEP_INTERVAL_S": "1",
    "CARBONHOOK_RECONCILE_AFTER_S": "1",
    "CARBONHOOK_MAX_RETRIES": "5",
    "CARBONHOOK_RETRY_MIN_BACKOFF_S": "0.2",
    "CARBONHOOK_RETRY_MAX_BACKOFF_S": "1",
    "CARBONHOOK_HTTP_TIMEOUT_S": "10",
    "CARBONHOOK_DB_POOL_SIZE": "4",
    "CARBONHOOK_WORKER_THREADS": "4",
    "CARBONHOOK_LOG_FORMAT": "console",
}


def signed(body: bytes) -> dict[str, str]:
    return {HEADER: sign(body, secret=SECRET.encode()), "Content-Type": "application/json"}


class Stack:
    """The service's processes around one database, one Redis and the emulator."""

    def __init__(
        self,
        start: Callable[[list[str], dict[str, str], str], Proc],
        tmp_path: Path,
        db: str,
        broker: str,
        emulator: RunningEmulator,
    ) -> None:
        self._start = start
        self.db = db
        self.broker = broker
        self.emulator = emulator
        self.rules = tmp_path / "rules.toml"
        self.rules.write_text(RULES)
        self.env = {
            "CARBONHOOK_DATABASE_URL": db,
            "CARBONHOOK_BROKER_URL": broker,
            "CARBONHOOK_WEBHOOK_SECRETS": SECRET,
            "CARBONHOOK_CARBONPASS_API_URL": f"{emulator.base}/api/v1",
            "CARBONHOOK_CARBONPASS_API_KEY": CP_KEY,
            "CARBONHOOK_IMPACT_API_URL": emulator.base,
            "CARBONHOOK_IMPACT_API_KEY": IMPACT_KEY,
            "CARBONHOOK_RULES_FILE": str(self.rules),
            **FAST,
        }
        self.procs: list[Proc] = []
        self._names = Counter[str]()

    # -- processes ------------------------------------------------------------------------

    def spawn(self, args: list[str], kind: str, env: dict[str, str]) -> Proc:
        self._names[kind] += 1
        proc = self._start(args, {**self.env, **env}, f"{kind}{self._names[kind]}")
        self.procs.append(proc)
        return proc

    def up(self, receivers: int = 1, workers: int = 1, **env: str) -> list[str]:
        """Start receivers and workers side by side, wait until all are ready; the receivers' URLs."""
        servers = []
        for _ in range(receivers):
            port = free_port()
            servers.append((f"http://127.0.0.1:{port}", self.spawn(["serve", "--port", str(port)], "receiver", env)))
        started = [self.spawn(["worker"], "worker", env) for _ in range(workers)]
        for base, proc in servers:
            wait_http(f"{base}/healthz", proc, timeout=30)
        for proc in started:
            self.wait_worker(proc)
        return [base for base, _ in servers]

    def worker(self, **env: str) -> Proc:
        proc = self.spawn(["worker"], "worker", env)
        self.wait_worker(proc)
        return proc

    def wait_worker(self, proc: Proc) -> None:
        def started() -> bool:
            if proc.popen.poll() is not None:
                raise AssertionError(f"worker exited early:\n{proc.output()}")
            return "worker started" in proc.output()

        wait_until(started, timeout=30, what="the worker to start")

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """A `carbonhook` command that exits by itself."""
        return subprocess.run(
            [sys.executable, "-m", "carbonhook", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            check=False,
        )

    def close(self) -> None:
        """Stop every process at once (SIGTERM to all first, then wait for each)."""
        self.emulator.control("release")  # a held answer would keep a worker or the server busy
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.stop(timeout=20)

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.output()[-4000:]}" for p in self.procs)

    # -- deliveries and what became of them -----------------------------------------------

    @staticmethod
    def post(base: str, body: bytes, client: httpx.Client | None = None) -> httpx.Response:
        url = f"{base}/webhooks/carbonpass"
        if client is not None:
            return client.post(url, content=body, headers=signed(body))
        return httpx.post(url, content=body, headers=signed(body), timeout=15)

    def status(self, event_id: int) -> str:
        return str(query(self.db, f"SELECT status FROM events WHERE id = {int(event_id)}")[0][0])

    def statuses(self) -> Counter[str]:
        return Counter(row[0] for row in query(self.db, "SELECT status FROM events"))

    def captures(self) -> list[tuple[Any, ...]]:
        return query(self.db, "SELECT rule, subject_id, status, note FROM captures ORDER BY id")

    def calls(self, endpoint: str) -> list[dict[str, Any]]:
        calls = httpx.get(f"{self.emulator.base}/_emulator/calls", timeout=5).json()
        return [call for call in calls if call["endpoint"] == endpoint]

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = 30) -> Any:
        """`wait_until`, with every process's log in the message when it times out."""
        try:
            return wait_until(predicate, timeout=timeout, interval=0.2, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def wait_status(self, event_id: int, status: str, timeout: float = 30) -> None:
        self.wait(lambda: self.status(event_id) == status, f"event {event_id} to be {status}", timeout)


@pytest.fixture
def queue_url(request: pytest.FixtureRequest) -> str:
    """A Redis only this test uses when `redis-server` is at hand, else the shared one (db 15)."""
    if shutil.which("redis-server") is None:
        return str(request.getfixturevalue("redis_url"))
    return str(request.getfixturevalue("private_redis").url)


# The strict profile is 1ClickImpact as unkind as its documents allow: a new impact listed only
# seconds later, no metadata in the listings, e-mails lower-cased, cancelled impacts still
# listed. The settle window must outlast the listing's lag, as in production it must.
PROFILES = {
    "kind": {},
    "strict": {"CARBONHOOK_RECONCILE_AFTER_S": "5"},
}


@pytest.fixture(params=sorted(PROFILES))
def stack(
    request: pytest.FixtureRequest,
    emulator: RunningEmulator,
    pg_url: str,
    queue_url: str,
    tmp_path: Path,
    procs: Any,
) -> Iterator[Stack]:
    # `procs` comes last so its processes stop before the emulator, Redis and the database.
    profile = emulator.control("profile", {"name": request.param, "records_lag_s": 2.0} if request.param == "strict" else {"name": request.param})
    assert profile["name"] == request.param
    s = Stack(procs, tmp_path, pg_url, queue_url, emulator)
    s.env.update(PROFILES[request.param])
    yield s
    s.close()


def accepted_id(response: httpx.Response) -> int:
    assert response.status_code == 202, response.text
    return int(response.json()["id"])


def hold_next_capture(stack: Stack) -> None:
    stack.emulator.control("faults", {"endpoint": "capture_carbon", "mode": "hold", "times": 1})


# -- 1. kill -9 mid-capture ------------------------------------------------------------------


def test_a_worker_killed_mid_capture_is_finished_by_the_next_worker_with_one_capture(stack: Stack):
    [base] = stack.up()
    [first] = [p for p in stack.procs if "worker" in p.log.name]
    hold_next_capture(stack)
    event_id = accepted_id(stack.post(base, make_body()))
    # The emulator has made the impact and holds the answer: the call is in flight.
    stack.wait(lambda: stack.emulator.state.held == 1, "the capture call to be in flight")
    assert len(stack.emulator.impacts) == 1
    first.popen.send_signal(signal.SIGKILL)
    first.popen.wait(10)
    assert stack.status(event_id) == "processing"
    assert [row[2] for row in stack.captures()] == ["pending"]

    stack.worker()
    stack.wait_status(event_id, "succeeded", timeout=30)
    assert len(stack.emulator.impacts) == 1
    # The held call is logged once its answer is let go; no other call was made.
    stack.emulator.control("release")
    stack.wait(lambda: stack.calls("capture_carbon"), "the held call to be logged")
    assert len(stack.calls("capture_carbon")) == 1
    [(rule, subject, status, note)] = stack.captures()
    assert (rule, subject, status, note) == ("published", "crp_5tN8xBmQ", "captured", "found by reconciliation")


# -- SIGTERM mid-capture ---------------------------------------------------------------------


def test_sigterm_with_a_capture_in_flight_exits_0_and_loses_nothing(stack: Stack):
    # A 2 s timeout: the held call ends inside the worker's grace period (max(10, 3 x 2) s).
    [base] = stack.up(CARBONHOOK_HTTP_TIMEOUT_S="2")
    [first] = [p for p in stack.procs if "worker" in p.log.name]
    hold_next_capture(stack)
    event_id = accepted_id(stack.post(base, make_body()))
    stack.wait(lambda: stack.emulator.state.held == 1, "the capture call to be in flight")

    stopped_at = time.monotonic()
    first.popen.send_signal(signal.SIGTERM)
    assert first.popen.wait(20) == 0, first.output()
    assert time.monotonic() - stopped_at < 15
    assert "worker stopping" in first.output() and "Traceback" not in first.output()
    assert stack.status(event_id) in ("queued", "succeeded")  # finished, or given back: not lost

    stack.emulator.control("release")
    stack.worker(CARBONHOOK_HTTP_TIMEOUT_S="2")
    stack.wait_status(event_id, "succeeded", timeout=30)
    assert len(stack.emulator.impacts) == 1
    stack.wait(lambda: stack.calls("capture_carbon"), "the held call to be logged")
    assert len(stack.calls("capture_carbon")) == 1
    assert [row[2] for row in stack.captures()] == ["captured"]


# -- 2. Redis down ---------------------------------------------------------------------------


def test_deliveries_while_redis_is_down_are_accepted_and_each_processed_once_when_it_returns(
    private_redis: PrivateRedis, stack: Stack
):
    assert stack.broker == private_redis.url
    [base] = stack.up()
    private_redis.stop()

    bodies = [make_body(subject=f"crp_redisdown{i}") for i in range(20)]
    answers = [stack.post(base, body) for body in bodies]
    assert [a.status_code for a in answers] == [202] * 20, [a.text for a in answers]
    ids = [int(a.json()["id"]) for a in answers]
    ready = httpx.get(f"{base}/readyz", timeout=15)
    assert ready.status_code == 503 and ready.json()["database"] == "ok"
    time.sleep(1.5)  # a sweep or two, with nowhere to hand the events to
    assert stack.statuses() == Counter({"pending": 20}), stack.logs()
    assert stack.emulator.impacts == []

    private_redis.start()
    stack.wait(lambda: stack.statuses() == Counter({"succeeded": 20}), "every event to succeed", timeout=60)
    impacts = stack.emulator.impacts
    assert sorted(Counter(i["metadata"]["event"] for i in impacts).items()) == sorted((str(i), 1) for i in ids)
    attempts = query(stack.db, "SELECT event_id, outcome FROM event_attempts ORDER BY event_id")
    assert attempts == [(i, "succeeded") for i in sorted(ids)]


# -- 3. PostgreSQL down ----------------------------------------------------------------------


def test_the_intake_answers_503_while_postgres_is_down_and_accepts_again_when_it_returns(
    private_postgres: PrivatePostgres, procs: Any
):
    from carbonhook.migrate import upgrade

    upgrade(private_postgres.url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "CARBONHOOK_DATABASE_URL": private_postgres.url,
        "CARBONHOOK_BROKER_URL": "memory://",
        "CARBONHOOK_WEBHOOK_SECRETS": SECRET,
        **FAST,
    }
    receiver = procs(["serve", "--port", str(port)], env, "receiver")
    wait_http(f"{base}/healthz", receiver)
    assert Stack.post(base, make_body(subject="crp_before")).status_code == 202

    private_postgres.stop()
    bodies = [make_body(subject=f"crp_pgdown{i}") for i in range(10)]
    down = [Stack.post(base, body) for body in [*bodies, make_body(subject="crp_before")]]
    assert [a.status_code for a in down] == [503] * 11, [a.text for a in down]
    assert all(a.json()["error"] == "unavailable" for a in down)
    assert httpx.get(f"{base}/readyz", timeout=15).status_code == 503

    private_postgres.start()
    back = [Stack.post(base, body) for body in bodies]
    assert [a.status_code for a in back] == [202] * 10, [a.text for a in back] + [receiver.output()]
    assert Stack.post(base, make_body(subject="crp_before")).status_code == 200
    assert httpx.get(f"{base}/readyz", timeout=15).status_code == 200
    subjects = query(private_postgres.url, "SELECT subject_id FROM events ORDER BY id")
    assert [s for (s,) in subjects] == ["crp_before"] + [f"crp_pgdown{i}" for i in range(10)]


# -- 4. 50 copies, two receivers -------------------------------------------------------------


def test_fifty_concurrent_copies_over_two_receivers_make_one_event_and_one_capture(stack: Stack):
    bases = stack.up(receivers=2)
    body = make_body(subject="crp_fifty")
    barrier = threading.Barrier(50)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def send(n: int) -> None:
        barrier.wait(10)
        response = stack.post(bases[n % 2], body)
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert Counter(a.status_code for a in answers) == Counter({200: 49, 202: 1})
    [event_id] = {int(a.json()["id"]) for a in answers}

    stack.wait_status(event_id, "succeeded")
    time.sleep(2)  # two sweeps: nothing may pick it up again
    assert query(stack.db, "SELECT count(*) FROM events") == [(1,)]
    assert len(stack.emulator.impacts) == 1
    assert len(stack.calls("capture_carbon")) == 1


# -- 5. captured, then the connection dropped ------------------------------------------------


def test_a_capture_whose_answer_is_dropped_is_reconciled_not_repeated(stack: Stack):
    [base] = stack.up()
    stack.emulator.control("faults", {"endpoint": "capture_carbon", "mode": "drop", "times": 1})
    event_id = accepted_id(stack.post(base, make_body()))
    stack.wait_status(event_id, "succeeded")
    assert len(stack.emulator.impacts) == 1
    assert [c["status"] for c in stack.calls("capture_carbon")] == [None]  # the dropped one only
    assert stack.captures() == [("published", "crp_5tN8xBmQ", "captured", "found by reconciliation")]
    [impact] = stack.emulator.impacts
    [(user_id, time_utc)] = query(stack.db, "SELECT user_id, time_utc FROM captures")
    assert (user_id, time_utc) == (impact["user_id"], impact["time_utc"])


# -- 6. 429 with Retry-After -----------------------------------------------------------------


def test_carbonpass_429s_with_retry_after_are_waited_out_then_captured_once(stack: Stack):
    [base] = stack.up()
    stack.emulator.control("faults", {"endpoint": "crp", "status": 429, "retry_after": 2, "times": 3})
    event_id = accepted_id(stack.post(base, make_body()))
    stack.wait_status(event_id, "succeeded", timeout=40)
    crp = stack.calls("crp")
    assert [c["status"] for c in crp] == [429, 429, 429, 200]
    gaps = [later["at"] - earlier["at"] for earlier, later in pairwise(crp)]
    assert all(gap >= 1.95 for gap in gaps), gaps
    assert len(stack.emulator.impacts) == 1
    history = query(stack.db, f"SELECT outcome, http_status FROM event_attempts WHERE event_id = {event_id} ORDER BY id")
    assert history == [("retry", 429)] * 3 + [("succeeded", None)]


def test_429s_on_capture_carbon_use_up_no_retry_and_capture_once(stack: Stack):
    [base] = stack.up(CARBONHOOK_MAX_RETRIES="0")
    stack.emulator.control("faults", {"endpoint": "capture_carbon", "status": 429, "retry_after": 0, "times": 3})
    event_id = accepted_id(stack.post(base, make_body()))
    stack.wait_status(event_id, "succeeded", timeout=40)
    assert [c["status"] for c in stack.calls("capture_carbon")] == [429, 429, 429, 200]
    assert len(stack.emulator.impacts) == 1
    assert [row[2] for row in stack.captures()] == ["captured"]


# -- 7. fails past the retries, replayed ----------------------------------------------------


def test_a_capture_failing_past_the_retries_fails_the_event_and_a_replay_captures_once(stack: Stack):
    [base] = stack.up(CARBONHOOK_MAX_RETRIES="2")
    # A 503 uses up a retry (a 429 does not: tests/workers/test_rate_limit.py).
    stack.emulator.control("faults", {"endpoint": "crp", "status": 503, "times": 3})
    event_id = accepted_id(stack.post(base, make_body()))
    stack.wait_status(event_id, "failed")
    [(error,)] = query(stack.db, f"SELECT last_error FROM events WHERE id = {event_id}")
    assert "gave up after 3 attempts" in error and "503" in error
    assert stack.captures() == []
    assert stack.emulator.impacts == []

    def attempts() -> int:
        return int(query(stack.db, f"SELECT count(*) FROM event_attempts WHERE event_id = {event_id}")[0][0])

    done = stack.cli("events", "replay", str(event_id), "--reason", "1ClickImpact recovered")
    assert done.returncode == 0, done.stderr
    assert f"replayed event {event_id} (was failed)" in done.stdout
    stack.wait(lambda: attempts() == 4 and stack.status(event_id) == "succeeded", "the replay to succeed")
    assert len(stack.emulator.impacts) == 1

    again = stack.cli("events", "replay", str(event_id))
    assert again.returncode == 0, again.stderr
    assert f"replayed event {event_id} (was succeeded)" in again.stdout
    stack.wait(lambda: attempts() == 5 and stack.status(event_id) == "succeeded", "the second replay")
    assert len(stack.emulator.impacts) == 1
    assert [c["status"] for c in stack.calls("crp")][:4] == [503, 503, 503, 200]
    assert [c["status"] for c in stack.calls("capture_carbon")] == [200]
    replays = query(stack.db, f"SELECT via, previous_status FROM replays WHERE event_id = {event_id} ORDER BY id")
    assert replays == [("cli", "failed"), ("cli", "succeeded")]


# -- 8. two receivers, two workers, 500 deliveries with duplicates ---------------------------


def test_two_receivers_and_two_workers_settle_500_deliveries_with_duplicates_exactly_once(stack: Stack):
    stack.rules.write_text(TWO_RULES)
    bases = stack.up(receivers=2, workers=2, CARBONHOOK_LEASE_S="30")
    # 400 subjects; 100 of them get a second event (a later timestamp); 100 exact re-sends.
    first = [make_body(subject=f"crp_load{i}") for i in range(400)]
    second = [make_body(subject=f"crp_load{i}", ts="2026-04-07T09:00:00Z") for i in range(0, 400, 4)]
    distinct = first + second
    rng = random.Random(8)
    deliveries = distinct + rng.sample(distinct, 100)
    rng.shuffle(deliveries)

    clients = [httpx.Client(timeout=30) for _ in bases]
    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(
                pool.map(lambda n: stack.post(bases[n % 2], deliveries[n], clients[n % 2]), range(len(deliveries)))
            )
    finally:
        for client in clients:
            client.close()
    assert Counter(a.status_code for a in answers) == Counter({202: 500, 200: 100})
    assert len({int(a.json()["id"]) for a in answers}) == 500

    stack.wait(lambda: stack.statuses() == Counter({"succeeded": 500}), "all 500 events to succeed", timeout=120)
    impacts = stack.emulator.impacts
    assert len(impacts) == 400 * 2
    per_capture = Counter(i["metadata"]["carbonhook_capture"] for i in impacts)
    assert set(per_capture.values()) == {1}
    captures = stack.captures()
    assert len(captures) == 800
    assert Counter((rule, status) for rule, _, status, _ in captures) == Counter(
        {("published", "captured"): 400, ("flat", "captured"): 400}
    )
    assert {str(row[0]) for row in query(stack.db, "SELECT id FROM captures")} == set(per_capture)

