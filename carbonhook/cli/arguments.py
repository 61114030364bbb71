"""The `carbonhook` command: parses arguments and calls into receiver/ and workers/."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from carbonhook.errors import CarbonhookError

DEFAULT_URL = "http://127.0.0.1:8000/webhooks/carbonpass"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except CarbonhookError as exc:
        print(f"carbonhook: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `carbonhook events list | head`: the reader left, not an error
        sys.stderr.close()
        return 0


def _command(module: str, name: str) -> Callable[[argparse.Namespace], int | None]:
    """`name` in carbonhook/cli/`module`.py, imported only when the command runs: the admins'
    commands then load neither the web server, nor the workers, nor the migrations."""

    def handler(args: argparse.Namespace) -> int | None:
        function: Callable[[argparse.Namespace], int | None]
        function = getattr(importlib.import_module(f"carbonhook.cli.{module}"), name)
        return function(args)

    return handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carbonhook", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, handler: Callable[[argparse.Namespace], int | None], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    def host_port(p: argparse.ArgumentParser, port: int) -> None:
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=port)

    p = add("run", _command("processes", "run"), "receiver and in-process workers in one process")
    host_port(p, 8000)
    p.add_argument(
        "--sandbox", action="store_true", help="also start the API emulator and use demo settings"
    )

    p = add("serve", _command("processes", "serve"), "the receiver alone (uvicorn)")
    host_port(p, 8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--ssl-certfile")
    p.add_argument("--ssl-keyfile")
    p.add_argument("--forwarded-allow-ips", help="proxies whose X-Forwarded-* headers are trusted")

    p = add("worker", _command("processes", "worker"), "Dramatiq worker processes")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")

    add("migrate", _command("processes", "migrate"), "apply database migrations")

    p = add(
        "emulate",
        _command("processes", "emulate"),
        "a local emulator of the CarbonPass and 1ClickImpact APIs",
    )
    host_port(p, 8900)
    p.add_argument(
        "--profile",
        choices=["kind", "strict"],  # carbonhook.emulator.PROFILES, not imported to parse
        help="how 1ClickImpact behaves where its documents are silent: kind (the default) or "
        "strict (new impacts listed 3 s late, no metadata echoed, e-mails lower-cased, "
        "cancelled impacts still listed)",
    )
    p.add_argument(
        "--publish-drafts-after",
        type=float,
        metavar="SECONDS",
        help="generate each new CRP as a draft and publish it this many seconds later "
        "(default: published at once)",
    )

    p = add(
        "send-test-event",
        _command("sample", "send_test_event"),
        "send a correctly signed sample delivery",
    )
    p.add_argument("type", choices=["crp.generated", "bill.confirmed"])
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument(
        "--secret", help="webhook secret (default: the first configured, else the sandbox's)"
    )
    p.add_argument("--id", dest="subject_id", help="data.id (default: a new random id)")
    p.add_argument("--site", default="site_3rZ1", help="data.siteId for bill.confirmed")

    rules = add("rules", _needs_subcommand(parser), "check or explain the rules file")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    p = rules_sub.add_parser("check", help="validate the rules file and print it as a table")
    p.set_defaults(handler=_command("rules", "rules_check"))
    p.add_argument("file", nargs="?", type=Path)
    p = rules_sub.add_parser("explain", help="which rules match an event and what they would send")
    p.set_defaults(handler=_command("rules", "rules_explain"))
    p.add_argument("event", type=Path, help="a delivery body (JSON file)")
    for name in ("crp", "company", "emissions"):
        p.add_argument(f"--{name}", type=Path, help=f"the {name} as JSON (default: the sandbox's)")
    p.add_argument("--rules", type=Path, help="rules file (default: CARBONHOOK_RULES_FILE)")

    events = add("events", _needs_subcommand(parser), "list, show and replay events")
    ev_sub = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    p = ev_sub.add_parser("list", help="list events, newest first")
    p.set_defaults(handler=_command("admin", "events_list"))
    p.add_argument("--status")
    p.add_argument("--type")
    p.add_argument("--since", type=_iso)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p = ev_sub.add_parser("show", help="one event with attempts, replays and captures")
    p.set_defaults(handler=_command("admin", "events_show"))
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p = ev_sub.add_parser("replay", help="replay events by id, or all with a status")
    p.set_defaults(handler=_command("admin", "events_replay"))
    p.add_argument("ids", nargs="*", type=int)
    p.add_argument("--status")
    p.add_argument("--type")
    p.add_argument("--since", type=_iso)
    p.add_argument("--reason")
    _acting_admin(p)

    p = add(
        "audit",
        _command("audit", "audit"),
        "compare the ledger with 1ClickImpact's records and reverse proven duplicates",
    )
    p.add_argument("--since", type=_iso, help="read the records from this time (ISO-8601)")
    p.add_argument("--json", action="store_true")

    p = add(
        "report",
        _command("report", "report"),
        "the impacts standing at 1ClickImpact, their totals and the emissions they cover",
    )
    p.add_argument("--from", dest="start", metavar="DATE", help="first UTC day, YYYY-MM-DD")
    p.add_argument("--to", dest="end", metavar="DATE", help="last UTC day, included")
    p.add_argument("--format", default="table", choices=["table", "csv", "json"])
    p.add_argument("--by", default="month", choices=["day", "month", "rule", "site"])

    p = add(
        "catch-up",
        _command("catch_up", "catch_up"),
        "offset the emissions growth of bill confirmations that never arrived",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="read and say what each rule would offset per site; store and send nothing",
    )
    p.add_argument("--json", action="store_true")

    notify = add("notify", _needs_subcommand(parser), "notifications to operators")
    notify_sub = notify.add_subparsers(dest="notify_command", required=True, metavar="ACTION")
    p = notify_sub.add_parser("test", help="send one notification to every CARBONHOOK_NOTIFY_URL")
    p.set_defaults(handler=_command("notify", "notify_test"))
    p.add_argument("--json", action="store_true")

    captures = add("captures", _needs_subcommand(parser), "the capture ledger")
    cap_sub = captures.add_subparsers(dest="captures_command", required=True, metavar="ACTION")
    p = cap_sub.add_parser("list", help="list ledger rows, newest first")
    p.set_defaults(handler=_command("admin", "captures_list"))
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    for name, text in (
        ("approve", "send a held capture once, past the limits"),
        ("reject", "never send a held capture"),
    ):
        p = cap_sub.add_parser(name, help=text)
        p.set_defaults(handler=_command("admin", "captures_decide"), decision=name)
        p.add_argument("id", type=int)
        p.add_argument("--reason", help="why, kept with the decision")
        _acting_admin(p)
    p = cap_sub.add_parser("resolve", help="settle an unknown capture after checking 1ClickImpact")
    p.set_defaults(handler=_command("admin", "captures_decide"), decision="resolve")
    p.add_argument("id", type=int)
    p.add_argument("--reason", help="why, kept with the decision")
    _acting_admin(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--captured", dest="captured", action="store_true")
    group.add_argument("--not-captured", dest="captured", action="store_false")
    return parser


def _acting_admin(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--as",
        dest="acting_as",
        metavar="NAME",
        help="the admin recorded as doing this (default: your OS user name)",
    )


def _needs_subcommand(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return handler


def _iso(value: str) -> datetime:
    from receiver.events import parse_timestamp

    try:
        return parse_timestamp(value)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {value!r}") from None
