"""The admins' commands: list, show and replay events; list and decide captures."""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine

from carbonhook.admin import Admin
from carbonhook.cli.bootstrap import build_admin, settings_for
from carbonhook.cli.tables import print_json, print_table, progress
from carbonhook.database import create_sync_engine
from carbonhook.errors import UsageError
from carbonhook.event_queries import EventFilter
from carbonhook.ledger import Ledger
from carbonhook.queue import is_shared, make_broker
from carbonhook.settings import ADMIN_NAME
from carbonhook.statuses import CaptureStatus, EventStatus
from carbonhook.store import EventStore


@contextmanager
def _database() -> Iterator[Engine]:
    """The event store's engine for one command, closed when the command ends."""
    engine = create_sync_engine(settings_for().database_url.get_secret_value(), pool_size=1)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _cli_admin() -> Iterator[tuple[Admin, bool]]:
    """The admin actions and whether replayed events reach a shared queue; closed at the end."""
    settings = settings_for()
    broker = make_broker(settings.broker_url.get_secret_value())
    shared = is_shared(broker)
    # Without a queue this process shares, replayed events stay `pending`, and the sweeper of
    # the running `carbonhook run` picks them up within CARBONHOOK_SWEEP_INTERVAL_S.
    admin = build_admin(settings, broker if shared else None)
    try:
        yield admin, shared
    finally:
        admin.store.engine.dispose()
        broker.close()


VIA = "cli"


def _acting_admin(args: argparse.Namespace) -> str:
    """Who a command acts as: `--as NAME`, else the OS user running it."""
    name: str | None = args.acting_as
    if name is None:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):  # no user name for this uid (a bare container)
            raise UsageError("cannot tell who you are: name yourself with --as NAME") from None
    if not ADMIN_NAME.fullmatch(name):
        raise UsageError(f"{name[:64]!r} is not an admin name (1 to 64 letters, digits or ._@+$-)")
    return name


def _check_choice(value: str | None, choices: Sequence[str], what: str) -> None:
    if value is not None and value not in choices:
        raise UsageError(f"unknown {what} {value!r}; one of: {', '.join(choices)}")


def events_list(args: argparse.Namespace) -> int:
    _check_choice(args.status, tuple(EventStatus), "status")
    with _database() as engine:
        rows = EventStore(engine).list_events(
            EventFilter(status=args.status, type=args.type, since=args.since), limit=args.limit
        )
    if args.json:
        print_json(rows)
        return 0
    print_table(
        f"{len(rows)} events",
        ["id", "type", "subject", "status", "attempts", "received", "last error / note"],
        [
            [
                r["id"],
                r["type"],
                r["subject_id"],
                r["status"],
                r["attempts"],
                r["received_at"].strftime("%Y-%m-%d %H:%M:%S"),
                (r["last_error"] or r["note"] or "")[:60],
            ]
            for r in rows
        ],
    )
    return 0


def events_show(args: argparse.Namespace) -> int:
    with _database() as engine:
        detail = EventStore(engine).get_event(args.id)
    if args.json:
        print_json(detail)
        return 0
    for key in (
        "id",
        "type",
        "subject_id",
        "event_ts",
        "received_at",
        "status",
        "attempts",
        "last_error",
        "note",
    ):
        print(f"{key:12} {detail[key]}")
    print(f"{'body':12} {detail['body']}")
    for title, key, fields in (
        ("attempts", "attempt_history", ["started_at", "outcome", "http_status", "error"]),
        ("replays", "replays", ["at", "admin", "via", "previous_status", "reason"]),
        (
            "captures",
            "captures",
            ["id", "rule", "part", "action", "amount", "status", "user_id", "time_utc", "error"],
        ),
    ):
        print_table(title, fields, [[row[f] for f in fields] for row in detail[key]])
    fields = ["at", "admin", "via", "decision", "status", "reason"]
    decisions = [
        [capture["id"], *(decision[f] for f in fields)]
        for capture in detail["captures"]
        for decision in capture["decisions"]
    ]
    print_table("decisions", ["capture", *fields], decisions)
    return 0


def events_replay(args: argparse.Namespace) -> int:
    _check_choice(args.status, tuple(EventStatus), "status")
    if not args.ids and not args.status:
        raise UsageError("name event ids, or --status (e.g. --status failed)")
    who = _acting_admin(args)
    with _cli_admin() as (admin, shared):
        if args.ids:
            for event_id in args.ids:
                previous = admin.replay(event_id, admin=who, via=VIA, reason=args.reason)
                print(f"replayed event {event_id} (was {previous})")
        else:
            filt = EventFilter(status=args.status, type=args.type, since=args.since)
            total = len(admin.store.matching_ids(filt))
            done = 0
            with progress(total, "replaying") as advance:
                for _ in admin.replay_matching(filt, admin=who, via=VIA, reason=args.reason):
                    done += 1
                    advance()
            print(f"replayed {done} of {total} events")
    if not shared:
        print(
            "(memory:// broker: the running `carbonhook run` picks them up within its sweep interval)"
        )
    return 0


def captures_list(args: argparse.Namespace) -> int:
    _check_choice(args.status, tuple(CaptureStatus), "status")
    with _database() as engine:
        rows = Ledger(engine).list_captures(status=args.status, limit=args.limit)
    if args.json:
        print_json(rows)
        return 0
    print_table(
        f"{len(rows)} captures",
        [
            "id",
            "event",
            "rule",
            "subject",
            "part",
            "action",
            "amount",
            "status",
            "user_id",
            "time_utc",
            "decided by",
            "error / note",
        ],
        [
            [
                r["id"],
                r["event_id"],
                r["rule"],
                r["subject_id"],
                r["part"],
                r["action"],
                r["amount"],
                r["status"],
                r["user_id"] or "",
                r["time_utc"] or "",
                _decided_by(r["decisions"]),
                (r["error"] or r["note"] or "")[:50],
            ]
            for r in rows
        ],
    )
    return 0


def _decided_by(decisions: list[dict[str, Any]]) -> str:
    """The last decision on a row: `approve: alice (cli)`."""
    if not decisions:
        return ""
    last = decisions[-1]
    return f"{last['decision']}: {last['admin']} ({last['via']})"


def captures_decide(args: argparse.Namespace) -> int:
    who = _acting_admin(args)
    with _cli_admin() as (admin, _):
        if args.decision == "approve":
            row = admin.approve(args.id, admin=who, via=VIA, reason=args.reason)
        elif args.decision == "reject":
            row = admin.reject(args.id, admin=who, via=VIA, reason=args.reason)
        else:
            row = admin.resolve(
                args.id, captured=args.captured, admin=who, via=VIA, reason=args.reason
            )
    print(f"capture {row.id} is now {row.status}; event {row.event_id} queued to finish")
    return 0
