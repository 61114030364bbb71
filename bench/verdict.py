"""What the soak expects and what it finds: the planned captures (from the deliveries and the
rules, computed here, not by carbonhook's code), the impacts that stand at the emulator and the
ledger's captured rows, compared. Pure functions: the soak fetches, this judges.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench.traffic import BILL_CONFIRMED, CRP_GENERATED, Delivery

Key = tuple[str, str, int]  # (rule, subject_id, part): the ledger's unique key
FINAL_EVENTS = ("succeeded", "ignored")
TAG_KEY = "carbonhook_tag"  # carbonhook/tags.py: "deployment/capture_id/attempt"


@dataclass(frozen=True)
class SoakRule:
    """A fixed-amount rule: the soak writes it to TOML and plans from it by itself."""

    name: str
    on: str
    amount: int
    action: str = "capture_carbon"
    customer_email: str | None = None  # `{subject}` stands for the CRP or bill id
    customer_name: str | None = None

    def toml(self) -> str:
        lines = [
            "[[rule]]",
            f'name = "{self.name}"',
            f'on = "{self.on}"',
            f'action = "{self.action}"',
            f"capture_lbs = {self.amount}",
        ]
        if self.customer_email is not None:
            placeholder = "{crp.id}" if self.on == CRP_GENERATED else "{event.id}"
            lines.append(f'customer_email = "{self.customer_email.replace("{subject}", placeholder)}"')
        if self.customer_name is not None:
            lines.append(f'customer_name = "{self.customer_name}"')
        return "\n".join(lines)

    def email_for(self, subject: str) -> str | None:
        return None if self.customer_email is None else self.customer_email.replace("{subject}", subject)


def soak_rules(*, mixed_case_email: bool = False) -> tuple[SoakRule, ...]:
    """Two signatures (action, amount, customer) shared by every CRP or every bill, where a
    record without our tag could be any row's; one per CRP; one to no customer (the user's
    records). `mixed_case_email`: the shared CRP rule's e-mail as `ESG@Example.com`, which the
    strict emulator lists lower-cased (docs/providers.md: "write rule e-mails in lower case")."""
    shared = "ESG@Example.com" if mixed_case_email else "esg@example.com"
    return (
        SoakRule("soak-crp-shared", CRP_GENERATED, 500, customer_email=shared, customer_name="Soak Ltd"),
        SoakRule("soak-crp-own", CRP_GENERATED, 3, customer_email="crp+{subject}@example.com"),
        SoakRule("soak-bill-shared", BILL_CONFIRMED, 25),
        SoakRule("soak-bill-tree", BILL_CONFIRMED, 2, action="plant_tree", customer_email="bills@example.com"),
    )


RULES = soak_rules()


def rules_toml(rules: Sequence[SoakRule] = RULES) -> str:
    limits = "dry_run = false\n\n[limits]\nmax_lbs_per_day = 1000000000\nmax_lbs_per_month = 1000000000\n"
    return limits + "\n" + "\n\n".join(rule.toml() for rule in rules) + "\n"


@dataclass(frozen=True)
class Planned:
    action: str
    amount: int
    customer_email: str | None


def planned_captures(deliveries: Iterable[Delivery], rules: Sequence[SoakRule] = RULES) -> dict[Key, Planned]:
    """Every capture the deliveries plan: one per rule and subject, however many events name it."""
    planned: dict[Key, Planned] = {}
    for delivery in deliveries:
        for rule in rules:
            if rule.on == delivery.event:
                planned[(rule.name, delivery.subject, 0)] = Planned(rule.action, rule.amount, rule.email_for(delivery.subject))
    return planned


@dataclass(frozen=True)
class Discrepancy:
    kind: str
    what: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.kind}: {self.what}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class Verdict:
    planned: int
    standing: int
    ledger: int
    cancelled: int
    events: dict[str, int]
    captures: dict[str, int]
    discrepancies: list[Discrepancy] = field(default_factory=list)

    @property
    def agree(self) -> bool:
        return not self.discrepancies


def _key(row: Mapping[str, Any]) -> Key:
    return (str(row["rule"]), str(row["subject_id"]), int(row["part"]))


def _name(key: Key) -> str:
    return f"{key[0]}/{key[1]}/{key[2]}"


def _capture_of(impact: Mapping[str, Any], deployment: str) -> int | None:
    """The ledger row an impact's tag names, or None if it carries none of ours."""
    tag = (impact.get("metadata") or {}).get(TAG_KEY)
    if not isinstance(tag, str):
        return None
    owner, _, rest = tag.partition("/")
    capture_id = rest.partition("/")[0]
    return int(capture_id) if owner == deployment and capture_id.isdigit() else None


def _moment(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def judge(
    *,
    planned: Mapping[Key, Planned],
    impacts: Sequence[Mapping[str, Any]],
    cancelled: int,
    ledger: Sequence[Mapping[str, Any]],
    deployment: str,
    deliveries: Sequence[Delivery],
    answers: Mapping[tuple[str, str, str], set[int]],
    events: Sequence[Mapping[str, Any]],
) -> Verdict:
    """Planned captures vs impacts standing vs the ledger's captured rows, and every delivery
    vs the events stored. `answers`: the event ids the receivers answered per delivery."""
    found: list[Discrepancy] = []
    rows_by_id = {int(row["id"]): row for row in ledger}
    rows_by_key = {_key(row): row for row in ledger}
    captured = {key: row for key, row in rows_by_key.items() if row["status"] == "captured"}

    standing: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for impact in impacts:
        capture_id = _capture_of(impact, deployment)
        if capture_id is None or capture_id not in rows_by_id:
            found.append(Discrepancy(
                "impact of no ledger row",
                f"{impact.get('kind')} {impact.get('amount')} at {impact.get('time_utc')}",
                f"tag {(impact.get('metadata') or {}).get(TAG_KEY)!r}",
            ))
            continue
        standing[capture_id].append(impact)

    for key, plan in sorted(planned.items()):
        row = rows_by_key.get(key)
        if row is None:
            found.append(Discrepancy("planned capture with no ledger row", _name(key)))
            continue
        mine = standing.get(int(row["id"]), [])
        times = ", ".join(str(i["time_utc"]) for i in mine)
        if not mine:
            found.append(Discrepancy("planned capture missing at the emulator", _name(key), f"ledger: {row['status']}, capture {row['id']}"))
        elif len(mine) > 1:
            found.append(Discrepancy("planned capture standing twice", _name(key), f"capture {row['id']}, {len(mine)} impacts at {times}; ledger: {row['status']} {row['time_utc']}"))
        for impact in mine:
            email = (impact.get("customer_email") or "").lower()
            if (impact["kind"], impact["amount"], email) != (plan.action, plan.amount, (plan.customer_email or "").lower()):
                found.append(Discrepancy("impact unlike its plan", _name(key), f"{impact['kind']} {impact['amount']} {email!r}, planned {plan}"))
        if row["status"] != "captured":
            found.append(Discrepancy("planned capture not captured in the ledger", _name(key), f"capture {row['id']} is {row['status']}: {row.get('error') or ''}".strip()))
        elif len(mine) == 1 and (row["user_id"], row["time_utc"]) != (mine[0]["user_id"], mine[0]["time_utc"]):
            found.append(Discrepancy("ledger names another impact", _name(key), f"ledger {row['user_id']} {row['time_utc']}, standing {mine[0]['user_id']} {mine[0]['time_utc']}"))

    for key, row in sorted(rows_by_key.items()):
        if key in planned:
            continue
        if row["status"] == "captured" or standing.get(int(row["id"])):
            found.append(Discrepancy("ledger row not planned", _name(key), f"capture {row['id']} is {row['status']}"))

    found += _events(deliveries, answers, events)
    statuses = Counter(str(row["status"]) for row in ledger)
    return Verdict(
        planned=len(planned),
        standing=len(impacts),
        ledger=len(captured),
        cancelled=cancelled,
        events=dict(Counter(str(e["status"]) for e in events)),
        captures=dict(statuses),
        discrepancies=found,
    )


def _events(
    deliveries: Sequence[Delivery],
    answers: Mapping[tuple[str, str, str], set[int]],
    events: Sequence[Mapping[str, Any]],
) -> list[Discrepancy]:
    """Every distinct delivery stored exactly once, under the id its answers named, and final."""
    found: list[Discrepancy] = []
    stored: dict[tuple[str, str, datetime], list[Mapping[str, Any]]] = defaultdict(list)
    for event in events:
        stored[(str(event["type"]), str(event["subject_id"]), _moment(event["event_ts"]))].append(event)
    expected = {(d.event, d.subject, _moment(d.timestamp)): d for d in deliveries}
    for identity, delivery in expected.items():
        rows = stored.get(identity, [])
        name = f"{delivery.event} {delivery.subject} {delivery.timestamp}"
        ids = answers.get(delivery.identity, set())
        if not ids:
            found.append(Discrepancy("delivery never accepted", name))
        if not rows:
            found.append(Discrepancy("delivery lost: no event stored", name, f"answered {sorted(ids)}" if ids else ""))
            continue
        if len(rows) > 1:
            found.append(Discrepancy("delivery stored twice", name, f"events {[r['id'] for r in rows]}"))
        if ids - {int(r["id"]) for r in rows}:
            found.append(Discrepancy("answered with another event's id", name, f"answered {sorted(ids)}, stored {[r['id'] for r in rows]}"))
        for row in rows:
            if row["status"] not in FINAL_EVENTS:
                found.append(Discrepancy(f"event {row['status']}", f"event {row['id']} ({name})", str(row.get("last_error") or "")[:300]))
    for identity, rows in stored.items():
        if identity not in expected:
            found.append(Discrepancy("event nobody sent", f"events {[r['id'] for r in rows]} {identity[0]} {identity[1]}"))
    return found


def table(verdict: Verdict) -> str:
    """The three counts side by side, and every discrepancy."""
    lines = [
        f"{'planned captures':<34}{verdict.planned:>7}",
        f"{'standing at the emulator':<34}{verdict.standing:>7}   (created {verdict.standing + verdict.cancelled}, cancelled {verdict.cancelled})",
        f"{'captured in the ledger':<34}{verdict.ledger:>7}",
        f"{'events':<34}{sum(verdict.events.values()):>7}   {_counts(verdict.events)}",
        f"{'ledger rows':<34}{sum(verdict.captures.values()):>7}   {_counts(verdict.captures)}",
        "",
    ]
    if verdict.agree:
        lines.append("AGREE: every planned capture stands exactly once, and the ledger names it")
    else:
        kinds = Counter(d.kind for d in verdict.discrepancies)
        lines.append(f"DISAGREE: {len(verdict.discrepancies)} discrepancies ({_counts(kinds)})")
        lines += [f"  - {d.line()}" for d in verdict.discrepancies[:60]]
        if len(verdict.discrepancies) > 60:
            lines.append(f"  … and {len(verdict.discrepancies) - 60} more (--json lists them all)")
    return "\n".join(lines)


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
