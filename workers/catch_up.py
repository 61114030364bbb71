"""Catch-up for missed bill confirmations: read every site's emissions and store each new
reading as an `emissions.catch_up` event, which the `offset_delta` rules then offset like a bill.

If carbonhook was down longer than CarbonPass retries, the bill confirmations of that time are
gone, and with them the offsets of the growth they reported. A catch-up reads the sites
(`GET /company`) and each one's emissions (`GET /emissions?siteId=`), all before storing
anything, so that a CarbonPass error leaves nothing half done. What is offset is decided where a
bill's offset is: the ledger's delta mark per rule, site and period (`Ledger.ensure_delta`), so
a catch-up beside a bill of the same growth never offsets a tonne twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from carbonhook.catch_ups import MAX_PERIOD_CHARS, CatchUpEvents, Reading, Stored
from carbonhook.errors import PermanentError
from carbonhook.event_types import EMISSIONS_CATCH_UP
from carbonhook.schema import utcnow
from workers.carbonpass import CarbonPassClient
from workers.planning import Resources, explain
from workers.rules import RuleSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuleOffset:
    """What one rule would offset for one site now (`--dry-run`)."""

    rule: str
    site_id: str
    period: str
    matched: bool
    reasons: list[str]
    current_tco2e: float = 0.0
    offset_before_tco2e: float = 0.0
    lbs: int = 0
    dry_run: bool = False  # the rules file's dry run: recorded, never sent

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "site_id": self.site_id,
            "period": self.period,
            "matched": self.matched,
            "reasons": self.reasons,
            "current_tco2e": self.current_tco2e,
            "offset_before_tco2e": self.offset_before_tco2e,
            "growth_tco2e": round(max(0.0, self.current_tco2e - self.offset_before_tco2e), 6),
            "lbs": self.lbs,
            "dry_run": self.dry_run,
        }


@dataclass
class CatchUpReport:
    """What one catch-up read, and stored (or, in a dry run, would offset)."""

    dry_run: bool
    note: str | None = None
    readings: list[Reading] = field(default_factory=list)
    stored: list[Stored] = field(default_factory=list)
    offsets: list[RuleOffset] = field(default_factory=list)

    @property
    def new_events(self) -> list[int]:
        return [s.event_id for s in self.stored if s.created]

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "note": self.note,
            "sites": [
                {"site_id": r.site_id, "period": r.period, "total_tco2e": r.tco2e}
                for r in self.readings
            ],
            "stored": [
                {
                    "event_id": s.event_id,
                    "created": s.created,
                    "site_id": s.reading.site_id,
                    "period": s.reading.period,
                    "total_tco2e": s.reading.tco2e,
                    "subject_id": s.reading.subject_id,
                }
                for s in self.stored
            ],
            "offsets": [o.as_dict() for o in self.offsets],
        }


@dataclass
class CatchUp:
    """`run()` reads, stores new readings and hands them to `hand_off` (None: they wait,
    `pending`, for a sweeper); `run(dry_run=True)` reads and says what would be offset."""

    carbonpass: CarbonPassClient
    events: CatchUpEvents
    rules: Callable[[], RuleSet]
    hand_off: Callable[[Sequence[int]], None] | None

    def run(self, *, dry_run: bool = False) -> CatchUpReport:
        ruleset = self.rules()
        report = CatchUpReport(dry_run=dry_run)
        if not ruleset.for_event(EMISSIONS_CATCH_UP):
            report.note = "no offset_delta rule: nothing to catch up"
            return report
        company = self.carbonpass.company()
        report.readings = [self._read(site_id) for site_id in _site_ids(company)]
        if dry_run:
            for reading in report.readings:
                report.offsets += self._preview(ruleset, reading, company)
            return report
        report.stored = self.events.store(report.readings)
        new = report.new_events
        if new and self.hand_off is not None:
            self.hand_off(new)
        if new:
            log.info("catch-up stored %d new readings as events %s", len(new), new)
        return report

    def _read(self, site_id: str) -> Reading:
        emissions = self.carbonpass.emissions(site_id)
        what = f"GET /emissions?siteId={site_id}"
        period = emissions.get("reportingPeriod")
        total = emissions.get("totalTco2e")
        if not isinstance(period, str) or not period or len(period) > MAX_PERIOD_CHARS:
            raise PermanentError(
                f"{what}: reportingPeriod {period!r} is not a period of 1 to "
                f"{MAX_PERIOD_CHARS} characters"
            )
        if isinstance(total, bool) or not isinstance(total, (int, float)) or total < 0:
            raise PermanentError(f"{what}: totalTco2e {total!r} is not a number of tonnes")
        return Reading(site_id, period, float(total), emissions, utcnow())

    def _preview(
        self, ruleset: RuleSet, reading: Reading, company: dict[str, Any]
    ) -> list[RuleOffset]:
        """Each rule's offset for the reading, as a worker would plan it now."""
        resources = Resources(event=reading.data(), company=company, emissions=reading.emissions)
        offsets = []
        for outcome in explain(ruleset, EMISSIONS_CATCH_UP, resources):
            plan = outcome.delta
            if plan is None:
                offsets.append(
                    RuleOffset(
                        outcome.rule, reading.site_id, reading.period, False, outcome.reasons
                    )
                )
                continue
            before = self.events.offset_before(plan.rule_name, plan.site_id, plan.period)
            captures, _ = plan.captures_after(before)
            offsets.append(
                RuleOffset(
                    outcome.rule,
                    plan.site_id,
                    plan.period,
                    True,
                    [],
                    current_tco2e=plan.current_tco2e,
                    offset_before_tco2e=before,
                    lbs=sum(c.amount for c in captures if not c.skipped),
                    dry_run=plan.dry_run,
                )
            )
        return offsets


def _site_ids(company: dict[str, Any]) -> list[str]:
    """The ids of the company's sites, as `GET /company` lists them."""
    sites = company.get("sites")
    if not isinstance(sites, list):
        raise PermanentError("GET /company: the answer lists no sites")
    ids = []
    for site in sites:
        site_id = site.get("id") if isinstance(site, dict) else None
        if not isinstance(site_id, str) or not site_id:
            raise PermanentError(f"GET /company: a site without an id: {site!r}"[:300])
        ids.append(site_id)
    return ids
