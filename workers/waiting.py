"""Rules that wait (`wait_until`, `wait_for`): when to look again, and what the event says."""

from __future__ import annotations

from collections.abc import Sequence

from workers.planning import Outcome


def recheck_delay_s(waited_s: float, left_s: float, *, min_s: float, max_s: float) -> float:
    """How long a waiting event sleeps before its next re-check: as long as it has waited so
    far (so the intervals double: 1 min, 2, 4, …) within `min_s`..`max_s`, and never past the
    end of the shortest wait left (`left_s`), so an expiry is seen when it comes."""
    return max(0.0, min(max(waited_s, min_s), max_s, left_s))


def split_waits(
    outcomes: Sequence[Outcome], waited_s: float
) -> tuple[list[Outcome], list[Outcome]]:
    """The waiting outcomes still within their `wait_for` after `waited_s`, and those over."""
    still = [outcome for outcome in outcomes if waited_s < outcome.wait_for_s]
    over = [outcome for outcome in outcomes if waited_s >= outcome.wait_for_s]
    return still, over


def waiting_note(outcomes: Sequence[Outcome]) -> str:
    """What the event waits for: each rule and the conditions that do not hold yet."""
    return "waiting for " + _rules_and_reasons(outcomes)


def expired_note(outcomes: Sequence[Outcome]) -> str:
    """Which rules' waits expired, and on what: they captured nothing."""
    return "wait expired, nothing captured for " + _rules_and_reasons(outcomes)


def _rules_and_reasons(outcomes: Sequence[Outcome]) -> str:
    return "; ".join(
        f"rule {outcome.rule!r} ({', '.join(outcome.waiting)})" for outcome in outcomes
    )
