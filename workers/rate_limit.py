"""Every worker's calls to one API spend from one shared budget, and wait out one shared pause
after a 429 (the budgets themselves: carbonhook/rate_budgets.py)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from carbonhook.errors import RateBudgetUnavailable, RateLimited
from carbonhook.metrics import metrics
from carbonhook.rate_budgets import Budget

log = logging.getLogger(__name__)

# The longest pause a 429 sets, whatever its `Retry-After` says.
MAX_PAUSE_S = 3600.0
# A 429 without `Retry-After`: a pause drawn at random up to this, doubled for each 429 in a
# row (full jitter: workers that were refused together do not come back together).
FIRST_BACKOFF_S = 1.0


def full_jitter_s(strikes: int, draw: Callable[[float], float]) -> float:
    """A backoff for the `strikes`-th 429 in a row: `draw(ceiling)` with the ceiling doubling
    from `FIRST_BACKOFF_S`, never above `MAX_PAUSE_S`."""
    ceiling = FIRST_BACKOFF_S * 2.0 ** min(max(0, strikes - 1), 32)
    return min(MAX_PAUSE_S, draw(min(MAX_PAUSE_S, ceiling)))


def _uniform(high: float) -> float:
    return random.uniform(0.0, high)  # spreading retries, not a secret


@dataclass
class RateLimit:
    """The shared budget of the API named `api`, as its calls use it."""

    api: str
    budget: Budget
    max_wait_s: float  # how long a call waits for a request before its event is retried
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    draw: Callable[[float], float] = field(default=_uniform)

    def take(self) -> None:
        """Spend one request, waiting for it up to `max_wait_s`; `RateLimited` (nothing was
        sent) when none comes by then, with a time to try again spread by jitter."""
        started = self.clock()
        while True:
            now = self.clock()
            try:
                wait_s = self.budget.take(now)
            except RateBudgetUnavailable as exc:
                # Not the event's fault, and nothing was sent: it waits like any other call
                # held back, and the budget is read again when it comes back.
                metrics().rate_limited.labels(self.api).inc()
                raise RateLimited(f"{exc}; not sent") from None
            waited_s = now - started
            if wait_s <= 0:
                if waited_s > 0:
                    observed = metrics()
                    observed.rate_waits.labels(self.api).inc()
                    observed.rate_wait_seconds.labels(self.api).inc(waited_s)
                return
            if waited_s + wait_s > self.max_wait_s:
                metrics().rate_limited.labels(self.api).inc()
                raise RateLimited(
                    f"{self.api}: not sent, no request of its rate limit within "
                    f"{self.max_wait_s:g} s (next in {wait_s:.1f} s)",
                    retry_after=wait_s + self.draw(self.max_wait_s),
                )
            self.sleep(wait_s)

    def close(self) -> None:
        self.budget.close()

    def pause(self, retry_after_s: float | None) -> float:
        """Pause every worker's calls after a 429: for `retry_after_s` (at most `MAX_PAUSE_S`),
        or without it a backoff with full jitter. Returns the pause's length."""
        now = self.clock()
        try:
            if retry_after_s is None:
                pause_s, by = full_jitter_s(self.budget.strike(now), self.draw), "backoff"
            else:
                pause_s, by = min(MAX_PAUSE_S, max(0.0, retry_after_s)), "retry_after"
            self.budget.pause_until(now + pause_s, now)
        except RateBudgetUnavailable as exc:
            # The other workers meet the 429 themselves; this call's event waits all the same.
            log.warning("%s: a 429's pause is not shared: %s", self.api, exc)
            if retry_after_s is None:
                pause_s, by = full_jitter_s(1, self.draw), "backoff"
        metrics().rate_pauses.labels(self.api, by).inc()
        return pause_s
