"""What a notification says (carbonhook/notices.py): pure, no database."""

from __future__ import annotations

import json

from carbonhook import notices
from carbonhook.statuses import NotificationKind


def test_a_held_capture_says_held_with_its_rule_amount_and_a_link_to_its_event():
    notice = notices.held(7, "tok", 3, "published", 500, "capture_carbon")
    body = notices.message(notice.kind, notice.fields, public_url="https://hook.example.com/")
    assert body["kind"] == "held" and "held" in body["text"]
    assert (body["capture_id"], body["event_id"], body["rule"], body["amount"]) == (7, 3, "published", 500)
    assert body["link"] == "https://hook.example.com/admin/events/3"
    assert body["text"].endswith("https://hook.example.com/admin/events/3")


def test_without_a_public_url_a_message_has_no_link():
    notice = notices.invalid_key(4)
    body = notices.message(NotificationKind.INVALID, {"event_id": 4}, public_url=None)
    assert "link" not in body and notice == "invalid:4"
    assert "invalid event 4" in body["text"]


def test_a_secret_that_reached_a_failure_reason_is_redacted_from_every_field():
    key = "imp_live_9f8e7d6c5b4a"
    notice = notices.failed(5, "tok", "crp.generated", f"HTTP 401 with key {key}")
    body = notices.message(notice.kind, notice.fields, public_url=None, secrets=(key,))
    assert key not in json.dumps(body)
    assert notices.REDACTED in body["reason"] and notices.REDACTED in body["text"]


def test_a_failure_is_keyed_by_its_attempt_and_a_type_by_its_name_alone():
    assert notices.failed(5, "a1", "t", "x").key != notices.failed(5, "a2", "t", "x").key
    assert notices.ignored_type("bill.calculated", 1).key == notices.ignored_type("bill.calculated", 9).key


def test_a_long_failure_reason_is_cut_short():
    notice = notices.failed(5, "tok", "t", "x" * 5000)
    assert len(notice.fields["reason"]) == notices.MAX_REASON_CHARS


def test_the_digest_reads_events_by_status_and_pounds_against_the_limits():
    notice = notices.digest(
        "2026-12-06",
        {"succeeded": 12, "failed": 1},
        {"day_lbs": 400, "month_lbs": 9000, "day_limit_lbs": 1000, "month_limit_lbs": None},
    )
    body = notices.message(notice.kind, notice.fields, public_url=None)
    assert notice.key == "digest:2026-12-06"
    assert "1 failed, 12 succeeded" in body["text"]
    assert "this day: 400 of 1000" in body["text"] and "this month: 9000 (no limit)" in body["text"]
    assert body["events"] == {"succeeded": 12, "failed": 1}
