"""Notifications to operators (carbonhook/outbox.py, workers/notifier.py): one per change,
written with it, sent by the sweeper to a local HTTP receiver, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from receiver.events import parse_delivery
from tests.support import (
    CP_KEY,
    IMPACT_KEY,
    SECRET,
    Catcher,
    Harness,
    RunningEmulator,
    keep_invalid,
    make_body,
    query,
)

RULES = """
[limits]
max_lbs_per_day = 600

[[rule]]
name = "published"
on = "crp.generated"
when = { status = "published" }
capture_lbs = 500
customer_email = "esg@example.com"
"""
ADMIN_TOKEN = "admin-token-0123456789abcdef"


@pytest.fixture
def catcher() -> Iterator[Catcher]:
    c = Catcher().start()
    yield c
    c.stop()


def make_harness(db_url: str, emulator: RunningEmulator, *urls: str, **overrides: Any) -> Harness:
    settings: dict[str, Any] = {"notify_url": urls, "admin_token": ADMIN_TOKEN}
    return Harness(db_url, emulator, RULES, **(settings | overrides))


@pytest.fixture
def harness(db_url: str, emulator: RunningEmulator, catcher: Catcher) -> Iterator[Harness]:
    h = make_harness(db_url, emulator, catcher.url, public_url="https://hook.example.com")
    notifier(h).min_backoff_s = 0.0  # every retry is due at once
    yield h
    h.runtime.close()


def notifier(harness: Harness) -> Any:
    return harness.runtime.notifier


def notes(db: str, kind: str | None = None) -> list[tuple[Any, ...]]:
    where = f" WHERE kind = '{kind}'" if kind else ""
    return query(db, f"SELECT kind, dedupe_key, status FROM notifications{where} ORDER BY id")


def replay(harness: Harness, event_id: int) -> None:
    from carbonhook.admin import Admin

    admin = Admin(harness.processor.store, harness.processor.ledger, lambda ids: None, parse=parse_delivery)
    admin.replay(event_id, admin="ops", via="cli", reason="test")


# -- one notification per change -------------------------------------------------------------


def test_a_failed_event_makes_one_notification_and_failing_again_after_a_replay_a_second(harness: Harness):
    harness.emulator.control("faults", {"endpoint": "capture_carbon", "status": 400, "times": 2})
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "failed"
    assert harness.processor.process(event_id) is None  # the same failure, seen again
    assert [n[:1] + n[2:] for n in notes(harness.db)] == [("failed", "pending")]
    replay(harness, event_id)
    assert harness.processor.process(event_id) == "failed"
    keys = [key for _, key, _ in notes(harness.db, "failed")]
    assert len(keys) == 2 and len(set(keys)) == 2 and all(k.startswith(f"failed:{event_id}:") for k in keys)


def test_a_type_no_rule_names_is_told_once_however_many_come_and_whichever_process_sees_them(
    db_url: str, emulator: RunningEmulator, catcher: Catcher
):
    first = make_harness(db_url, emulator, catcher.url)
    second = make_harness(db_url, emulator, catcher.url)
    try:
        ids = [first.deliver(make_body(event="bill.calculated", subject=f"bill_{n}")) for n in range(3)]
        assert [first.processor.process(i) for i in ids[:2]] == ["ignored"] * 2
        assert second.processor.process(ids[2]) == "ignored"
    finally:
        first.runtime.close()
        second.runtime.close()
    assert notes(db_url) == [("ignored_type", "ignored_type:bill.calculated", "pending")]


def test_a_capture_held_over_a_limit_makes_one_notification_that_says_held(harness: Harness, catcher: Catcher):
    assert harness.processor.process(harness.deliver(make_body(subject="crp_a"))) == "succeeded"
    held = harness.deliver(make_body(subject="crp_b"))
    assert harness.processor.process(held) == "held"
    replay(harness, held)
    assert harness.processor.process(held) == "held"  # still held: no new change
    assert [n[0] for n in notes(harness.db)] == ["held"]
    notifier(harness).run()
    [body] = catcher.bodies
    assert "held" in body["text"] and (body["rule"], body["amount"], body["event_id"]) == ("published", 500, held)
    assert body["link"] == f"https://hook.example.com/admin/events/{held}"


def test_a_capture_unknown_past_the_settle_window_is_told_once_per_attempt(harness: Harness):
    import time

    harness.emulator.control("faults", {"endpoint": "capture_carbon", "status": 502, "times": 1})
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "retry"
    outbox = notifier(harness).outbox
    assert outbox.note_overdue_unknown(settle_s=60) == 0  # still within its window
    time.sleep(1.1)
    assert outbox.note_overdue_unknown(settle_s=1) == 1
    assert outbox.note_overdue_unknown(settle_s=1) == 0
    [(kind, key, _)] = notes(harness.db)
    assert kind == "unknown" and key.startswith("unknown:1:")


def test_an_invalid_delivery_is_told_once_however_often_it_comes(db_url: str):
    body = b'{"event": "crp.generated", "data": '
    kept, created = keep_invalid(db_url, body)
    again, created_again = keep_invalid(db_url, body)
    assert (created, created_again, again) == (True, False, kept)
    assert notes(db_url) == [("invalid", f"invalid:{kept}", "pending")]
    fields = json.loads(query(db_url, "SELECT fields FROM notifications")[0][0])
    assert fields == {"event_id": kept}


def test_a_valid_delivery_writes_no_notification(db_url: str):
    from tests.support import record_delivery

    record_delivery(db_url, make_body())
    assert notes(db_url) == []


def test_a_reversed_duplicate_is_told_once(harness: Harness):
    from carbonhook.audit_log import AuditLog
    from carbonhook.captures import Impact

    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "succeeded"
    log = AuditLog(harness.processor.ledger.engine)
    twin = Impact(user_id="u_twin", time_utc="2026-12-01T10:00:00.000Z", amount=500)
    assert log.begin_reversal(1, twin, "stood twice")
    log.end_reversal("u_twin", twin.time_utc, error="HTTP 503")
    assert notes(harness.db) == []  # not reversed yet
    log.end_reversal("u_twin", twin.time_utc)
    log.end_reversal("u_twin", twin.time_utc)
    assert notes(harness.db) == [("reversed", f"reversed:u_twin:{twin.time_utc}", "pending")]


# -- sending ---------------------------------------------------------------------------------


def test_a_receiver_down_for_a_while_gets_every_notification_once_when_it_is_back(
    db_url: str, emulator: RunningEmulator
):
    catcher = Catcher()  # not listening yet: its port refuses connections
    harness = make_harness(db_url, emulator, catcher.url)
    try:
        sender = notifier(harness)
        sender.min_backoff_s = 0.0
        harness.emulator.control("faults", {"endpoint": "capture_carbon", "status": 400, "times": 3})
        ids = [harness.deliver(make_body(subject=f"crp_{n}")) for n in range(3)]
        assert [harness.processor.process(i) for i in ids] == ["failed"] * 3
        for _ in range(3):
            assert sender.run() == 0
        assert {status for _, _, status in notes(harness.db)} == {"pending"}
        errors = query(harness.db, "SELECT last_error FROM notifications")
        assert all("secretpath" not in (e or "") for (e,) in errors)  # the URL is a secret
        catcher.start()
        assert sender.run() == 3
        assert sender.run() == 0
    finally:
        catcher.stop()
        harness.runtime.close()
    assert sorted(body["event_id"] for body in catcher.bodies) == sorted(ids)
    assert {status for _, _, status in notes(db_url)} == {"sent"}


def test_two_sweepers_at_once_never_send_one_notification_twice(db_url: str, emulator: RunningEmulator, catcher: Catcher):
    from carbonhook.notices import ignored_type

    first = make_harness(db_url, emulator, catcher.url)
    second = make_harness(db_url, emulator, catcher.url)
    try:
        outbox = notifier(first).outbox
        for n in range(40):
            outbox.write_one(ignored_type(f"type.{n}", n))
        barrier = threading.Barrier(2)

        def sweep(h: Harness) -> None:
            barrier.wait()
            while notifier(h).send_due(limit=5):
                pass

        threads = [threading.Thread(target=sweep, args=(h,)) for h in (first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        first.runtime.close()
        second.runtime.close()
    sent = sorted(body["type"] for body in catcher.bodies)
    assert sent == sorted(f"type.{n}" for n in range(40))
    assert {status for _, _, status in notes(db_url)} == {"sent"}


def test_a_notification_no_destination_takes_is_given_up_after_its_time(db_url: str, emulator: RunningEmulator):
    from prometheus_client import REGISTRY

    def given_up() -> float:
        return REGISTRY.get_sample_value("carbonhook_notifications_total", {"kind": "held", "outcome": "given_up"}) or 0.0

    catcher = Catcher(status=500).start()
    harness = make_harness(db_url, emulator, catcher.url)
    try:
        sender = notifier(harness)
        sender.give_up_s = 0.0
        before = given_up()
        assert harness.processor.process(harness.deliver(make_body(subject="crp_a"))) == "succeeded"
        assert harness.processor.process(harness.deliver(make_body(subject="crp_b"))) == "held"
        sender.run()
        sender.run()
    finally:
        catcher.stop()
        harness.runtime.close()
    assert len(catcher.bodies) == 1
    assert notes(db_url) == [("held", notes(db_url)[0][1], "given_up")]
    assert given_up() - before == 1


def test_without_a_destination_what_is_due_is_dropped_not_kept_for_a_later_one(db_url: str, emulator: RunningEmulator):
    harness = make_harness(db_url, emulator)
    try:
        harness.emulator.control("faults", {"endpoint": "capture_carbon", "status": 400, "times": 1})
        assert harness.processor.process(harness.deliver(make_body())) == "failed"
        notifier(harness).run()
    finally:
        harness.runtime.close()
    assert [status for _, _, status in notes(db_url)] == ["dropped"]


def test_the_digest_is_written_once_a_day_after_its_time(db_url: str, emulator: RunningEmulator, catcher: Catcher):
    today = datetime.now(UTC).replace(second=0, microsecond=0)
    now = [today.replace(hour=7, minute=59)]
    harness = make_harness(db_url, emulator, catcher.url, notify_digest="08:00")
    try:
        sender = notifier(harness)
        sender.clock = lambda: now[0]
        assert harness.processor.process(harness.deliver(make_body())) == "succeeded"
        assert not sender.write_digest_if_due()
        now[0] = now[0].replace(hour=8, minute=0)
        assert sender.write_digest_if_due()
        now[0] = now[0].replace(hour=23)
        assert not sender.write_digest_if_due()
        sender.run()
    finally:
        harness.runtime.close()
    [body] = catcher.bodies
    assert body["kind"] == "digest" and body["day"] == today.date().isoformat()
    assert body["events"] == {"succeeded": 1}
    assert body["spend"] == {"day_lbs": 500, "month_lbs": 500, "day_limit_lbs": 600, "month_limit_lbs": None}
    assert "this day: 500 of 600" in body["text"] and "this month: 500 (no limit)" in body["text"]


def test_no_notification_carries_a_secret_a_key_a_token_or_a_payload(harness: Harness, catcher: Catcher):
    assert harness.processor.process(harness.deliver(make_body(event="bill.other", subject="bill_1"))) == "ignored"
    payload = make_body(subject="crp_private", note="confidential-payload-marker")
    harness.emulator.control("faults", {"endpoint": "capture_carbon", "status": 400, "times": 1})
    assert harness.processor.process(harness.deliver(payload)) == "failed"
    keep_invalid(harness.db, b'{"broken": "confidential-payload-marker"')
    notifier(harness).run()
    assert sorted(body["kind"] for body in catcher.bodies) == ["failed", "ignored_type", "invalid"]
    sent = json.dumps(catcher.bodies)
    for secret in (SECRET, CP_KEY, IMPACT_KEY, ADMIN_TOKEN, "secretpath", "confidential-payload-marker"):
        assert secret not in sent
    tokens = [row[0] for row in query(harness.db, "SELECT attempt_token FROM events WHERE attempt_token IS NOT NULL")]
    assert tokens and not any(token in sent for token in tokens)


def test_the_running_sweeper_sends_what_a_worker_wrote(db_url: str, emulator: RunningEmulator, catcher: Catcher):
    from tests.support import wait_until

    harness = make_harness(db_url, emulator, catcher.url, sweep_interval_s=0.1)
    try:
        harness.emulator.control("faults", {"endpoint": "capture_carbon", "status": 400, "times": 1})
        event_id = harness.deliver(make_body())
        assert harness.processor.process(event_id) == "failed"
        harness.runtime.sweeper.start()
        wait_until(lambda: catcher.bodies, what="the notification to arrive")
    finally:
        harness.runtime.sweeper.stop()
        harness.runtime.close()
    [body] = catcher.bodies
    assert (body["kind"], body["event_id"]) == ("failed", event_id) and "HTTP 400" in body["reason"]


def test_notifications_go_by_e_mail_too_without_the_smtp_password(db_url: str, emulator: RunningEmulator, catcher: Catcher):
    import base64

    from tests.support import SmtpCatcher

    smtp = SmtpCatcher().start()
    harness = make_harness(
        db_url,
        emulator,
        catcher.url,
        smtp_url=f"smtp://ops:smtp-pass-0912@127.0.0.1:{smtp.port}?from=carbonhook@example.com",
        notify_email="oncall@example.com,esg@example.com",
    )
    try:
        harness.emulator.control("faults", {"endpoint": "capture_carbon", "status": 400, "times": 1})
        event_id = harness.deliver(make_body())
        assert harness.processor.process(event_id) == "failed"
        assert notifier(harness).run() == 1
        assert notifier(harness).run() == 0
    finally:
        smtp.stop()
        harness.runtime.close()
    [mail] = smtp.messages
    assert mail["from"] == "<carbonhook@example.com>"
    assert mail["to"] == ["<oncall@example.com>", "<esg@example.com>"]
    assert f"Subject: carbonhook: event {event_id} (crp.generated) failed" in mail["data"]
    assert "HTTP 400" in mail["data"] and "smtp-pass-0912" not in mail["data"]
    assert base64.b64decode(smtp.logins[0]) == b"\0ops\0smtp-pass-0912"
    assert len(catcher.bodies) == 1 and "smtp-pass-0912" not in json.dumps(catcher.bodies)


def test_an_smtp_server_that_is_down_leaves_the_e_mail_to_try_again_and_the_webhook_sent_once(
    db_url: str, emulator: RunningEmulator, catcher: Catcher
):
    from tests.support import SmtpCatcher

    smtp = SmtpCatcher()  # not listening yet
    harness = make_harness(db_url, emulator, catcher.url, smtp_url=f"smtp://127.0.0.1:{smtp.port}", notify_email="oncall@example.com")
    try:
        notifier(harness).min_backoff_s = 0.0
        harness.emulator.control("faults", {"endpoint": "capture_carbon", "status": 400, "times": 1})
        assert harness.processor.process(harness.deliver(make_body())) == "failed"
        assert notifier(harness).run() == 0
        [(error,)] = query(harness.db, "SELECT last_error FROM notifications")
        assert error.startswith(f"smtp://127.0.0.1:{smtp.port} to oncall@example.com: ConnectionRefusedError")
        smtp.start()
        assert notifier(harness).run() == 1
    finally:
        smtp.stop()
        harness.runtime.close()
    assert len(catcher.bodies) == 1 and len(smtp.messages) == 1
