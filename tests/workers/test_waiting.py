"""Rules that wait for a condition: the re-check interval, and events that wait on real
databases against the emulator over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import Harness, RunningEmulator, make_body, query
from workers.waiting import recheck_delay_s

MINUTE = 60.0
HOURS_4 = 4 * 3600.0

RULES = """
[[rule]]
name = "published"
on = "crp.generated"
wait_until = { "crp.status" = "published" }
wait_for = "14d"
capture_lbs = 500
customer_email = "esg@example.com"

[[rule]]
name = "at-once"
on = "crp.generated"
capture_lbs = 7
"""


def test_the_recheck_interval_doubles_from_its_minimum_up_to_its_maximum():
    waited, delays = 0.0, []
    for _ in range(12):
        delay = recheck_delay_s(waited, 14 * 86400, min_s=MINUTE, max_s=HOURS_4)
        delays.append(delay)
        waited += delay
    assert delays[:9] == [60, 60, 120, 240, 480, 960, 1920, 3840, 7680]
    assert delays[9:] == [HOURS_4] * 3


def test_the_recheck_never_comes_after_the_wait_ends():
    assert recheck_delay_s(3000, 100, min_s=MINUTE, max_s=HOURS_4) == 100
    assert recheck_delay_s(3000, -5, min_s=MINUTE, max_s=HOURS_4) == 0


@pytest.fixture
def harness(db_url: str, emulator: RunningEmulator) -> Iterator[Harness]:
    h = Harness(db_url, emulator, RULES, wait_min_interval_s=MINUTE, wait_max_interval_s=HOURS_4)
    yield h
    h.runtime.close()


def event_row(h: Harness, event_id: int) -> tuple[str, int, str | None, bool]:
    found = query(h.db, f"SELECT status, attempts, note, waiting_since IS NOT NULL FROM events WHERE id = {event_id}")
    return found[0]


def captured(h: Harness) -> list[tuple[str, int, str]]:
    return [(rule, amount, status) for rule, _subject, _part, amount, status, _user, _email in h.captures()]


def waited_since_long_ago(h: Harness, event_id: int, seconds: float) -> None:
    """Move the event's first wait `seconds` back, by the database's clock."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import create_engine, update

    from carbonhook.database import sync_url
    from carbonhook.schema import Event

    engine = create_engine(sync_url(h.db))
    then = datetime.now(UTC) - timedelta(seconds=seconds)
    with engine.begin() as conn:  # through the column's type: stored as the store stores it
        conn.execute(update(Event).where(Event.id == event_id).values(waiting_since=then))
    engine.dispose()


def test_a_draft_crp_waits_is_published_and_is_captured_exactly_once(harness: Harness):
    harness.emulator.state.set_crp("crp_draft1", status="draft")
    event_id = harness.deliver(make_body(subject="crp_draft1"))
    assert harness.processor.process(event_id) == "waiting"
    status, attempts, note, since = event_row(harness, event_id)
    assert (status, attempts, since) == ("waiting", 0, True)  # no retry used up
    assert note == "waiting for rule 'published' (crp.status is 'draft', wanted 'published')"
    assert harness.enqueued[-1] == (event_id, MINUTE)
    # An early message (a redelivery) finds it not due and puts it back for when it is.
    assert harness.processor.process(event_id) is None
    assert harness.enqueued[-1][0] == event_id and 0 < harness.enqueued[-1][1] <= MINUTE
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "waiting"  # still a draft
    assert len(harness.emulator.impacts) == 1  # the rule that does not wait, once
    harness.emulator.state.set_crp("crp_draft1", status="published")
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "succeeded"
    assert sorted(captured(harness)) == [("at-once", 7, "captured"), ("published", 500, "captured")]
    assert sorted(impact["amount"] for impact in harness.emulator.impacts) == [7, 500]
    assert event_row(harness, event_id)[:3] == ("succeeded", 1, None)
    harness.due_now(event_id)
    assert harness.processor.process(event_id) is None  # finished: nothing more is sent
    history = query(harness.db, f"SELECT outcome FROM event_attempts WHERE event_id = {event_id} ORDER BY id")
    assert history == [("waiting",), ("waiting",), ("succeeded",)]


def test_the_rule_without_a_wait_captures_at_once_and_never_twice_while_the_other_waits(harness: Harness):
    harness.emulator.state.set_crp("crp_draft2", status="draft")
    event_id = harness.deliver(make_body(subject="crp_draft2"))
    for _ in range(3):
        assert harness.processor.process(event_id) == "waiting"
        assert captured(harness) == [("at-once", 7, "captured")]
        harness.due_now(event_id)
    assert [impact["amount"] for impact in harness.emulator.impacts] == [7]


def test_the_recheck_interval_grows_with_the_time_waited(harness: Harness):
    harness.emulator.state.set_crp("crp_draft3", status="draft")
    event_id = harness.deliver(make_body(subject="crp_draft3"))
    assert harness.processor.process(event_id) == "waiting"
    waited_since_long_ago(harness, event_id, 1000)
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "waiting"
    assert 1000 <= harness.enqueued[-1][1] < 1100  # as long again as it has waited
    waited_since_long_ago(harness, event_id, 5 * 86400)
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "waiting"
    assert harness.enqueued[-1] == (event_id, HOURS_4)


def test_a_wait_that_expires_ends_succeeded_with_a_note_naming_the_rule(harness: Harness):
    harness.emulator.state.set_crp("crp_draft4", status="draft")
    event_id = harness.deliver(make_body(subject="crp_draft4"))
    assert harness.processor.process(event_id) == "waiting"
    waited_since_long_ago(harness, event_id, 14 * 86400 + 1)
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "succeeded"
    status, _attempts, note, _since = event_row(harness, event_id)
    assert status == "succeeded"
    assert note == "wait expired, nothing captured for rule 'published' (crp.status is 'draft', wanted 'published')"
    assert captured(harness) == [("at-once", 7, "captured")]
    # A replay checks once more; it does not restart the wait.
    harness.processor.store.replay(event_id, admin="ops", via="cli", reason=None, status="queued")
    assert harness.processor.process(event_id) == "succeeded"
    assert [impact["amount"] for impact in harness.emulator.impacts] == [7]


def test_the_wait_ends_as_soon_as_the_condition_holds_near_its_end(harness: Harness):
    harness.emulator.state.set_crp("crp_draft5", status="draft")
    event_id = harness.deliver(make_body(subject="crp_draft5"))
    assert harness.processor.process(event_id) == "waiting"
    waited_since_long_ago(harness, event_id, 14 * 86400 - 30)
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "waiting"
    assert 0 < harness.enqueued[-1][1] <= 30  # the last look is at the wait's end
    harness.emulator.state.set_crp("crp_draft5", status="published")
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "succeeded"
    assert event_row(harness, event_id)[2] is None
    assert sorted(captured(harness)) == [("at-once", 7, "captured"), ("published", 500, "captured")]


def test_an_admin_may_replay_a_waiting_event_to_check_it_now(harness: Harness):
    harness.emulator.state.set_crp("crp_draft6", status="draft")
    event_id = harness.deliver(make_body(subject="crp_draft6"))
    assert harness.processor.process(event_id) == "waiting"
    harness.emulator.state.set_crp("crp_draft6", status="published")
    assert harness.processor.process(event_id) is None  # not due for a minute
    previous = harness.processor.store.replay(event_id, admin="ops", via="cli", reason="published now", status="queued")
    assert previous == "waiting"
    assert harness.processor.process(event_id) == "succeeded"
    assert sorted(captured(harness)) == [("at-once", 7, "captured"), ("published", 500, "captured")]


def test_a_waiting_event_whose_recheck_message_was_lost_is_re_enqueued_by_the_sweeper_when_due(harness: Harness):
    from workers.sweeper import Sweeper

    harness.emulator.state.set_crp("crp_draft7", status="draft")
    event_id = harness.deliver(make_body(subject="crp_draft7"))
    assert harness.processor.process(event_id) == "waiting"
    batches: list[list[int]] = []
    sweeper = Sweeper(harness.processor.store, lambda ids: batches.append(list(ids)), interval_s=1, lease_s=1)
    sweeper.sweep_once()
    assert batches == [[]]  # its re-check is a minute away: its message is not lost
    harness.due_now(event_id)  # long past due, and no worker came: the message was lost
    sweeper.sweep_once()
    assert batches[-1] == [event_id]
    sweeper.sweep_once()
    assert batches[-1] == []  # stamped: the next sweep waits again
    assert harness.processor.process(event_id) == "waiting"  # the message sent again: still a draft
    harness.emulator.state.set_crp("crp_draft7", status="published")
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "succeeded"
    assert sorted(captured(harness)) == [("at-once", 7, "captured"), ("published", 500, "captured")]


def test_a_crp_the_emulator_publishes_later_is_waited_for_then_captured(db_url: str, emulator: RunningEmulator, request: pytest.FixtureRequest):
    from datetime import timedelta

    now = [emulator.state.clock()]
    emulator.state.clock = lambda: now[0]
    emulator.state.publish_drafts_after_s = 3600
    h = Harness(db_url, emulator, RULES, wait_min_interval_s=MINUTE, wait_max_interval_s=HOURS_4)
    request.addfinalizer(h.runtime.close)
    event_id = h.deliver(make_body(subject="crp_later"))
    assert h.processor.process(event_id) == "waiting"
    now[0] += timedelta(seconds=3600)
    h.due_now(event_id)
    assert h.processor.process(event_id) == "succeeded"
    assert sorted(captured(h)) == [("at-once", 7, "captured"), ("published", 500, "captured")]
