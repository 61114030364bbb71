"""The value objects a capture passes through: planned by the rules, answered by 1ClickImpact."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlannedCapture:
    """One call to make (or not: `skipped` under 1 lb, `dry_run`); `part` splits big amounts."""

    rule: str
    part: int
    action: str
    amount: int
    customer_email: str | None
    customer_name: str | None
    notify: bool
    dry_run: bool
    skipped: bool = False
    # What the impact report names it by, where planning knew them: the site the event names
    # and CarbonPass's reporting period of the emissions read.
    site_id: str | None = None
    period: str | None = None


@dataclass(frozen=True, slots=True)
class Impact:
    """What 1ClickImpact says it did: `(user_id, time_utc)` identifies it."""

    user_id: str
    time_utc: str
    amount: int
    customer_id: str | None = None
    customer_email: str | None = None
    metadata: dict[str, str] | None = None
    action: str | None = None  # which create call made it, where a listing says
