"""What a rate setting (`CARBONHOOK_CARBONPASS_RATE`, `CARBONHOOK_IMPACT_RATE`) means: requests a
second and a burst, or no limit (carbonhook/rate_budgets.py keeps the budgets)."""

from __future__ import annotations

import re
from typing import NamedTuple

# An API's request budget: `5` is 5 requests a second with a burst of twice that, `5/20` names
# the burst, `0` or `off` sets no limit.
RATE = re.compile(r"\s*(?P<per_s>\d+(?:\.\d+)?)\s*(?:/\s*(?P<burst>\d+)\s*)?")
RATE_OFF = ("0", "off")


class Rate(NamedTuple):
    """Requests a second on average, and how many may go at once after a quiet spell."""

    per_s: float
    burst: int


def parse_rate(value: str) -> Rate | None:
    """`5` (burst 10), `5/20` or `0.5/1`; None for `0` or `off` (no limit)."""
    if value.strip().lower() in RATE_OFF:
        return None
    match = RATE.fullmatch(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not a rate: requests a second (`5`), with a burst if wanted "
            "(`5/20`), or `off`"
        )
    per_s = float(match["per_s"])
    burst = int(match["burst"]) if match["burst"] else max(1, round(2 * per_s))
    if per_s <= 0 or burst < 1:
        raise ValueError(f"{value!r}: the rate and the burst must be above 0 (or `off`)")
    return Rate(per_s, burst)
