"""Spend against the operator's limits, per action, per UTC day and month, reserved atomically.

A capture reserves its amount (pounds of carbon, trees, pounds of plastic) when its first
attempt begins, in the same transaction that marks the attempt, so concurrent workers cannot
overshoot a limit; a definite refusal, or a capture superseded before it was sent, gives it
back. A window is a row of `spend`: carbon's are `day:2026-11-25` and `month:2026-11`, the
other actions' carry their prefix (`trees:day:2026-11-25`, `waste:month:2026-11`).
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy import Connection, bindparam, select, update

from carbonhook.actions import ACTIONS, Action
from carbonhook.database import insert_ignore
from carbonhook.schema import Capture, Spend

NO_LIMIT = 2**63 - 1  # the largest BIGINT


class SpendLimits(Protocol):
    """The rules file's `[limits]`: None means no limit."""

    @property
    def max_lbs_per_day(self) -> int | None: ...
    @property
    def max_lbs_per_month(self) -> int | None: ...
    @property
    def max_trees_per_day(self) -> int | None: ...
    @property
    def max_trees_per_month(self) -> int | None: ...
    @property
    def max_waste_lbs_per_day(self) -> int | None: ...
    @property
    def max_waste_lbs_per_month(self) -> int | None: ...


def spend_windows(action: str, day: str, limits: SpendLimits | None) -> dict[str, int | None]:
    """`action`'s spend windows for the UTC `day` and its month, in the order they are locked,
    each with its limit (None: no limit, or `limits` is None)."""
    spec = ACTIONS[Action(action)]
    per_day, per_month = (getattr(limits, key) if limits else None for key in spec.limits)
    return {f"{spec.window}day:{day}": per_day, f"{spec.window}month:{day[:7]}": per_month}


def reserve(conn: Connection, amount: int, windows: dict[str, int | None]) -> bool:
    """Add `amount` to the spend `windows`; False if a limit would be passed, in which case
    the caller must roll back (a window may already have been added to).

    Every capture goes through these two rows. They are updated one at a time, always the day
    first: one UPDATE for both would lock them in whatever order PostgreSQL finds them, and
    two reservations taking them in opposite orders deadlock.
    """
    for window, limit in windows.items():
        # With a limit, checked and added in one statement: concurrent workers cannot overshoot.
        stmt = _ADD_SPEND if limit is None else _ADD_SPEND_WITHIN
        params = {"spend_window": window, "amount": amount, "limit": limit}
        if conn.execute(stmt, params).rowcount == 0:
            # No row yet (the first capture of a day or month), or over the limit.
            insert_ignore(conn, Spend, {"window": window, "lbs": 0})
            if conn.execute(stmt, params).rowcount == 0:
                return False
    return True


def release(conn: Connection, capture_id: int) -> None:
    """Give back what capture `capture_id` reserved, if it reserved anything."""
    row = conn.execute(
        select(Capture.action, Capture.amount, Capture.spend_day).where(Capture.id == capture_id)
    ).first()
    if row is None or row.spend_day is None:
        return
    for window in spend_windows(row.action, row.spend_day, None):
        conn.execute(update(Spend).where(Spend.window == window).values(lbs=Spend.lbs - row.amount))
    conn.execute(update(Capture).where(Capture.id == capture_id).values(spend_day=None))


def limit_params(amount: int, windows: dict[str, int | None]) -> dict[str, Any]:
    """The parameters of a one-statement reservation (`NO_LIMIT` for no limit)."""
    (day_window, day_limit), (month_window, month_limit) = windows.items()
    return {
        "amount": amount,
        "day_window": day_window,
        "month_window": month_window,
        "day_limit": NO_LIMIT if day_limit is None else day_limit,
        "month_limit": NO_LIMIT if month_limit is None else month_limit,
    }


def spent(conn: Connection, window: str) -> int:
    """What is reserved in a window (`day:YYYY-MM-DD`, `trees:month:YYYY-MM`, …)."""
    return int(conn.execute(select(Spend.lbs).where(Spend.window == window)).scalar() or 0)


# Built once: building a statement costs more CPU than sending it (bench/FINDINGS.md). A
# parameter named like a column of the table an UPDATE writes would be taken for a value to
# set: hence `spend_window`.
_ADD_SPEND = (
    update(Spend)
    .where(Spend.window == bindparam("spend_window"))
    .values(lbs=Spend.lbs + bindparam("amount"))
)
_ADD_SPEND_WITHIN = _ADD_SPEND.where(Spend.lbs + bindparam("amount") <= bindparam("limit"))
