"""The rules file: TOML the operator writes, validated into typed rules (pure, no I/O but reading)."""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from carbonhook.errors import RulesError
from carbonhook.event_types import (
    CRP_GENERATED,
    EMISSIONS_CATCH_UP,
    EVENT_NAME,
    KNOWN_TYPES,
    OWN_TYPES,
)

OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists")
SOURCES = ("event", "crp", "company", "emissions")
Scope = Literal["total", "scope1", "scope2", "scope3"]
Action = Literal["capture_carbon", "plant_tree", "clean_ocean"]
MAX_TYPE_LENGTH = 100  # the events table's `type` column
PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
EMAIL = re.compile(r"[^@\s{}]+@[^@\s{}]+\.[^@\s{}]+|.*\{.+\}.*")
DURATION = re.compile(r"([1-9][0-9]{0,6})(s|m|h|d)")
DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# An event waits in the database, re-checked now and then; a wait longer than this is more
# likely a typo than an intent, and would keep events open for a season.
MAX_WAIT_S = 90 * 86400


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Offset(_Strict):
    """A fraction of the company's or site's emissions, in tonnes CO2e."""

    fraction: Annotated[float, Field(gt=0, le=1000)]
    of: Scope = "total"


class Limits(_Strict):
    """Spend limits per UTC day and month, for each action in its own unit; none by default."""

    max_lbs_per_day: Annotated[int, Field(gt=0)] | None = None  # capture_carbon, lbs CO2
    max_lbs_per_month: Annotated[int, Field(gt=0)] | None = None
    max_trees_per_day: Annotated[int, Field(gt=0)] | None = None  # plant_tree, trees
    max_trees_per_month: Annotated[int, Field(gt=0)] | None = None
    max_waste_lbs_per_day: Annotated[int, Field(gt=0)] | None = None  # clean_ocean, lbs plastic
    max_waste_lbs_per_month: Annotated[int, Field(gt=0)] | None = None


class Rule(_Strict):
    """One `[[rule]]`: when an event matches, what to capture and in whose name."""

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]
    on: str  # any event name, `word.word` in lower case
    when: dict[str, Any] = Field(default_factory=dict)
    # While `wait_until` (`when`'s syntax) does not hold, the event waits, re-checked, for at
    # most `wait_for` from when the event first waited (the database's clock): then the rule is
    # planned, or its wait expires.
    wait_until: dict[str, Any] | None = None
    wait_for: str | None = None
    capture_lbs: Annotated[int, Field(ge=0, le=10_000_000_000)] | None = None
    offset: Offset | None = None
    offset_delta: Offset | None = None
    max_lbs: Annotated[int, Field(gt=0)] | None = None
    action: Action = "capture_carbon"
    customer_email: str | None = None
    customer_name: str | None = None
    notify: bool = True
    dry_run: bool = False

    @field_validator("on")
    @classmethod
    def _check_on(cls, on: str) -> str:
        if len(on) > MAX_TYPE_LENGTH or not EVENT_NAME.fullmatch(on):
            raise ValueError(
                f"{on!r} is not an event name: word.word in lower case, e.g. bill.confirmed"
            )
        return on

    @field_validator("when", "wait_until")
    @classmethod
    def _check_conditions(cls, conditions: dict[str, Any] | None) -> dict[str, Any] | None:
        for path, condition in (conditions or {}).items():
            source = path.split(".", 1)[0]
            if "." in path and source not in SOURCES:
                raise ValueError(f"'{path}': a dotted path starts with one of {', '.join(SOURCES)}")
            if isinstance(condition, dict):
                unknown = set(condition) - set(OPERATORS)
                if unknown or not condition:
                    raise ValueError(
                        f"'{path}': unknown operator {sorted(unknown) or '(none)'}; use {', '.join(OPERATORS)}"
                    )
                for op in ("in", "not_in"):
                    if op in condition and not isinstance(condition[op], list):
                        raise ValueError(f"'{path}': '{op}' takes a list")
                if "exists" in condition and not isinstance(condition["exists"], bool):
                    raise ValueError(f"'{path}': 'exists' takes true or false")
        return conditions

    @field_validator("wait_for")
    @classmethod
    def _check_wait_for(cls, wait_for: str | None) -> str | None:
        if wait_for is not None:
            duration_s(wait_for)
        return wait_for

    @field_validator("customer_email")
    @classmethod
    def _check_email(cls, value: str | None) -> str | None:
        if value is not None and not EMAIL.fullmatch(value):
            raise ValueError(f"not an email address: {value!r}")
        return value

    @model_validator(mode="after")
    def _one_amount(self) -> Rule:
        given = [
            k for k in ("capture_lbs", "offset", "offset_delta") if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError("give exactly one of capture_lbs, offset, offset_delta")
        if self.offset_delta is not None and self.on == CRP_GENERATED:
            raise ValueError(
                "offset_delta is for events that name a site (data.siteId), not crp.generated"
            )
        if self.on == EMISSIONS_CATCH_UP and self.offset_delta is None:
            # A catch-up reads a site's emissions again and again: only the growth since the
            # last capture may be offset, never a fixed or whole amount each time.
            raise ValueError(f"a rule on {EMISSIONS_CATCH_UP} takes offset_delta")
        if self.customer_name and not self.customer_email:
            raise ValueError("customer_name needs customer_email")
        if (self.wait_until is None) != (self.wait_for is None):
            raise ValueError(
                "wait_until and wait_for go together: what to wait for, and how long at most "
                '(e.g. wait_until = { "crp.status" = "published" }, wait_for = "14d")'
            )
        if self.wait_until == {}:
            raise ValueError("wait_until needs at least one condition")
        for text in (self.customer_email, self.customer_name):
            for field in placeholders(text):
                if field.split(".", 1)[0] not in SOURCES or "." not in field:
                    raise ValueError(
                        f"placeholder {{{field}}} must name event., crp., company. or emissions."
                    )
        return self

    def sources(self) -> set[str]:
        """Which fetched resources this rule reads."""
        used = {_source(path, self.on) for path in (*self.when, *(self.wait_until or {}))}
        for text in (self.customer_email, self.customer_name):
            used |= {field.split(".", 1)[0] for field in placeholders(text)}
        if self.offset is not None:
            used.add("company" if self.on == CRP_GENERATED else "emissions")
        if self.offset_delta is not None:
            used.add("emissions")
        return used - {"event"}

    @property
    def wait_for_s(self) -> float:
        """How long the event may wait for `wait_until`, in seconds (0 when it does not wait)."""
        return float(duration_s(self.wait_for)) if self.wait_for is not None else 0.0


class RulesFile(_Strict):
    dry_run: bool = False
    limits: Limits = Field(default_factory=Limits)
    rule: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> RulesFile:
        seen: set[str] = set()
        for rule in self.rule:
            if rule.name in seen:
                raise ValueError(
                    f"rule name {rule.name!r} is used twice; names are part of the ledger key"
                )
            seen.add(rule.name)
        return self


@dataclass(frozen=True)
class RuleSet:
    """The loaded file: its rules and the hash every ledger row records."""

    file: RulesFile
    sha256: str
    path: str

    @property
    def rules(self) -> list[Rule]:
        return self.file.rule

    def for_event(self, event_type: str) -> list[Rule]:
        """The rules that process an event of `event_type`: those on it, and for a catch-up
        also every `offset_delta` rule (each on an event naming a site, such as a bill), whose
        missed deliveries the catch-up makes up for."""
        if event_type == EMISSIONS_CATCH_UP:
            return [rule for rule in self.file.rule if rule.offset_delta is not None]
        return [rule for rule in self.file.rule if rule.on == event_type]

    def unknown_types(self) -> list[str]:
        """The types rules are on that CarbonPass is not known to send (nor carbonhook stores
        itself): they may never come."""
        return sorted({rule.on for rule in self.file.rule} - KNOWN_TYPES - OWN_TYPES)


def _source(path: str, on: str) -> str:
    """Where a `when` path reads from: its prefix, or for a bare name the core issue's meaning."""
    head = path.split(".", 1)[0]
    if "." in path and head in SOURCES:
        return head
    return "crp" if on == CRP_GENERATED else "event"


def duration_s(text: str) -> int:
    """Seconds in a duration like `"30m"` or `"14d"` (s, m, h, d); ValueError saying why not."""
    match = DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f'{text!r} is not a duration: a whole number and a unit, s, m, h or d (e.g. "14d")'
        )
    seconds = int(match.group(1)) * DURATION_UNITS_S[match.group(2)]
    if seconds > MAX_WAIT_S:
        raise ValueError(f"{text!r} is longer than the longest wait, {MAX_WAIT_S // 86400}d")
    return seconds


def placeholders(text: str | None) -> list[str]:
    return PLACEHOLDER.findall(text or "")


def parse_rules(text: str, *, path: str = "<rules>") -> RuleSet:
    """Validate the rules file's text; errors name the rule, the field and the line."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{path}: not valid TOML: {exc}") from None
    try:
        parsed = RulesFile.model_validate(raw)
    except ValidationError as exc:
        raise RulesError(_describe(exc, raw, text, path)) from None
    return RuleSet(file=parsed, sha256=hashlib.sha256(text.encode()).hexdigest(), path=path)


def load_rules(path: Path) -> RuleSet:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"cannot read rules file {path}: {exc.strerror}") from None
    return parse_rules(text, path=str(path))


def _describe(exc: ValidationError, raw: dict[str, Any], text: str, path: str) -> str:
    error = exc.errors()[0]
    loc = list(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if len(loc) >= 2 and loc[0] == "rule" and isinstance(loc[1], int):
        index = loc[1]
        rules = raw.get("rule") or []
        name = (
            rules[index].get("name", f"#{index + 1}")
            if index < len(rules) and isinstance(rules[index], dict)
            else f"#{index + 1}"
        )
        field = ".".join(str(part) for part in loc[2:]) or "(rule)"
        line = _line_of(text, index, str(loc[2]) if len(loc) > 2 else None)
        where = f" (line {line})" if line else ""
        return f"{path}{where}: rule {name!r}, field {field!r}: {message}"
    field = ".".join(str(part) for part in loc) or "(file)"
    return f"{path}: field {field!r}: {message}"


def _line_of(text: str, index: int, field: str | None) -> int | None:
    """The line of the `index`-th `[[rule]]` table, or of `field` inside it."""
    starts = [
        n for n, line in enumerate(text.splitlines(), 1) if line.strip().startswith("[[rule]]")
    ]
    if index >= len(starts):
        return None
    lines = text.splitlines()
    end = starts[index + 1] - 1 if index + 1 < len(starts) else len(lines)
    if field:
        key = re.compile(rf"^\s*\"?{re.escape(field)}\"?\s*[=.]")
        for n in range(starts[index], end):
            if key.match(lines[n]):
                return n + 1
    return starts[index]


class RulesHolder:
    """The rules in force; `reload()` swaps in a new file only if it is valid (SIGHUP)."""

    def __init__(self, path: Path, ruleset: RuleSet | None = None) -> None:
        self.path = path
        self.current = ruleset if ruleset is not None else load_rules(path)

    def __call__(self) -> RuleSet:
        return self.current

    def reload(self) -> RuleSet:
        """Load the file again; on error raise `RulesError` and keep the old rules."""
        self.current = load_rules(self.path)
        return self.current
