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


def soak_rules() -> tuple[SoakRule, ...]:
    """Two signatures (action, amount, customer) shared by every CRP or every bill, where a
    record without our tag could be any row's; one per CRP; one to no customer (the user's
    records). The shared e-mail in mixed case: the strict emulator lists it lower-cased."""
    return (
        SoakRule("soak-crp-shared", CRP_GENERATED, 500, customer_email="ESG@Example.com", customer_name="Soak Ltd"),
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
    blocked: list[str] = field(default_factory=list)
    # Without tags in the listings, which row of one signature made which record cannot be
    # known (docs/providers.md); a row naming a twin's impact stands once all the same.
    twin_swaps: list[Discrepancy] = field(default_factory=list)

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
    """A time as an aware UTC datetime (the database hands back naive UTC)."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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
    tagless: bool = False,
) -> Verdict:
    """Planned captures vs impacts standing vs the ledger's captured rows, and every delivery
    vs the events stored. `answers`: the event ids the receivers answered per delivery.
    `tagless`: the listings carbonhook reads carry no metadata, so a row naming the impact of a
    twin of its signature is noted, not counted (each row stands once; which is unknowable)."""
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

    # Which row's request made each standing impact (its tag says), and that row's signature.
    made_by = {
        (str(impact["user_id"]), str(impact["time_utc"])): rows_by_id[capture_id]
        for capture_id, mine in standing.items()
        for impact in mine
    }
    for key, plan in sorted(planned.items()):
        row = rows_by_key.get(key)
        if row is None:
            found.append(Discrepancy("planned, no ledger row", _name(key)))
            continue
        found += _one_capture(key, plan, row, standing.get(int(row["id"]), []), made_by)

    for key, row in sorted(rows_by_key.items()):
        if key in planned:
            continue
        if row["status"] == "captured" or standing.get(int(row["id"])):
            found.append(Discrepancy("ledger row not planned", _name(key), f"capture {row['id']} is {row['status']}"))

    found += _events(deliveries, answers, events)
    swaps = [d for d in found if tagless and d.kind == "ledger names a twin's impact"]
    found = [d for d in found if d not in swaps]
    statuses = Counter(str(row["status"]) for row in ledger)
    return Verdict(
        planned=len(planned),
        standing=len(impacts),
        ledger=len(captured),
        cancelled=cancelled,
        events=dict(Counter(str(e["status"]) for e in events)),
        captures=dict(statuses),
        discrepancies=found,
        blocked=blocked_signatures(ledger),
        twin_swaps=swaps,
    )


def _signature(row: Mapping[str, Any]) -> tuple[str, int, str]:
    return (str(row["action"]), int(row["amount"]), str(row.get("customer_email") or "").lower())


def _one_capture(
    key: Key,
    plan: Planned,
    row: Mapping[str, Any],
    mine: Sequence[Mapping[str, Any]],
    made_by: Mapping[tuple[str, str], Mapping[str, Any]],
) -> list[Discrepancy]:
    """What is wrong with one planned capture, named by what an operator would see."""
    what = _name(key)
    status, capture = str(row["status"]), f"capture {row['id']}"
    times = ", ".join(str(i["time_utc"]) for i in mine)
    found = []
    if len(mine) > 1:
        found.append(Discrepancy("standing twice", what, f"{capture}: {len(mine)} impacts at {times}; the ledger says {status} {row['time_utc'] or ''}".strip()))
    elif not mine and status == "captured":
        found.append(Discrepancy("captured in the ledger, nothing standing", what, f"{capture}: {row['user_id']} {row['time_utc']}"))
    elif not mine:
        error = str(row.get("error") or "")[:160]
        found.append(Discrepancy(f"missing, ledger {status}", what, f"{capture}" + (f": {error}" if error else "")))
    elif status != "captured":
        found.append(Discrepancy(f"standing, ledger {status}", what, f"{capture}; standing at {times}"))
    elif (row["user_id"], row["time_utc"]) != (mine[0]["user_id"], mine[0]["time_utc"]):
        named = f"{capture}: the ledger names {row['user_id']} {row['time_utc']}, its own impact is {mine[0]['user_id']} {mine[0]['time_utc']}"
        other = made_by.get((str(row["user_id"]), str(row["time_utc"])))
        if other is not None and _signature(other) == _signature(row):
            # Same action, amount and customer: the money is right, the attribution is not.
            found.append(Discrepancy("ledger names a twin's impact", what, f"{named}, made by capture {other['id']} ({other['subject_id']})"))
        else:
            found.append(Discrepancy("ledger names another impact", what, named))
    for impact in mine:
        email = (impact.get("customer_email") or "").lower()
        if (impact["kind"], impact["amount"], email) != (plan.action, plan.amount, (plan.customer_email or "").lower()):
            found.append(Discrepancy("impact unlike its plan", what, f"{impact['kind']} {impact['amount']} {email!r}, planned {plan}"))
    return found


def blocked_signatures(ledger: Sequence[Mapping[str, Any]]) -> list[str]:
    """Signatures (action, amount, e-mail) with more than one capture left `unknown`: each
    one's untagged record could be another's, and none may be sent while one is unknown."""
    unknown: dict[tuple[str, int, str], list[int]] = defaultdict(list)
    waiting: Counter[tuple[str, int, str]] = Counter()
    for row in ledger:
        signature = (str(row["action"]), int(row["amount"]), str(row.get("customer_email") or "").lower())
        if row["status"] == "unknown":
            unknown[signature].append(int(row["id"]))
        elif row["status"] in ("pending", "failed"):
            waiting[signature] += 1
    return [
        f"{action} {amount} for {email or '(no customer)'}: captures {', '.join(map(str, sorted(ids)))} "
        f"unknown; {waiting[(action, amount, email)]} more of it not captured"
        for (action, amount, email), ids in sorted(unknown.items())
        if len(ids) > 1
    ]


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
        if verdict.twin_swaps:
            lines.append(
                f"  ({len(verdict.twin_swaps)} rows name the impact of a twin of their signature: "
                "the listings carry no tags, so which made which cannot be known; each stands once)"
            )
        return "\n".join(lines)
    kinds = Counter(d.kind for d in verdict.discrepancies)
    lines.append(f"DISAGREE: {len(verdict.discrepancies)} discrepancies")
    lines += [f"  {n:>5}  {kind}" for kind, n in sorted(kinds.items(), key=lambda kv: (_rank(kv[0]), -kv[1]))]
    if verdict.blocked:
        lines += ["", "signatures blocked by more than one unknown capture:"]
        lines += [f"  - {text}" for text in verdict.blocked]
    lines += ["", f"each kind, up to {EXAMPLES} of it (--json and summary.json list them all):"]
    for kind in sorted(kinds, key=_rank):
        shown = [d for d in verdict.discrepancies if d.kind == kind][:EXAMPLES]
        lines += [f"  - {d.line()}" for d in shown]
    return "\n".join(lines)


# The money first: an impact too many, then the ledger wrong about one, then open or lost work.
_ORDER = ("standing twice", "impact of no ledger row", "ledger names another impact", "ledger names a twin", "captured in the ledger", "standing, ledger", "ledger row not planned", "delivery", "missing, ledger unknown", "missing")
EXAMPLES = 5


def _rank(kind: str) -> int:
    return next((n for n, start in enumerate(_ORDER) if kind.startswith(start)), len(_ORDER))


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
