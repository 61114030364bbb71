"""After the soak's chaos: wait (bounded) until every delivery is answered and every event final,
replay the failed ones as an admin would, then a quiet spell and the same check again. The
database is read with plain SQL, and may still be coming back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import psycopg

from bench.processes import ROOT
from bench.traffic import Sender

OPEN_EVENTS = ("pending", "queued", "processing")
OPEN_CAPTURES = ("pending", "unknown")
REPLAY_ROUNDS = 3


def say(text: str) -> None:
    """A line of progress on stderr (stdout is kept for the summary)."""
    print(f"[soak {datetime.now().strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, connect_timeout=3, autocommit=True)


def database_state(url: str) -> dict[str, Any] | None:
    """Events and captures by status, and how many are open; None if the database is down."""
    try:
        with connect(url) as conn:
            events = dict(conn.execute("SELECT status, count(*) FROM events GROUP BY status").fetchall())
            captures = dict(conn.execute("SELECT status, count(*) FROM captures GROUP BY status").fetchall())
    except psycopg.Error:
        return None
    return {
        "open_events": sum(events.get(s, 0) for s in OPEN_EVENTS),
        "open_captures": sum(captures.get(s, 0) for s in OPEN_CAPTURES),
        "failed": events.get("failed", 0),
        "events": events,
        "captures": captures,
    }


class Settler:
    def __init__(
        self,
        url: str,
        env: Mapping[str, str],
        sender: Sender,
        supervise: Callable[[], None],
        *,
        timeout_s: float,
        quiet_s: float,
        stall_s: float,
    ) -> None:
        self.url = url
        self.env = dict(env)
        self.sender = sender
        self.supervise = supervise  # a process that dies meanwhile is restarted, and recorded
        self.timeout_s = timeout_s
        self.quiet_s = quiet_s
        self.stall_s = stall_s  # no change in the counts for this long: it will not settle
        self.replays: list[dict[str, Any]] = []

    def connect(self) -> psycopg.Connection[Any]:
        return connect(self.url)

    def settle(self) -> bool:
        """True once everything is final (failed events replayed up to `REPLAY_ROUNDS` times),
        twice, `quiet_s` apart: a create that finishes late may land in between."""
        deadline = time.monotonic() + self.timeout_s
        self.sender.give_up_at = deadline
        checked_quiet = False
        last_report = 0.0
        seen, seen_since = None, time.monotonic()
        while time.monotonic() < deadline:
            self.supervise()
            state = database_state(self.url)
            # Progress: events and captures reaching an end (events flip between queued and
            # processing while they wait, which is not progress).
            counts = None if state is None else (
                sum(state["events"].values()) - state["open_events"],
                sum(state["captures"].values()) - state["open_captures"],
            )
            if counts != seen:
                seen, seen_since = counts, time.monotonic()
            elif state is not None and state["open_events"] and time.monotonic() - seen_since > self.stall_s:
                say(f"NOT SETTLING: no event or capture reached an end for {self.stall_s:g}s: {state}")
                return False
            # A failed event may leave captures open (never sent, or unknown): a replay is
            # what settles them, so only events (and answers) are waited for here.
            open_now = state is None or state["open_events"] or not self.sender.done()
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                say(f"settling: {self.sender.unanswered()} sends unanswered; {state}")
            if open_now:
                time.sleep(1)
                continue
            assert state is not None
            if state["failed"]:
                if len(self.replays) >= REPLAY_ROUNDS:
                    say(f"{state['failed']} events still failed after {REPLAY_ROUNDS} replays")
                    return True  # final, and the verdict shows them
                self.replay_failed()
                checked_quiet = False
                continue
            if state["open_captures"]:
                say(f"every event final, yet {state['open_captures']} captures open: {state['captures']}")
            if checked_quiet:
                return True
            say(f"all final; quiet for {self.quiet_s:g}s (a late create may still land), then once more")
            time.sleep(self.quiet_s)
            checked_quiet = True
        say(f"NOT SETTLED within {self.timeout_s:g}s: {database_state(self.url)}, "
            f"{self.sender.unanswered()} sends unanswered")
        return False

    def replay_failed(self) -> None:
        """`carbonhook events replay --status failed`, after noting why each had failed."""
        with self.connect() as conn:
            failed = conn.execute(
                "SELECT e.id, e.subject_id, e.last_error, "
                "(SELECT string_agg(c.id || ':' || c.status, ' ') FROM captures c WHERE c.event_id = e.id) "
                "FROM events e WHERE e.status = 'failed' ORDER BY e.id"
            ).fetchall()
        say(f"replaying {len(failed)} failed events: " + "; ".join(f"{i} {s}: {(e or '')[:120]}" for i, s, e, _ in failed[:5]))
        done = subprocess.run(
            [sys.executable, "-m", "carbonhook", "events", "replay", "--status", "failed", "--reason", "soak: after the chaos"],
            env={**{k: v for k, v in os.environ.items() if not k.startswith("CARBONHOOK_")}, **self.env},
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        )
        self.replays.append({
            "events": [{"id": i, "subject": s, "last_error": e, "captures": c} for i, s, e, c in failed],
            "exit_code": done.returncode,
            "output": (done.stdout + done.stderr)[-500:],
        })
