"""Admins' decisions on the ledger: each one conditional update on the row's current status,
with its spend change and its record (who, through which interface, why) in the same
transaction; a refused decision changes nothing and records nothing."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, update

from carbonhook import spend
from carbonhook.capture_rows import CaptureRow, CaptureRows
from carbonhook.errors import Conflict, NotFound
from carbonhook.schema import Capture, Decision, utcnow
from carbonhook.statuses import CaptureStatus


class Decisions(CaptureRows):
    """`approve` and `reject` take `held` rows; `resolve` takes `unknown` rows only (never a
    `pending` one, whose call may be in flight). Each names the admin who decided, the
    interface (`via`: cli, api, dashboard) and why."""

    def approve(
        self, capture_id: int, *, admin: str, via: str, reason: str | None = None
    ) -> CaptureRow:
        """A held capture may be sent once, past the limits."""
        return self._decide(
            capture_id,
            "approve",
            CaptureStatus.HELD,
            {
                "status": CaptureStatus.PENDING,
                "approved": True,
                "attempted_at": None,
                "attempt_token": None,
                "note": "approved past the limits",
            },
            admin=admin,
            via=via,
            reason=reason,
        )

    def reject(
        self, capture_id: int, *, admin: str, via: str, reason: str | None = None
    ) -> CaptureRow:
        """A held capture is never sent (nothing was reserved for it)."""
        return self._decide(
            capture_id,
            "reject",
            CaptureStatus.HELD,
            {"status": CaptureStatus.REJECTED, "note": "rejected by an admin"},
            admin=admin,
            via=via,
            reason=reason,
        )

    def resolve(
        self,
        capture_id: int,
        *,
        captured: bool,
        admin: str,
        via: str,
        reason: str | None = None,
    ) -> CaptureRow:
        """An admin's answer for an `unknown` capture after checking 1ClickImpact; not
        captured gives its reserved spend back in the same transaction."""
        if captured:
            values = {"status": CaptureStatus.CAPTURED, "note": "resolved by an admin: captured"}
        else:
            values = {
                "status": CaptureStatus.FAILED,
                "note": "resolved by an admin: not captured",
            }
        return self._decide(
            capture_id,
            "resolve",
            CaptureStatus.UNKNOWN,
            values,
            admin=admin,
            via=via,
            reason=reason,
            release=not captured,
        )

    def _decide(
        self,
        capture_id: int,
        decision: str,
        from_status: str,
        values: dict[str, Any],
        *,
        admin: str,
        via: str,
        reason: str | None,
        release: bool = False,
    ) -> CaptureRow:
        """One conditional update on the row's current status, recorded with who decided; a
        refused decision changes nothing."""
        now = utcnow()
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(Capture)
                .where(Capture.id == capture_id, Capture.status == from_status)
                .values(updated_at=now, **values)
            ).rowcount
            if changed:
                conn.execute(
                    insert(Decision).values(
                        capture_id=capture_id,
                        decision=decision,
                        status=values["status"],
                        at=now,
                        admin=admin,
                        via=via,
                        reason=reason,
                    )
                )
                if release:
                    spend.release(conn, capture_id)
            rows = self._rows(conn, Capture.id == capture_id)
        if not rows:
            raise NotFound(f"capture {capture_id} not found")
        if not changed:
            raise Conflict(f"capture {capture_id} is {rows[0].status}, not {from_status}")
        return rows[0]
