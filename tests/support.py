"""What tests share besides fixtures: the services' addresses, the test keys, helpers that start,
wait for, sign and query things. Service-backed tests skip locally when the service is absent
and fail in CI (`service_missing`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

CI = bool(os.environ.get("CI"))
ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("CARBONHOOK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CARBONHOOK_TEST_REDIS", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("CARBONHOOK_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")
SECRET = "test-webhook-secret-5b8e2f"
CP_KEY = "cp_live_sandbox"
IMPACT_KEY = "test_sandbox"


def service_missing(what: str, exc: BaseException) -> None:
    """Skip when a service is absent locally; fail in CI, where it must be there."""
    message = f"{what} not reachable: {exc}"
    if CI:
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- databases ------------------------------------------------------------------------------


def migrate(url: str) -> None:
    from carbonhook.migrate import upgrade

    upgrade(url)


TABLES = (
    "events, event_attempts, replays, captures, decisions, spend, delta_marks, notifications, "
    "rate_budgets"
)


# -- the emulator ---------------------------------------------------------------------------


class RunningEmulator:
    def __init__(self, state: Any, server: Any) -> None:
        self.state = state
        self.server = server
        self.base = f"http://127.0.0.1:{server.port}"

    @property
    def impacts(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.base}/_emulator/impacts", timeout=5).json())

    def control(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        return httpx.post(f"{self.base}/_emulator/{path}", json=payload or {}, timeout=5).json()


def settings_for_test(db: str, emulator: RunningEmulator | None = None, **overrides: Any) -> Any:
    from carbonhook.settings import Settings

    values: dict[str, Any] = {
        "database_url": db,
        "broker_url": "memory://",
        "webhook_secrets": (SECRET,),
        "carbonpass_api_key": CP_KEY,
        "impact_api_key": IMPACT_KEY,
        "http_timeout_s": 5,
        "retry_min_backoff_s": 0.1,
        "retry_max_backoff_s": 1,
        "reconcile_after_s": 1,
    }
    if emulator is not None:
        values["carbonpass_api_url"] = f"{emulator.base}/api/v1"
        values["impact_api_url"] = emulator.base
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# -- real processes -------------------------------------------------------------------------


class Proc:
    """A `carbonhook` subprocess with its output in a file (read it when a test fails)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "carbonhook", *args],
            env={**os.environ, **env},
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int | None = None, timeout: float = 30) -> int | None:
        import signal as signals

        if self.popen.poll() is None:
            self.popen.send_signal(sig or signals.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self.handle.close()
        return self.popen.returncode


def wait_http(url: str, proc: Proc | None = None, timeout: float = 30, verify: Any = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(f"process exited early:\n{proc.output()}")
        try:
            httpx.get(url, timeout=1, verify=verify)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer in {timeout}s" + (f":\n{proc.output()}" if proc else ""))


def wait_until(predicate: Any, timeout: float = 30, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# The machine is shared and noisy: hypothesis judges correctness here, never speed.


def make_body(event: str = "crp.generated", subject: str = "crp_5tN8xBmQ", ts: str = "2026-04-06T14:35:48Z", **data: Any) -> bytes:
    import json

    return json.dumps({"event": event, "timestamp": ts, "data": {"id": subject, **data}}).encode()


def store_delivery(db: str, body: bytes) -> int:
    """Store a delivery the way the intake does; returns the event id."""
    import asyncio

    from receiver.events import parse_delivery
    from receiver.intake import create_intake

    async def record() -> int:
        intake = create_intake(db)
        try:
            return (await intake.record(parse_delivery(body))).id
        finally:
            await intake.close()

    return asyncio.run(record())


def keep_invalid(db: str, body: bytes, reason: str = "did not parse") -> tuple[int, bool]:
    """Keep a signed body that did not parse, the way the intake does; its id and whether new."""
    import asyncio

    from receiver.intake import create_intake

    async def keep() -> tuple[int, bool]:
        intake = create_intake(db)
        try:
            kept = await intake.keep_invalid(body, reason)
            return kept.id, kept.created
        finally:
            await intake.close()

    return asyncio.run(keep())


def record_delivery(db: str, body: bytes) -> tuple[int, bool]:
    """Store a delivery the way the intake does; its id and whether it was new."""
    import asyncio

    from receiver.events import parse_delivery
    from receiver.intake import create_intake

    async def record() -> tuple[int, bool]:
        intake = create_intake(db)
        try:
            recorded = await intake.record(parse_delivery(body))
            return recorded.id, recorded.created
        finally:
            await intake.close()

    return asyncio.run(record())


def query(db: str, sql: str) -> list[tuple[Any, ...]]:
    from sqlalchemy import create_engine, text

    from carbonhook.database import sync_url

    engine = create_engine(sync_url(db))
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]
    finally:
        engine.dispose()


def sent_statements(engine: Any) -> list[str]:
    """What the engine's psycopg cursors send from now on, whoever runs them."""
    import psycopg
    from sqlalchemy import event

    sent: list[str] = []

    class Counting(psycopg.Cursor[Any]):
        def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            sent.append(str(query))
            return super().execute(query, *args, **kwargs)

    def count(dbapi_connection: Any, *_: Any) -> None:
        dbapi_connection.cursor_factory = Counting

    event.listen(engine, "checkout", count)
    return sent


# -- a receiver over real HTTP --------------------------------------------------------------


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    from receiver.signature import sign

    return {"X-CarbonPass-Signature": sign(body, secret=secret.encode()), "Content-Type": "application/json"}


class Receiver:
    def __init__(self, base: str, db: str, broker: Any) -> None:
        self.base = base
        self.url = f"{base}/webhooks/carbonpass"
        self.db = db
        self.broker = broker

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(self.url, content=body, headers=signed(body) if headers is None else headers, timeout=10)

    def rows(self, sql: str = "SELECT id, type, subject_id, status FROM events ORDER BY id") -> list[tuple[Any, ...]]:
        from sqlalchemy import create_engine, text

        from carbonhook.database import sync_url

        engine = create_engine(sync_url(self.db))
        with engine.connect() as conn:
            found = [tuple(r) for r in conn.execute(text(sql))]
        engine.dispose()
        return found


def start_receiver(db: str, **overrides: Any) -> tuple[Any, Receiver]:
    from carbonhook.cli.bootstrap import build_receiver_app
    from carbonhook.cli.lifecycle import start_server
    from carbonhook.queue import make_broker

    broker = make_broker("memory://")
    settings = settings_for_test(db, **overrides)
    server = start_server(build_receiver_app(settings, broker=broker), "127.0.0.1", 0, lifespan="on")
    return server, Receiver(f"http://127.0.0.1:{server.port}", db, broker)


# -- a worker's processor ------------------------------------------------------------------


class Harness:
    """A worker's processor on a real database, against the emulator over real HTTP; its
    retries are collected, not enqueued."""

    def __init__(self, db: str, emulator: RunningEmulator, rules: str, **overrides: Any) -> None:
        from dramatiq.brokers.stub import StubBroker

        from carbonhook.cli.bootstrap import build_worker

        self.db = db
        self.emulator = emulator
        self.broker = StubBroker()
        self.enqueued: list[tuple[int, float]] = []
        settings = settings_for_test(db, emulator, **overrides)
        from workers.rules import RulesHolder, parse_rules

        self.runtime = build_worker(settings, broker=self.broker, rules=RulesHolder(settings.rules_file, parse_rules(rules)))
        self.processor = self.runtime.processor
        self.processor.enqueue = lambda event_id, delay: self.enqueued.append((event_id, delay))

    def deliver(self, body: bytes) -> int:
        return store_delivery(self.db, body)

    def status(self, event_id: int) -> tuple[str, str | None]:
        return query(self.db, f"SELECT status, last_error FROM events WHERE id = {event_id}")[0]

    def due_now(self, event_id: int) -> None:
        """Let the retry delay pass at once."""
        from sqlalchemy import create_engine, text

        from carbonhook.database import sync_url

        engine = create_engine(sync_url(self.db))
        with engine.begin() as conn:
            conn.execute(text("UPDATE events SET available_at = :t WHERE id = :id"), {"t": "2000-01-01 00:00:00", "id": event_id})
        engine.dispose()

    def captures(self) -> list[tuple[Any, ...]]:
        return query(self.db, "SELECT rule, subject_id, part, amount, status, user_id, customer_email FROM captures ORDER BY id")

    def settle(self, event_id: int, timeout: float = 30) -> str:
        """Process the event until it ends, letting each retry delay pass at once (a listing's
        lag and a settle window still pass in real time)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.processor.process(event_id)
            if status not in ("retry", None):
                return str(status)
            assert time.monotonic() < deadline, self.status(event_id)
            time.sleep(0.2)
            self.due_now(event_id)


# -- a webhook receiver for notifications ----------------------------------------------------


class _Served:
    """A test server on a thread of its own, stopped by `stop`."""

    _server: Any = None

    def _serve(self, server: Any) -> None:
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class Catcher(_Served):
    """A local webhook receiver: keeps every JSON body it is sent, answers `status`."""

    def __init__(self, port: int | None = None, status: int = 200) -> None:
        self.port = port or free_port()
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/T000/B000/secretpath"

    def start(self) -> Catcher:
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with catcher._lock:
                    catcher.bodies.append(json.loads(raw))
                    catcher.paths.append(self.path)
                self.send_response(catcher.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._serve(ThreadingHTTPServer(("127.0.0.1", self.port), Handler))
        return self



class SmtpCatcher(_Served):
    """A local SMTP server, just enough of RFC 5321 for smtplib (EHLO, AUTH PLAIN, MAIL, RCPT,
    DATA): keeps each message's envelope and text and the credentials it was given."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[dict[str, Any]] = []
        self.logins: list[str] = []

    def start(self) -> SmtpCatcher:
        import socketserver

        catcher = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write(line.encode() + b"\r\n")

            def handle(self) -> None:
                envelope: dict[str, Any] = {"to": []}
                self.reply("220 catcher ESMTP")
                while line := self.rfile.readline().decode().rstrip("\r\n"):
                    verb = line.split(" ", 1)[0].upper()
                    if verb == "EHLO":
                        self.reply("250-catcher")
                        self.reply("250 AUTH PLAIN")
                    elif verb == "AUTH":
                        catcher.logins.append(line.split(" ", 2)[2])
                        self.reply("235 ok")
                    elif verb == "MAIL":
                        envelope["from"] = line.split(":", 1)[1].strip()
                        self.reply("250 ok")
                    elif verb == "RCPT":
                        envelope["to"].append(line.split(":", 1)[1].strip())
                        self.reply("250 ok")
                    elif verb == "DATA":
                        self.reply("354 go on")
                        data = []
                        while (row := self.rfile.readline().decode()) not in (".\r\n", ""):
                            data.append(row)
                        catcher.messages.append({**envelope, "data": "".join(data)})
                        envelope = {"to": []}
                        self.reply("250 kept")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("250 ok")

        server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._serve(server)
        return self

