"""The `carbonhook` command, called as users call it."""

from __future__ import annotations

import getpass
import json
import subprocess
import sys
from pathlib import Path

import pytest

from carbonhook.cli.arguments import main
from tests.support import ROOT, keep_invalid, make_body, query, store_delivery


@pytest.fixture
def cli_env(sqlite_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CARBONHOOK_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("CARBONHOOK_BROKER_URL", "memory://")
    return sqlite_url


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def fail_event(db: str, subject: str) -> int:
    return mark(db, store_delivery(db, make_body(subject=subject)), "failed", last_error="HTTP 500 boom")


def mark(db: str, event_id: int, status: str, **columns: str) -> int:
    """Put a stored event in `status`, with other columns set as given."""
    from sqlalchemy import create_engine, text

    from carbonhook.database import sync_url

    engine = create_engine(sync_url(db))
    sets = ", ".join(f"{name} = :{name}" for name in ["status", *columns])
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE events SET {sets} WHERE id = :id"), {"id": event_id, "status": status, **columns})
    engine.dispose()
    return event_id


def test_waiting_events_are_listed_shown_with_what_they_wait_for_and_replayed_to_check_now(cli_env: str, capsys: pytest.CaptureFixture[str]):
    note = "waiting for rule 'published' (crp.status is 'draft', wanted 'published')"
    event_id = mark(cli_env, store_delivery(cli_env, make_body(subject="crp_cliw")), "waiting", note=note)
    fail_event(cli_env, "crp_clif")
    code, out, _ = run(capsys, "events", "list", "--status", "waiting", "--json")
    assert code == 0 and [(e["id"], e["status"], e["note"]) for e in json.loads(out)] == [(event_id, "waiting", note)]
    code, out, _ = run(capsys, "events", "show", str(event_id))
    assert code == 0 and "waiting" in out and "crp.status is 'draft'" in out
    code, out, _ = run(capsys, "events", "replay", str(event_id), "--reason", "published now")
    assert code == 0 and f"replayed event {event_id} (was waiting)" in out


def test_events_list_show_and_replay(cli_env: str, capsys: pytest.CaptureFixture[str]):
    event_id = fail_event(cli_env, "crp_cli1")
    code, out, _ = run(capsys, "events", "list", "--status", "failed", "--json")
    assert code == 0 and [e["id"] for e in json.loads(out)] == [event_id]
    code, out, _ = run(capsys, "events", "list")
    assert code == 0 and "crp_cli1" in out and "HTTP 500 boom" in out
    code, out, _ = run(capsys, "events", "show", str(event_id), "--json")
    assert json.loads(out)["last_error"] == "HTTP 500 boom"
    code, out, _ = run(capsys, "events", "replay", str(event_id), "--reason", "upstream fixed")
    assert code == 0 and f"replayed event {event_id} (was failed)" in out
    assert query(cli_env, "SELECT via, reason FROM replays") == [("cli", "upstream fixed")]
    assert query(cli_env, "SELECT admin FROM replays") == [(getpass.getuser(),)]  # the OS user
    # memory:// — nothing this process can enqueue to: the event waits as pending for the sweeper
    assert query(cli_env, f"SELECT status FROM events WHERE id = {event_id}") == [("pending",)]


def test_bulk_replay_shows_progress_and_counts(cli_env: str, capsys: pytest.CaptureFixture[str]):
    for n in range(3):
        fail_event(cli_env, f"crp_bulk{n}")
    code, out, err = run(capsys, "events", "replay", "--status", "failed")
    assert code == 0 and "replayed 3 of 3 events" in out
    assert "replaying" in err


def hold_capture(db: str, subject: str, status: str = "held") -> tuple[int, int]:
    """An event held over a limit with its capture (or one whose outcome is `unknown`)."""
    from sqlalchemy import create_engine, insert

    from carbonhook.database import sync_url
    from carbonhook.schema import Capture, utcnow

    event_id = fail_event(db, subject)
    engine = create_engine(sync_url(db))
    now = utcnow()
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE events SET status = 'held' WHERE id = {event_id}")
        capture_id = conn.execute(
            insert(Capture).values(event_id=event_id, rule="flat", subject_id=subject, part=0, action="capture_carbon", amount=500, notify=True, approved=False, status=status, attempts=0, created_at=now, updated_at=now).returning(Capture.id)
        ).scalar_one()
    engine.dispose()
    return event_id, int(capture_id)


def test_the_admin_commands_act_as_the_os_user_or_as_named_and_show_who(cli_env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(getpass, "getuser", lambda: "jane")
    approved_event, approved = hold_capture(cli_env, "crp_a1")
    _, rejected = hold_capture(cli_env, "crp_r1")
    _, unknown = hold_capture(cli_env, "crp_u1", status="unknown")
    replayed = fail_event(cli_env, "crp_f1")

    assert run(capsys, "captures", "approve", str(approved), "--reason", "the board agreed")[0] == 0
    assert run(capsys, "captures", "reject", str(rejected), "--as", "ops-bot")[0] == 0
    assert run(capsys, "captures", "resolve", str(unknown), "--not-captured", "--as", "kim", "--reason", "not listed")[0] == 0
    assert run(capsys, "events", "replay", str(replayed), "--as", "kim", "--reason", "retry")[0] == 0

    assert query(cli_env, "SELECT capture_id, decision, status, admin, via, reason FROM decisions ORDER BY id") == [
        (approved, "approve", "pending", "jane", "cli", "the board agreed"),
        (rejected, "reject", "rejected", "ops-bot", "cli", None),
        (unknown, "resolve", "failed", "kim", "cli", "not listed"),
    ]
    code, out, _ = run(capsys, "captures", "list", "--json")
    decisions = {c["id"]: [(d["decision"], d["admin"], d["via"], d["reason"]) for d in c["decisions"]] for c in json.loads(out)}
    assert decisions[approved] == [("approve", "jane", "cli", "the board agreed")] and decisions[rejected] == [("reject", "ops-bot", "cli", None)]
    code, out, _ = run(capsys, "captures", "list")
    assert "decided by" in out and "approve: jane (cli)" in out and "reject: ops-bot (cli)" in out and "resolve: kim (cli)" in out
    code, out, _ = run(capsys, "events", "show", str(approved_event), "--json")
    detail = json.loads(out)
    assert [(r["admin"], r["via"], r["reason"]) for r in detail["replays"]] == [("jane", "cli", f"capture {approved} approved: the board agreed")]
    assert [(d["admin"], d["decision"]) for d in detail["captures"][0]["decisions"]] == [("jane", "approve")]
    code, out, _ = run(capsys, "events", "show", str(approved_event))
    assert code == 0
    replays = out[out.index("replays"):out.index("captures")]
    assert "admin" in replays and "jane" in replays
    decided = out[out.index("decisions"):]
    assert "jane" in decided and "approve" in decided and "the board agreed" in decided
    _, out, _ = run(capsys, "events", "show", str(replayed))
    assert "kim" in out and "retry" in out


def test_a_command_that_cannot_tell_who_runs_it_asks_for_a_name(cli_env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    def nobody() -> str:
        raise KeyError("getpwuid(): uid not found: 4242")

    monkeypatch.setattr(getpass, "getuser", nobody)
    event_id = fail_event(cli_env, "crp_n1")
    code, _, err = run(capsys, "events", "replay", str(event_id))
    assert code == 2 and "--as NAME" in err
    assert query(cli_env, "SELECT count(*) FROM replays") == [(0,)]
    assert run(capsys, "events", "replay", str(event_id), "--as", "jane@corp.example")[0] == 0
    assert query(cli_env, "SELECT admin FROM replays") == [("jane@corp.example",)]


def test_ignored_events_of_one_type_are_replayed_in_bulk(cli_env: str, capsys: pytest.CaptureFixture[str]):
    from sqlalchemy import create_engine, text

    from carbonhook.database import sync_url

    calculated = [store_delivery(cli_env, make_body(event="bill.calculated", subject=f"bill_{n}")) for n in range(2)]
    other = store_delivery(cli_env, make_body(event="company.updated", subject="comp_1"))
    engine = create_engine(sync_url(cli_env))
    with engine.begin() as conn:
        conn.execute(text("UPDATE events SET status = 'ignored'"))
    engine.dispose()
    code, out, _ = run(capsys, "events", "list", "--status", "ignored", "--type", "bill.calculated", "--json")
    assert [e["id"] for e in json.loads(out)] == calculated[::-1]
    code, out, _ = run(capsys, "events", "replay", "--status", "ignored", "--type", "bill.calculated")
    assert code == 0 and "replayed 2 of 2 events" in out
    code, out, _ = run(capsys, "events", "replay", str(other))
    assert code == 0 and f"replayed event {other} (was ignored)" in out
    assert query(cli_env, "SELECT status FROM events ORDER BY id") == [("pending",)] * 3
    assert query(cli_env, "SELECT previous_status FROM replays") == [("ignored",)] * 3


def test_invalid_deliveries_are_listed_shown_and_parsed_again_on_replay(cli_env: str, capsys: pytest.CaptureFixture[str]):
    still, _ = keep_invalid(cli_env, b"{not json", "body is not valid JSON: Expecting property name")
    later, _ = keep_invalid(cli_env, make_body(subject="crp_later"), "an earlier parser refused it")
    code, out, _ = run(capsys, "events", "list", "--status", "invalid", "--json")
    assert [e["id"] for e in json.loads(out)] == [later, still]
    code, out, _ = run(capsys, "events", "show", str(still))
    assert code == 0 and "invalid" in out and "body is not valid JSON" in out and "{not json" in out
    code, out, err = run(capsys, "events", "replay", str(still))
    assert code != 0 and f"event {still} still does not parse: body is not valid JSON" in err
    code, out, _ = run(capsys, "events", "replay", str(later))
    assert code == 0 and f"replayed event {later} (was invalid)" in out
    assert query(cli_env, "SELECT type, subject_id, status FROM events ORDER BY id") == [
        ("", query(cli_env, f"SELECT body_sha256 FROM events WHERE id = {still}")[0][0], "invalid"),
        ("crp.generated", "crp_later", "pending"),
    ]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["events", "replay", "1", "--as", "two words"], "'two words' is not an admin name"),
        (["captures", "approve", "1", "--as", "x" * 65], "is not an admin name"),
        (["events", "replay", "--status", "nope"], "unknown status 'nope'"),
        (["events", "replay"], "name event ids, or --status"),
        (["events", "show", "424242"], "event 424242 not found"),
        (["captures", "approve", "99"], "capture 99 not found"),
        (["captures", "list", "--status", "lost"], "unknown status 'lost'"),
    ],
)
def test_errors_are_one_line_on_stderr_with_a_nonzero_exit(cli_env: str, capsys: pytest.CaptureFixture[str], args: list[str], says: str):
    code, out, err = run(capsys, *args)
    assert code != 0
    assert err.startswith("carbonhook: error: ") and says in err and err.count("\n") == 1
    assert out == ""


def test_rules_check_prints_a_table_and_the_example_passes(capsys: pytest.CaptureFixture[str]):
    code, out, err = run(capsys, "rules", "check", str(ROOT / "rules.example.toml"))
    assert code == 0 and err == ""
    assert "offset-published-crps" in out and "bill-growth" in out and "50000 lbs/day" in out
    assert "1 trees" in out  # plant_tree counts trees, not pounds


def test_rules_check_warns_without_failing_about_a_type_carbonpass_is_not_known_to_send(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\nname = "calc"\non = "bill.calculated"\ncapture_lbs = 1\n'
        '[[rule]]\nname = "usual"\non = "bill.confirmed"\ncapture_lbs = 1\n'
    )
    code, out, err = run(capsys, "rules", "check", str(rules))
    assert code == 0 and "bill.calculated" in out and "usual" in out
    assert err.startswith("warning: 'bill.calculated' (rule calc) is not a type CarbonPass is known to send")
    assert err.count("\n") == 1


def test_rules_check_and_explain_say_what_a_rule_waits_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "on-publication"\non = "crp.generated"\nwait_until = { "crp.status" = "published" }\nwait_for = "14d"\ncapture_lbs = 5\n')
    code, out, _ = run(capsys, "rules", "check", str(rules))
    assert code == 0 and '{"crp.status": "published"} for up to 14d' in out and "status waiting" in out
    event = tmp_path / "event.json"
    event.write_text(make_body(subject="crp_explained").decode())
    crp = tmp_path / "crp.json"
    crp.write_text(json.dumps({"id": "crp_explained", "status": "draft"}))
    code, out, _ = run(capsys, "rules", "explain", str(event), "--rules", str(rules), "--crp", str(crp))
    assert code == 0 and "WAIT      on-publication" in out
    assert "waits until it holds: crp.status is 'draft', wanted 'published'" in out and "would send" not in out


def test_rules_check_names_the_rule_field_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    bad = tmp_path / "rules.toml"
    bad.write_text('[[rule]]\nname = "oops"\non = "crp.generated"\ncapture_lbs = "many"\n')
    code, _, err = run(capsys, "rules", "check", str(bad))
    assert code == 2 and "line 4" in err and "'oops'" in err and "capture_lbs" in err


def test_rules_explain_says_what_matches_and_what_would_be_sent(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    event = tmp_path / "event.json"
    event.write_text(make_body(event="bill.confirmed", subject="bill_x", siteId="site_3rZ1").decode())
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\nname = "site-offset"\non = "bill.confirmed"\noffset = { fraction = 0.01 }\n'
        '[[rule]]\nname = "big-companies"\non = "bill.confirmed"\nwhen = { "company.employeeCount" = { gte = 100 } }\ncapture_lbs = 5\n'
    )
    code, out, _ = run(capsys, "rules", "explain", str(event), "--rules", str(rules))
    assert code == 0
    assert "MATCH     site-offset" in out and "would send: capture_carbon amount=3792" in out
    assert "no match  big-companies" in out and "company.employeeCount is 42" in out
    company = tmp_path / "company.json"
    company.write_text(json.dumps({"data": {"employeeCount": 500}}))
    code, out, _ = run(capsys, "rules", "explain", str(event), "--rules", str(rules), "--company", str(company))
    assert "MATCH     big-companies" in out
    event.write_text(make_body(event="bill.calculated", subject="bill_x").decode())
    code, out, _ = run(capsys, "rules", "explain", str(event), "--rules", str(rules))
    assert code == 0 and out == "no rule is on 'bill.calculated': a worker would end the event ignored\n"


def test_a_worker_on_the_in_process_broker_says_it_needs_a_shared_one(cli_env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CARBONHOOK_CARBONPASS_API_KEY", "k")
    monkeypatch.setenv("CARBONHOOK_IMPACT_API_KEY", "k")
    code, _, err = run(capsys, "worker")
    assert code == 2 and "needs a shared broker" in err


def test_a_malformed_setting_stops_with_the_variable_named(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "carbonhook", "serve"],
        env={"PATH": "/usr/bin:/bin", "CARBONHOOK_HTTP_TIMEOUT_S": "abc"},
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("carbonhook: error: CARBONHOOK_HTTP_TIMEOUT_S")


def test_serve_without_a_secret_names_the_variable(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "carbonhook", "serve"], env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "CARBONHOOK_WEBHOOK_SECRETS is required" in result.stderr


def test_migrate_is_idempotent(cli_env: str, capsys: pytest.CaptureFixture[str]):
    assert run(capsys, "migrate")[0] == 0
    assert run(capsys, "migrate")[1] == "database is up to date\n"


@pytest.mark.parametrize("in_process", [True, False])
def test_run_at_start_up_hands_over_what_its_queue_cannot_have(sqlite_url: str, monkeypatch: pytest.MonkeyPatch, in_process: bool):
    from carbonhook.cli import processes
    from carbonhook.database import create_sync_engine
    from carbonhook.queue import make_broker
    from carbonhook.store import EventStore

    store = EventStore(create_sync_engine(sqlite_url))
    refused = store_delivery(sqlite_url, make_body(subject="crp_refused"))
    store.mark_pending([refused])
    queued = store_delivery(sqlite_url, make_body(subject="crp_queued"))
    waiting = mark(sqlite_url, store_delivery(sqlite_url, make_body(subject="crp_waiting")), "waiting")
    handed: list[int] = []
    monkeypatch.setattr(processes, "enqueue_events", lambda broker, ids: handed.extend(ids))
    # An in-process queue started empty: the queued event's message died with the last process.
    broker = make_broker("memory://") if in_process else object()
    try:
        processes.requeue_pending(store, broker)
    finally:
        store.engine.dispose()
    # A waiting event's re-check message died too; a shared broker still holds it.
    assert handed == ([refused, queued, waiting] if in_process else [refused])
    assert query(sqlite_url, "SELECT status FROM events ORDER BY id") == [("queued",), ("queued",), ("waiting",)]


PLACEHOLDER_ENV = {
    "PATH": "/usr/bin:/bin",
    "CARBONHOOK_DATABASE_URL": "postgresql://carbonhook:pg-Pa55word-7e1@127.0.0.1:9/carbonhook",
    "CARBONHOOK_BROKER_URL": "redis://:redis-Pa55word-3c2@127.0.0.1:9/0",
    "CARBONHOOK_WEBHOOK_SECRETS": "change-me-webhook-secret",
    "CARBONHOOK_CARBONPASS_API_KEY": "cp_live_0123456789",
    "CARBONHOOK_IMPACT_API_KEY": "live_0123456789",
}


@pytest.mark.parametrize(
    ("command", "env", "variable"),
    [
        (["serve"], {}, "CARBONHOOK_WEBHOOK_SECRETS"),
        (["serve", "--workers", "2"], {}, "CARBONHOOK_WEBHOOK_SECRETS"),
        (["run"], {}, "CARBONHOOK_WEBHOOK_SECRETS"),
        (["worker"], {}, "CARBONHOOK_WEBHOOK_SECRETS"),
        (["serve"], {"CARBONHOOK_WEBHOOK_SECRETS": "0123456789abcde"}, "CARBONHOOK_WEBHOOK_SECRETS"),
        (["serve"], {"CARBONHOOK_WEBHOOK_SECRETS": "9f86d081884c7d659a2f", "CARBONHOOK_ADMIN_TOKEN": "change-me-admin-token"}, "CARBONHOOK_ADMIN_TOKEN"),
        (["worker"], {"CARBONHOOK_WEBHOOK_SECRETS": "9f86d081884c7d659a2f", "CARBONHOOK_IMPACT_API_URL": "http://impact.internal"}, "CARBONHOOK_IMPACT_API_URL"),
    ],
)
def test_the_services_refuse_to_start_on_an_example_secret_naming_the_variable(tmp_path: Path, command: list[str], env: dict[str, str], variable: str):
    result = subprocess.run([sys.executable, "-m", "carbonhook", *command], env={**PLACEHOLDER_ENV, **env}, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"carbonhook: error: {variable}: "), result.stderr
    for secret in ("change-me-webhook-secret", "pg-Pa55word", "redis-Pa55word", "change-me-admin-token"):
        assert secret not in result.stdout + result.stderr


def test_the_sandbox_keeps_its_demo_secret(tmp_path: Path):
    from carbonhook.cli.bootstrap import SANDBOX_SECRET, settings_for

    settings = settings_for(True)
    assert settings.webhook_secrets[0].get_secret_value() == SANDBOX_SECRET
    with pytest.raises(Exception, match="CARBONHOOK_WEBHOOK_SECRETS"):
        settings.check_production()  # which is why `run --sandbox` does not call it
