"""Every capture an event ever planned is settled before the event is (workers/settlement.py):
lost answers are found, never sent twice; rows no longer planned are superseded, their spend
given back; a capture of a signature waits while one of that signature is unknown."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import Harness, RunningEmulator, make_body, query

RULES = """
[[rule]]
name = "published"
on = "crp.generated"
when = { status = "published" }
capture_lbs = 500
customer_email = "esg@example.com"
customer_name = "Example Ltd"
"""
RENAMED = RULES.replace('name = "published"', 'name = "published-v2"')
NOTHING_MATCHES = RULES.replace('when = { status = "published" }', 'when = { status = "archived" }')


@pytest.fixture
def harness(db_url: str, emulator: RunningEmulator) -> Iterator[Harness]:
    h = Harness(db_url, emulator, RULES)
    yield h
    h.runtime.close()


def use_rules(harness: Harness, text: str) -> None:
    from workers.rules import parse_rules

    harness.runtime.rules.current = parse_rules(text)


def spend_today(harness: Harness) -> int:
    rows = query(harness.db, "SELECT lbs FROM spend WHERE \"window\" LIKE 'day:%'")
    return int(rows[0][0]) if rows else 0


def test_an_unknown_capture_whose_rule_no_longer_matches_is_found_before_the_event_succeeds(harness: Harness):
    harness.emulator.control("faults", {"endpoint": "capture_carbon", "mode": "drop", "times": 1})
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "retry"
    assert harness.captures()[0][4] == "unknown"
    use_rules(harness, NOTHING_MATCHES)
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "succeeded"
    assert [c[4] for c in harness.captures()] == ["captured"]
    assert len(harness.emulator.impacts) == 1


def test_an_unknown_capture_never_made_and_no_longer_planned_is_superseded_and_its_spend_given_back(harness: Harness):
    import time

    harness.emulator.control("faults", {"endpoint": "capture_carbon", "status": 502, "times": 1})
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "retry"
    assert harness.captures()[0][4] == "unknown" and spend_today(harness) == 500
    use_rules(harness, NOTHING_MATCHES)
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "retry"  # still inside its settle window
    assert harness.status(event_id)[0] == "queued"
    time.sleep(1.1)  # the settle window (1 s in tests) passes with no record found
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "succeeded"
    assert [c[4] for c in harness.captures()] == ["superseded"]
    assert spend_today(harness) == 0
    assert harness.emulator.impacts == []


def test_a_renamed_rule_does_not_send_again_what_the_old_name_captured(harness: Harness):
    harness.emulator.control("faults", {"endpoint": "capture_carbon", "mode": "drop", "times": 1})
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "retry"
    use_rules(harness, RENAMED)
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "succeeded"
    assert [(c[0], c[4]) for c in harness.captures()] == [("published", "captured"), ("published-v2", "superseded")]
    assert len(harness.emulator.impacts) == 1


def test_a_row_never_sent_and_no_longer_planned_is_superseded(harness: Harness):
    harness.emulator.control("faults", {"endpoint": "capture_carbon", "status": 429, "retry_after": 0, "times": 1})
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "retry"
    assert harness.captures()[0][4] == "failed"  # a definite refusal: nothing happened
    use_rules(harness, NOTHING_MATCHES)
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "succeeded"
    assert [c[4] for c in harness.captures()] == ["superseded"]
    assert harness.emulator.impacts == []


def test_the_database_refuses_to_end_an_event_succeeded_while_a_capture_is_open(harness: Harness):
    from carbonhook.statuses import EventStatus

    harness.emulator.control("faults", {"endpoint": "capture_carbon", "mode": "drop", "times": 1})
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "retry"
    harness.due_now(event_id)
    event = harness.processor.store.claim(event_id, lease_s=60)
    assert event is not None
    assert not harness.processor.store.finish(event, EventStatus.SUCCEEDED, note="too early")
    assert harness.status(event_id)[0] == "processing"


def test_no_capture_of_a_signature_is_sent_while_one_of_that_signature_is_unknown(harness: Harness):
    harness.emulator.control("faults", {"endpoint": "capture_carbon", "mode": "drop", "times": 1})
    first = harness.deliver(make_body(subject="crp_first"))
    assert harness.processor.process(first) == "retry"
    second = harness.deliver(make_body(subject="crp_second"))  # same rule: same amount, customer
    assert harness.processor.process(second) == "retry"
    assert "unknown" in (harness.status(second)[1] or "")
    assert len(harness.emulator.impacts) == 1  # only the first, whose answer was lost
    harness.due_now(first)
    assert harness.processor.process(first) == "succeeded"
    harness.due_now(second)
    assert harness.processor.process(second) == "succeeded"
    rows = harness.captures()
    assert [c[4] for c in rows] == ["captured", "captured"]
    impacts = {(i["user_id"], i["time_utc"]) for i in harness.emulator.impacts}
    claimed = set(query(harness.db, "SELECT user_id, time_utc FROM captures"))
    assert claimed == impacts and len(impacts) == 2


def test_without_metadata_in_the_records_an_unknown_capture_is_matched_to_its_own_record(db_url: str, emulator: RunningEmulator):
    harness = Harness(db_url, emulator, RULES)
    try:
        emulator.state.records_include_metadata = False
        # Another capture of the same signature stands already (made before this one).
        done = harness.deliver(make_body(subject="crp_done"))
        assert harness.processor.process(done) == "succeeded"
        emulator.control("faults", {"endpoint": "capture_carbon", "mode": "drop", "times": 1})
        lost = harness.deliver(make_body(subject="crp_lost"))
        assert harness.processor.process(lost) == "retry"
        harness.due_now(lost)
        assert harness.processor.process(lost) == "succeeded"
        impacts = {(i["user_id"], i["time_utc"]) for i in emulator.impacts}
        claimed = query(harness.db, "SELECT user_id, time_utc FROM captures ORDER BY id")
        assert len(impacts) == 2 and set(claimed) == impacts  # each row its own record
    finally:
        harness.runtime.close()


def test_a_plant_tree_rule_is_held_over_its_daily_limit(db_url: str, emulator: RunningEmulator):
    rules = '[limits]\nmax_trees_per_day = 3\n\n[[rule]]\nname = "trees"\non = "crp.generated"\naction = "plant_tree"\ncapture_lbs = 2\n'
    harness = Harness(db_url, emulator, rules)
    try:
        assert harness.processor.process(harness.deliver(make_body(subject="crp_a"))) == "succeeded"
        assert harness.processor.process(harness.deliver(make_body(subject="crp_b"))) == "held"
        assert [c[4] for c in harness.captures()] == ["captured", "held"]
        assert query(harness.db, "SELECT lbs FROM spend WHERE \"window\" LIKE 'trees:day:%'") == [(2,)]
    finally:
        harness.runtime.close()


def test_a_clean_ocean_rule_is_held_over_its_monthly_limit(db_url: str, emulator: RunningEmulator):
    rules = '[limits]\nmax_waste_lbs_per_month = 10\n\n[[rule]]\nname = "ocean"\non = "crp.generated"\naction = "clean_ocean"\ncapture_lbs = 6\n'
    harness = Harness(db_url, emulator, rules)
    try:
        assert harness.processor.process(harness.deliver(make_body(subject="crp_a"))) == "succeeded"
        assert harness.processor.process(harness.deliver(make_body(subject="crp_b"))) == "held"
        assert query(harness.db, "SELECT lbs FROM spend WHERE \"window\" LIKE 'waste:month:%'") == [(6,)]
    finally:
        harness.runtime.close()


def strict(emulator: RunningEmulator, **overrides: object) -> None:
    answer = emulator.control("profile", {"name": "strict", **overrides})
    assert answer["name"] == "strict", answer


def test_a_lost_answer_whose_record_is_listed_only_seconds_later_is_found_not_sent_again(db_url: str, emulator: RunningEmulator):
    strict(emulator, records_lag_s=2.0)
    harness = Harness(db_url, emulator, RULES, reconcile_after_s=6)
    try:
        emulator.control("faults", {"endpoint": "capture_carbon", "mode": "drop", "times": 1})
        event_id = harness.deliver(make_body())
        assert harness.settle(event_id) == "succeeded"
        assert len(emulator.impacts) == 1
        assert [c[4] for c in harness.captures()] == ["captured"]
    finally:
        harness.runtime.close()


def test_a_capture_that_1clickimpact_finishes_after_the_caller_gave_up_is_found_not_sent_again(db_url: str, emulator: RunningEmulator):
    strict(emulator)
    harness = Harness(db_url, emulator, RULES, http_timeout_s=0.5, reconcile_after_s=8)
    try:
        emulator.control("faults", {"endpoint": "capture_carbon", "mode": "late_finish", "delay_s": 1.5, "times": 1})
        event_id = harness.deliver(make_body())
        assert harness.processor.process(event_id) == "retry"
        assert harness.captures()[0][4] == "unknown" and emulator.impacts == []  # not made yet
        assert harness.settle(event_id) == "succeeded"
        assert len(emulator.impacts) == 1
        [impact] = emulator.impacts
        assert harness.captures()[0][4:6] == ("captured", impact["user_id"])
    finally:
        harness.runtime.close()


def test_without_metadata_a_record_whose_email_1clickimpact_lower_cased_is_still_matched(db_url: str, emulator: RunningEmulator):
    strict(emulator, records_lag_s=0.0)  # no metadata in listings, e-mails lower-cased
    rules = RULES.replace('customer_email = "esg@example.com"', 'customer_email = "ESG@Example.com"')
    harness = Harness(db_url, emulator, rules, reconcile_after_s=3)
    try:
        emulator.control("faults", {"endpoint": "capture_carbon", "mode": "drop", "times": 1})
        event_id = harness.deliver(make_body())
        assert harness.settle(event_id) == "succeeded"
        assert len(emulator.impacts) == 1
        [impact] = emulator.impacts
        assert query(harness.db, "SELECT status, user_id, time_utc FROM captures") == [("captured", impact["user_id"], impact["time_utc"])]
    finally:
        harness.runtime.close()


def test_a_record_tagged_by_another_deployment_is_never_taken_for_ours(db_url: str, emulator: RunningEmulator):
    import time

    harness = Harness(db_url, emulator, RULES)
    try:
        emulator.control("faults", {"endpoint": "capture_carbon", "status": 502, "times": 1})
        event_id = harness.deliver(make_body())
        assert harness.processor.process(event_id) == "retry"
        [row] = query(harness.db, "SELECT id FROM captures")
        # Another installation's capture: same amount and customer, a tag naming our row's id.
        emulator.state.record_impact(
            "capture_carbon", 500, customer_email="esg@example.com",
            metadata={"carbonhook_tag": f"00000000-0000-0000-0000-000000000000/{row[0]}/x", "carbonhook_capture": str(row[0])},
        )
        time.sleep(1.1)  # the settle window passes: the row is sent, not matched to theirs
        harness.due_now(event_id)
        assert harness.processor.process(event_id) == "succeeded"
        assert len(emulator.impacts) == 2
        ours = [i for i in emulator.impacts if not i["metadata"]["carbonhook_tag"].startswith("00000000")]
        assert query(harness.db, "SELECT user_id, time_utc FROM captures") == [(ours[0]["user_id"], ours[0]["time_utc"])]
    finally:
        harness.runtime.close()


def test_a_superseded_row_planned_again_is_sent_once(harness: Harness):
    harness.emulator.control("faults", {"endpoint": "capture_carbon", "status": 429, "retry_after": 0, "times": 1})
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "retry"
    use_rules(harness, NOTHING_MATCHES)
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "succeeded"
    assert [c[4] for c in harness.captures()] == ["superseded"]
    use_rules(harness, RULES)  # the rule comes back; an admin replays the event
    harness.processor.store.replay(event_id, admin="ops", via="cli", reason="rule restored", status="queued")
    assert harness.processor.process(event_id) == "succeeded"
    assert [c[4] for c in harness.captures()] == ["captured"]
    assert len(harness.emulator.impacts) == 1


def test_a_renamed_rule_replayed_again_still_sends_nothing_more(harness: Harness):
    harness.emulator.control("faults", {"endpoint": "capture_carbon", "mode": "drop", "times": 1})
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "retry"
    use_rules(harness, RENAMED)
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "succeeded"
    harness.processor.store.replay(event_id, admin="ops", via="cli", reason="again", status="queued")
    assert harness.processor.process(event_id) == "succeeded"
    assert [(c[0], c[4]) for c in harness.captures()] == [("published", "captured"), ("published-v2", "superseded")]
    assert len(harness.emulator.impacts) == 1
