"""What the audit of the ledger against 1ClickImpact's records writes: which captures a listing
confirmed, which records it attached to the rows they are tagged with, which rows it found
wrong, and the duplicates it reversed (carbonhook/schema.py `Reversal`).

A reversal is written before its cancel call and marked done after it: a cancel whose answer
was lost is sent again by the next audit (1ClickImpact does not reverse twice).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, or_, select, update

from carbonhook import notices, outbox, spend
from carbonhook.captures import Impact
from carbonhook.clock import db_now, seconds_since
from carbonhook.database import insert_ignore
from carbonhook.schema import Capture, Reversal, utcnow
from carbonhook.statuses import CaptureStatus


@dataclass(frozen=True, slots=True)
class PendingReversal:
    capture_id: int
    user_id: str
    time_utc: str
    reason: str


class AuditLog:
    """The audit's reads and writes on the ledger."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def window_start(self, *, at_least_s: float = 86400.0) -> datetime:
        """From when the records must be read: the oldest attempt not yet confirmed by a
        listing, and at least the last `at_least_s`."""
        open_attempt = or_(
            Capture.status == CaptureStatus.CAPTURED,
            Capture.status == CaptureStatus.UNKNOWN,
            (Capture.status == CaptureStatus.PENDING) & Capture.attempt_token.is_not(None),
        )
        with self.engine.connect() as conn:
            oldest = conn.execute(
                select(func.min(Capture.attempted_at)).where(
                    open_attempt, Capture.confirmed_at.is_(None)
                )
            ).scalar()
        floor = utcnow() - timedelta(seconds=at_least_s)
        return floor if oldest is None or oldest > floor else oldest

    def attach(self, capture_id: int, impact: Impact) -> bool:
        """A record tagged with this row stands, and the ledger did not know it: the row is
        captured by it (its amount is counted against the spend windows, past any limit:
        the money is spent)."""
        with self.engine.begin() as conn:
            row = conn.execute(
                select(Capture.status, Capture.action, Capture.amount, Capture.spend_day).where(
                    Capture.id == capture_id
                )
            ).first()
            if row is None or row.status == CaptureStatus.CAPTURED:
                return False
            values = {
                "status": CaptureStatus.CAPTURED,
                "user_id": impact.user_id,
                "time_utc": impact.time_utc,
                "customer_id": impact.customer_id,
                "note": f"found by the audit (was {row.status})",
                "confirmed_at": db_now(),
                "audit_note": None,
                "updated_at": db_now(),
            }
            if row.spend_day is None:
                day = utcnow().date().isoformat()
                spend.reserve(conn, row.amount, spend.spend_windows(row.action, day, None))
                values["spend_day"] = day
            changed = conn.execute(
                update(Capture)
                .where(Capture.id == capture_id, Capture.status == row.status)
                .values(values)
            ).rowcount
        return bool(changed)

    def confirm(self, capture_ids: list[int]) -> None:
        """A listing showed these rows' records: confirmed, any earlier finding cleared."""
        if not capture_ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(Capture)
                .where(Capture.id.in_(capture_ids))
                .values(confirmed_at=db_now(), audit_note=None)
            )

    def captured_between(self, *, since: datetime, older_than_s: float) -> list[int]:
        """Captured rows attempted since `since` and more than `older_than_s` ago."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Capture.id).where(
                    Capture.status == CaptureStatus.CAPTURED,
                    Capture.attempted_at >= since,
                    seconds_since(Capture.attempted_at) > older_than_s,
                )
            )
            return [row[0] for row in rows]

    def stale_unknown(self, *, older_than_s: float) -> list[tuple[int, str | None]]:
        """`unknown` rows whose attempt began more than `older_than_s` ago, with its token."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Capture.id, Capture.attempt_token).where(
                    Capture.status == CaptureStatus.UNKNOWN,
                    seconds_since(Capture.attempted_at) > older_than_s,
                )
            )
            return [(int(row[0]), row[1]) for row in rows]

    def not_found(self, capture_id: int, token: str | None) -> bool:
        """An `unknown` row the listings prove never happened: `failed` (it is sent again when
        its event runs again), its reserved amount given back, if it is still as it was read."""
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(Capture)
                .where(
                    Capture.id == capture_id,
                    Capture.status == CaptureStatus.UNKNOWN,
                    Capture.attempt_token.is_not_distinct_from(token),
                )
                .values(
                    status=CaptureStatus.FAILED,
                    note="not found at 1ClickImpact by the audit: it never happened",
                    updated_at=db_now(),
                )
            ).rowcount
            if changed:
                spend.release(conn, capture_id)
        return bool(changed)

    def flag(self, capture_id: int, note: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(Capture).where(Capture.id == capture_id).values(audit_note=note[:500])
            )

    def begin_reversal(self, capture_id: int, impact: Impact, reason: str) -> bool:
        """Record that `impact` is a duplicate of the row's; False if it was reversed already."""
        with self.engine.begin() as conn:
            insert_ignore(
                conn,
                Reversal,
                {
                    "capture_id": capture_id,
                    "user_id": impact.user_id,
                    "time_utc": impact.time_utc,
                    "reason": reason[:200],
                    "found_at": utcnow(),
                },
            )
            done = conn.execute(
                select(Reversal.cancelled_at).where(
                    Reversal.user_id == impact.user_id, Reversal.time_utc == impact.time_utc
                )
            ).scalar()
        return done is None

    def end_reversal(self, user_id: str, time_utc: str, *, error: str | None = None) -> None:
        """Record the cancel's answer; the first success is told to operators with it."""
        values = {"error": error} if error else {"cancelled_at": utcnow(), "error": None}
        which = [Reversal.user_id == user_id, Reversal.time_utc == time_utc]
        if not error:
            which.append(Reversal.cancelled_at.is_(None))
        with self.engine.begin() as conn:
            if not conn.execute(update(Reversal).where(*which).values(values)).rowcount or error:
                return
            found = conn.execute(
                select(Reversal.capture_id, Capture.event_id)
                .join(Capture, Capture.id == Reversal.capture_id)
                .where(Reversal.user_id == user_id, Reversal.time_utc == time_utc)
            ).first()
            if found is not None:
                capture_id, event_id = found
                notice = notices.reversed_duplicate(capture_id, event_id, user_id, time_utc)
                outbox.write(conn, notice)

    def reversed_impacts(self) -> set[tuple[str, str]]:
        """Every impact reversed (or being reversed) as a duplicate."""
        with self.engine.connect() as conn:
            return {
                (str(u), str(t))
                for u, t in conn.execute(select(Reversal.user_id, Reversal.time_utc))
            }

    def pending_reversals(self) -> list[PendingReversal]:
        """Reversals whose cancel has not been answered yet."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Reversal.capture_id, Reversal.user_id, Reversal.time_utc, Reversal.reason)
                .where(Reversal.cancelled_at.is_(None))
                .order_by(Reversal.id)
            )
            return [PendingReversal(*row) for row in rows]
