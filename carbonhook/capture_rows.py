"""Reading the capture ledger: a row as a worker sees it, and the ledger as people see it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select, tuple_

from carbonhook import spend
from carbonhook.errors import NotFound
from carbonhook.schema import Capture, Decision, Reversal
from carbonhook.statuses import CaptureStatus


@dataclass(frozen=True, slots=True)
class CaptureRow:
    """One ledger row as a worker reads it: unique per (rule, subject_id, part).

    Its `status` moves through the capture state machine (carbonhook/statuses.py): `pending`
    is written before the call, so every call has an owner; `captured`, `failed` or `unknown`
    record the answer (or its absence); `held` waits for an admin over a spend limit;
    `skipped` and `dry_run` are never sent; `superseded` was never sent and is no longer
    planned. `attempt_token` names the attempt under way or last made: every write of an
    attempt's outcome is conditional on it, so a worker that lost its lease cannot overwrite a
    newer attempt. `spend_day` is the UTC day whose windows hold its reserved amount (None:
    nothing reserved).
    """

    id: int
    event_id: int
    rule: str
    subject_id: str
    part: int
    action: str
    amount: int
    customer_email: str | None
    customer_name: str | None
    notify: bool
    approved: bool
    status: str
    attempts: int
    attempted_at: datetime | None
    spend_day: str | None
    user_id: str | None
    time_utc: str | None
    attempt_token: str | None

    @property
    def in_flight(self) -> bool:
        """A call may have left for this row and its outcome is not known."""
        return self.status == CaptureStatus.UNKNOWN or (
            self.status == CaptureStatus.PENDING and self.attempt_token is not None
        )


ROW_COLUMNS = [getattr(Capture, name) for name in CaptureRow.__slots__]  # type: ignore[attr-defined]


class CaptureRows:
    """Reads of the ledger that every part shares (the ledger, the admins, the audit)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def rows_of_event(self, event_id: int) -> list[CaptureRow]:
        """Every row `event_id` ever planned, whatever its rules say now."""
        with self.engine.connect() as conn:
            return self._rows(conn, Capture.event_id == event_id)

    def owners(self, impacts: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Which row owns each of these `(user_id, time_utc)`, where one does."""
        found: dict[tuple[str, str], int] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(impacts), 500):
                pairs = tuple_(Capture.user_id, Capture.time_utc)
                rows = conn.execute(
                    select(Capture.user_id, Capture.time_utc, Capture.id).where(
                        pairs.in_(impacts[start : start + 500])
                    )
                )
                found.update({(str(u), str(t)): int(i) for u, t, i in rows})
        return found

    def attributed(self, impacts: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these `(user_id, time_utc)` a row owns, or an audit reversed."""
        found: set[tuple[str, str]] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(impacts), 500):
                batch = impacts[start : start + 500]
                for table in (Capture, Reversal):
                    pairs = tuple_(table.user_id, table.time_utc)
                    rows = conn.execute(
                        select(table.user_id, table.time_utc).where(pairs.in_(batch))
                    )
                    found.update((str(u), str(t)) for u, t in rows)
        return found

    def get(self, capture_id: int) -> CaptureRow:
        with self.engine.connect() as conn:
            rows = self._rows(conn, Capture.id == capture_id)
        if not rows:
            raise NotFound(f"capture {capture_id} not found")
        return rows[0]

    def list_captures(
        self,
        *,
        status: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[dict[str, Any]]:
        stmt = select(Capture)
        if status:
            stmt = stmt.where(Capture.status == status)
        if before_id is not None:
            stmt = stmt.where(Capture.id < before_id)
        with self.engine.connect() as conn:
            rows = [
                dict(row._mapping)
                for row in conn.execute(stmt.order_by(Capture.id.desc()).limit(limit))
            ]
            ids = [row["id"] for row in rows]
            reversals = _reversals_of(conn, ids)
            decisions = decisions_of(conn, ids)
        for row in rows:
            row["reversals"] = reversals.get(row["id"], [])
            row["decisions"] = decisions.get(row["id"], [])
        return rows

    def spent(self, window: str) -> int:
        """What is reserved in a spend window (`day:2026-11-25`, `trees:month:2026-11`, …)."""
        with self.engine.connect() as conn:
            return spend.spent(conn, window)

    def open_count(self, event_id: int) -> int:
        """How many of the event's rows have a call whose outcome is not known."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(Capture)
                    .where(
                        Capture.event_id == event_id,
                        Capture.status.in_((CaptureStatus.PENDING, CaptureStatus.UNKNOWN)),
                    )
                ).scalar_one()
            )

    def _rows(self, conn: Connection, where: Any) -> list[CaptureRow]:
        return [
            CaptureRow(*row)
            for row in conn.execute(
                select(*ROW_COLUMNS).where(where).order_by(Capture.part, Capture.id)
            )
        ]


def _by_capture(
    conn: Connection, table: Any, capture_ids: list[int], fields: tuple[str, ...]
) -> dict[int, list[dict[str, Any]]]:
    """`table`'s rows for these captures (`fields` of each), by capture, oldest first."""
    found: dict[int, list[dict[str, Any]]] = {}
    if not capture_ids:
        return found
    rows = conn.execute(select(table).where(table.capture_id.in_(capture_ids)).order_by(table.id))
    for row in rows:
        found.setdefault(row.capture_id, []).append({f: getattr(row, f) for f in fields})
    return found


def _reversals_of(conn: Connection, capture_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """The duplicates the audit reversed for these rows (for people)."""
    fields = ("user_id", "time_utc", "reason", "cancelled_at", "error")
    return _by_capture(conn, Reversal, capture_ids, fields)


def decisions_of(conn: Connection, capture_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Who decided these rows, how, through which interface and why; oldest first."""
    fields = ("decision", "status", "at", "admin", "via", "reason")
    return _by_capture(conn, Decision, capture_ids, fields)
