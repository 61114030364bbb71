"""`carbonhook rules check|explain`: the rules file as a table, and what it would do."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from carbonhook.actions import ACTIONS, Action
from carbonhook.catch_ups import reading_of
from carbonhook.cli.bootstrap import settings_for
from carbonhook.cli.tables import print_table
from carbonhook.emulator import EmulatorState
from carbonhook.errors import UsageError
from carbonhook.event_types import EMISSIONS_CATCH_UP, KNOWN_TYPES
from workers.planning import Resources, explain, needed_sources
from workers.rules import load_rules


def rules_check(args: argparse.Namespace) -> int:
    path = args.file or settings_for().rules_file
    ruleset = load_rules(path)
    rows = []
    for rule in ruleset.rules:
        amount = (
            f"{rule.capture_lbs} {ACTIONS[Action(rule.action)].unit}"
            if rule.capture_lbs is not None
            else f"{rule.offset.fraction} × {rule.offset.of}"
            if rule.offset is not None
            else f"Δ {rule.offset_delta.fraction} × {rule.offset_delta.of}"
            if rule.offset_delta is not None
            else ""
        )
        rows.append(
            [
                rule.name,
                rule.on,
                json.dumps(rule.when) if rule.when else "always",
                f"{json.dumps(rule.wait_until)} for up to {rule.wait_for}"
                if rule.wait_until is not None
                else "",
                rule.action,
                amount,
                rule.customer_email or "",
                "yes" if rule.dry_run or ruleset.file.dry_run else "",
            ]
        )
    print_table(
        f"{path} — {len(ruleset.rules)} rules, sha256 {ruleset.sha256[:12]}",
        ["name", "on", "when", "wait until", "action", "amount", "customer", "dry run"],
        rows,
    )
    if any(rule.wait_until is not None for rule in ruleset.rules):
        print(
            "wait until: while it does not hold, a matched event waits (status waiting), "
            "re-checked at growing intervals, for at most that long after it first "
            "waited; then the rule captures, or its wait expires and captures nothing"
        )
    limits = ruleset.file.limits
    print(
        f"limits: {limits.max_lbs_per_day or 'none'} lbs/day, {limits.max_lbs_per_month or 'none'} lbs/month"
    )
    known = ", ".join(sorted(KNOWN_TYPES))
    for event_type in ruleset.unknown_types():
        # A warning, not an error: CarbonPass documents few of its types (docs/providers.md).
        names = ", ".join(rule.name for rule in ruleset.for_event(event_type))
        print(
            f"warning: {event_type!r} (rule {names}) is not a type CarbonPass is known to send "
            f"({known}); check the name, or these rules may never run",
            file=sys.stderr,
        )
    return 0


def rules_explain(args: argparse.Namespace) -> int:
    """Which rules match and what they would send, without calling anything."""
    ruleset = load_rules(args.rules or settings_for().rules_file)
    delivery = _read_json(args.event)
    event_type, data = delivery.get("event"), delivery.get("data") or {}
    if not isinstance(event_type, str) or not isinstance(data, dict):
        raise UsageError(f"{args.event}: not a delivery (needs 'event' and 'data')")
    sandbox = EmulatorState()
    needed = needed_sources(ruleset, event_type)
    site = data.get("siteId") if isinstance(data.get("siteId"), str) else None

    def resource(name: str, default: Any) -> Any:
        given = getattr(args, name)
        if given is not None:
            found = _read_json(given)
            return found.get("data", found) if isinstance(found, dict) else found
        return default() if name in needed or name == "company" else None

    resources = Resources(
        event=data,
        crp=resource("crp", lambda: sandbox.crp_data(str(data.get("id")))),
        company=resource("company", sandbox.company_data),
        # A catch-up is offset by the emissions it read, as a worker would.
        emissions=resource(
            "emissions",
            lambda: (
                (event_type == EMISSIONS_CATCH_UP and reading_of(data))
                or sandbox.emissions_data(site)
            ),
        ),
    )
    if not ruleset.for_event(event_type):
        print(f"no rule is on {event_type!r}: a worker would end the event ignored")
    for outcome in explain(ruleset, event_type, resources):
        shown = "WAIT" if outcome.waiting else "MATCH" if outcome.matched else "no match"
        print(f"{shown:9} {outcome.rule}")
        for reason in outcome.reasons:
            print(f"          - {reason}")
        for reason in outcome.waiting:
            print(f"          - waits until it holds: {reason}")
        for c in outcome.captures:
            what = "skipped (< 1 lb)" if c.skipped else "dry run" if c.dry_run else "would send"
            print(
                f"          {what}: {c.action} amount={c.amount} part={c.part} customer={c.customer_email or '-'}"
            )
        if outcome.delta is not None:
            d = outcome.delta
            print(
                f"          offset_delta: site {d.site_id}, period {d.period}, current {d.current_tco2e} tCO2e minus what this rule offset before"
            )
    return 0


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: {exc}") from None
