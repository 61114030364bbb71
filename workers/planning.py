"""Rules applied to an event: a pure function of (event, fetched resources) → planned captures."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from carbonhook.captures import PlannedCapture
from carbonhook.errors import PlanError
from carbonhook.event_types import CRP_GENERATED
from workers.rules import PLACEHOLDER, Rule, RuleSet, _source

LBS_PER_TONNE = Decimal("2204.62262")
MAX_PER_CALL = 10_000_000
# A plan this large is a mistake in the rules or the data, not an intent: refuse it.
MAX_PARTS = 100
_MISSING = object()


@dataclass(frozen=True)
class Resources:
    """What the worker fetched for an event; None where nothing was needed."""

    event: dict[str, Any]
    crp: dict[str, Any] | None = None
    company: dict[str, Any] | None = None
    emissions: dict[str, Any] | None = None


@dataclass(frozen=True)
class DeltaPlan:
    """An `offset_delta` rule's input: the amount depends on what was offset before."""

    rule: Rule
    site_id: str
    period: str
    current_tco2e: float
    dry_run: bool
    customer_email: str | None
    customer_name: str | None

    @property
    def rule_name(self) -> str:
        return self.rule.name

    def captures_after(self, offset_before: float) -> tuple[list[PlannedCapture], float]:
        """The captures to make given the tonnes offset before, and the new mark."""
        return delta_captures(self, offset_before)


@dataclass
class Outcome:
    """Why a rule did or did not match, and what it would send."""

    rule: str
    matched: bool
    reasons: list[str] = field(default_factory=list)
    captures: list[PlannedCapture] = field(default_factory=list)
    delta: DeltaPlan | None = None
    # A matched rule whose `wait_until` does not hold yet: why not (nothing is planned).
    waiting: list[str] = field(default_factory=list)
    wait_for_s: float = 0.0


def needed_sources(ruleset: RuleSet, event_type: str) -> set[str]:
    """The resources to fetch before the rules for `event_type` can run."""
    needed: set[str] = {"crp"} if event_type == CRP_GENERATED else set()
    for rule in ruleset.for_event(event_type):
        needed |= rule.sources()
    return needed


def lookup(resources: Resources, path: str, on: str) -> Any:
    """The value at a dotted path, or `_MISSING`."""
    source = _source(path, on)
    rest = path.split(".", 1)[1] if path.split(".", 1)[0] == source and "." in path else path
    value: Any = getattr(resources, source)
    for key in rest.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def check(value: Any, condition: Any) -> bool:
    """One field's condition: a plain value means equality, a table holds operators."""
    if not isinstance(condition, dict):
        return value is not _MISSING and value == condition
    for op, expected in condition.items():
        if op == "exists":
            if (value is not _MISSING and value is not None) != expected:
                return False
        elif value is _MISSING:
            if op not in ("ne", "not_in"):
                return False
        elif not _compare(op, value, expected):
            return False
    return True


def _compare(op: str, value: Any, expected: Any) -> bool:
    if op == "eq":
        return bool(value == expected)
    if op == "ne":
        return bool(value != expected)
    if op == "in":
        return value in expected
    if op == "not_in":
        return value not in expected
    try:
        if op == "gt":
            return bool(value > expected)
        if op == "gte":
            return bool(value >= expected)
        if op == "lt":
            return bool(value < expected)
        return bool(value <= expected)
    except TypeError:
        return False


def lbs_from_tonnes(tonnes: float, fraction: float) -> int:
    """Tonnes CO2e × fraction in whole pounds, rounded half up."""
    exact = Decimal(str(tonnes)) * Decimal(str(fraction)) * LBS_PER_TONNE
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP)) if exact > 0 else 0


def split(total: int) -> list[int]:
    """Parts of at most 10,000,000 that add up to `total`."""
    if total <= 0:
        return [0]
    parts = [MAX_PER_CALL] * (total // MAX_PER_CALL)
    if total % MAX_PER_CALL:
        parts.append(total % MAX_PER_CALL)
    return parts


def emissions_tonnes(resources: Resources, rule_on: str, of: str) -> float:
    """The tonnes an `offset` reads: the company's current emissions or the site's."""
    # Bills read their site's emissions when the event names a site, else the company's.
    if (
        rule_on != CRP_GENERATED
        and resources.event.get("siteId")
        and resources.emissions is not None
    ):
        value = resources.emissions.get("totalTco2e" if of == "total" else of)
        if isinstance(value, dict):
            value = value.get("total")
    else:
        current = (resources.company or {}).get("currentEmissions") or {}
        value = current.get("totalTco2e" if of == "total" else of)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise PlanError(f"emissions have no number for {of!r}")
    return float(value)


def render(text: str | None, resources: Resources, on: str) -> str | None:
    """Fill `{source.path}` placeholders from the fetched resources."""
    if not text:
        return text

    def value(match: re.Match[str]) -> str:
        found = lookup(resources, match.group(1), on)
        if found is _MISSING or found is None:
            raise PlanError(f"placeholder {{{match.group(1)}}} has no value")
        return str(found)

    return PLACEHOLDER.sub(value, text)


def captures_for(
    rule: Rule,
    total: int,
    *,
    email: str | None,
    name: str | None,
    dry_run: bool,
    site_id: str | None = None,
    period: str | None = None,
) -> list[PlannedCapture]:
    """The ledger rows for `total` (capped by `max_lbs`): skipped under 1, split above 10M."""
    if rule.max_lbs is not None:
        total = min(total, rule.max_lbs)
    if total > MAX_PARTS * MAX_PER_CALL:
        raise PlanError(
            f"rule {rule.name!r} would capture {total} lbs in more than {MAX_PARTS} calls; set max_lbs"
        )
    return [
        PlannedCapture(
            rule=rule.name,
            part=part,
            action=rule.action,
            amount=amount,
            customer_email=email,
            customer_name=name,
            notify=rule.notify,
            dry_run=dry_run,
            skipped=amount < 1,
            site_id=site_id,
            period=period,
        )
        for part, amount in enumerate(split(total))
    ]


def explain(ruleset: RuleSet, event_type: str, resources: Resources) -> list[Outcome]:
    """Every rule for `event_type`: whether it matches, why not, and what it would send."""
    outcomes = []
    for rule in ruleset.for_event(event_type):
        reasons = unmet(rule.when, resources, rule.on)
        outcome = Outcome(rule=rule.name, matched=not reasons, reasons=reasons)
        if outcome.matched and rule.wait_until is not None:
            outcome.waiting = unmet(rule.wait_until, resources, rule.on)
            outcome.wait_for_s = rule.wait_for_s
        if outcome.matched and not outcome.waiting:
            _plan_rule(rule, ruleset, resources, outcome)
        outcomes.append(outcome)
    return outcomes


def unmet(conditions: dict[str, Any], resources: Resources, on: str) -> list[str]:
    """Why each condition that does not hold does not: empty when they all hold."""
    reasons = []
    for path, condition in conditions.items():
        value = lookup(resources, path, on)
        if not check(value, condition):
            shown = "missing" if value is _MISSING else repr(value)
            reasons.append(f"{path} is {shown}, wanted {condition!r}")
    return reasons


def _plan_rule(rule: Rule, ruleset: RuleSet, resources: Resources, outcome: Outcome) -> None:
    dry_run = ruleset.file.dry_run or rule.dry_run
    email = render(rule.customer_email, resources, rule.on)
    name = render(rule.customer_name, resources, rule.on)
    if rule.offset_delta is not None:
        site_id = resources.event.get("siteId")
        emissions = resources.emissions or {}
        if not isinstance(site_id, str) or not site_id:
            outcome.matched = False
            outcome.reasons.append("offset_delta needs the event's siteId")
            return
        outcome.delta = DeltaPlan(
            rule=rule,
            site_id=site_id,
            period=str(emissions.get("reportingPeriod") or "unknown"),
            current_tco2e=emissions_tonnes(resources, rule.on, rule.offset_delta.of),
            dry_run=dry_run,
            customer_email=email,
            customer_name=name,
        )
        return
    if rule.offset is not None:
        tonnes = emissions_tonnes(resources, rule.on, rule.offset.of)
        total = lbs_from_tonnes(tonnes, rule.offset.fraction)
    else:
        total = rule.capture_lbs or 0
    outcome.captures = captures_for(
        rule,
        total,
        email=email,
        name=name,
        dry_run=dry_run,
        site_id=site_of(resources, rule.on),
        period=period_of(resources),
    )


def site_of(resources: Resources, rule_on: str) -> str | None:
    """The site an event names (a bill's `siteId`; a CRP is the company's)."""
    site_id = resources.event.get("siteId") if rule_on != CRP_GENERATED else None
    return site_id if isinstance(site_id, str) and site_id else None


def period_of(resources: Resources) -> str | None:
    """CarbonPass's reporting period of the emissions read for the event, if any were."""
    current = (resources.company or {}).get("currentEmissions")
    for source in (resources.emissions, current):
        period = source.get("reportingPeriod") if isinstance(source, dict) else None
        if isinstance(period, str) and period:
            return period
    return None


def delta_captures(plan: DeltaPlan, offset_before: float) -> tuple[list[PlannedCapture], float]:
    """What an `offset_delta` sends given the tonnes already offset; and the new mark."""
    assert plan.rule.offset_delta is not None
    growth = max(0.0, plan.current_tco2e - offset_before)
    total = lbs_from_tonnes(growth, plan.rule.offset_delta.fraction)
    captures = captures_for(
        plan.rule,
        total,
        email=plan.customer_email,
        name=plan.customer_name,
        dry_run=plan.dry_run,
    )
    return captures, max(offset_before, plan.current_tco2e)
