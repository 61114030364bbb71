"""Admins' decisions on the ledger: each one conditional update on the row's current status,
with its spend change in the same transaction; a refused decision changes nothing."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from carbonhook import spend
from carbonhook.capture_rows import CaptureRow, CaptureRows
from carbonhook.errors import Conflict, NotFound
from carbonhook.schema import Capture, utcnow
from carbonhook.statuses import CaptureStatus


class Decisions(CaptureRows):
    """`approve` and `reject` take `held` rows; `resolve` takes `unknown` rows only (never a
    `pending` one, whose call may be in flight)."""

    def approve(self, capture_id: int) -> CaptureRow:
        """A held capture may be sent once, past the limits."""
        return self._decide(
            capture_id,
            CaptureStatus.HELD,
            {
                "status": CaptureStatus.PENDING,
                "approved": True,
                "attempted_at": None,
                "attempt_token": None,
                "note": "approved past the limits",
            },
        )

    def reject(self, capture_id: int) -> CaptureRow:
        """A held capture is never sent (nothing was reserved for it)."""
        return self._decide(
            capture_id,
            CaptureStatus.HELD,
            {"status": CaptureStatus.REJECTED, "note": "rejected by an admin"},
        )

    def resolve(self, capture_id: int, *, captured: bool) -> CaptureRow:
        """An admin's answer for an `unknown` capture after checking 1ClickImpact; not
        captured gives its reserved spend back in the same transaction."""
        if captured:
            values = {"status": CaptureStatus.CAPTURED, "note": "resolved by an admin: captured"}
        else:
            values = {
                "status": CaptureStatus.FAILED,
                "note": "resolved by an admin: not captured",
            }
        return self._decide(capture_id, CaptureStatus.UNKNOWN, values, release=not captured)

    def _decide(
        self, capture_id: int, from_status: str, values: dict[str, Any], *, release: bool = False
    ) -> CaptureRow:
        """One conditional update on the row's current status; a refused decision changes
        nothing."""
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(Capture)
                .where(Capture.id == capture_id, Capture.status == from_status)
                .values(updated_at=utcnow(), **values)
            ).rowcount
            if changed and release:
                spend.release(conn, capture_id)
            rows = self._rows(conn, Capture.id == capture_id)
        if not rows:
            raise NotFound(f"capture {capture_id} not found")
        if not changed:
            raise Conflict(f"capture {capture_id} is {rows[0].status}, not {from_status}")
        return rows[0]
