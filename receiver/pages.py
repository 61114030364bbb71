"""How the dashboard's pages look: the templates' environment and filters, and the figures
the overview draws (the rules file as shown, the chart's bars, a limit's share)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import jinja2

from carbonhook import reports
from carbonhook.actions import ACTIONS


@dataclass(frozen=True)
class RulesInfo:
    """The rules file as the dashboard shows it."""

    path: str
    sha256: str
    text: str
    max_lbs_per_day: int | None
    max_lbs_per_month: int | None


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    day: date
    lbs: int


def chart_bars(days: Sequence[reports.DayTotal], *, height: float = 100) -> list[Bar]:
    """One bar per day in a viewBox `len(days) * 10` wide and `height` high."""
    top = max((d.lbs for d in days), default=0) or 1
    bars = []
    for n, d in enumerate(days):
        h = d.lbs / top * (height - 4)
        bars.append(Bar(x=n * 10 + 1.5, y=height - h, width=7, height=h, day=d.day, lbs=d.lbs))
    return bars


def share(used: int, limit: int | None) -> int | None:
    """`used` as a whole percentage of `limit` (None when there is no limit)."""
    return None if not limit else round(used * 100 / limit)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def pretty_json(text: str) -> str:
    """`text` indented if it is JSON, else as it came."""
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def _amount(capture: Mapping[str, Any]) -> str:
    """A capture's amount in its action's unit: 500 lbs carbon, 3 trees, 10 lbs plastic."""
    amount = int(capture["amount"])
    spec = ACTIONS.get(capture["action"])
    unit = spec.unit if spec else capture["action"]
    return f"{amount:,} {'tree' if unit == 'trees' and amount == 1 else unit}"


def _decided(decision: Mapping[str, Any]) -> str:
    """An admin's decision in words: approved, rejected, resolved as (not) captured."""
    if decision["decision"] == "resolve":
        return "Resolved as " + ("captured" if decision["status"] == "captured" else "not captured")
    return {"approve": "Approved", "reject": "Rejected"}.get(decision["decision"], "Decided")


def environment() -> jinja2.Environment:
    """The templates in receiver/templates, autoescaped, with the pages' filters."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("receiver", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = _when
    env.filters["lbs"] = lambda n: f"{int(n or 0):,}"
    env.filters["amount"] = _amount
    env.filters["decided"] = _decided
    return env
