"""The admin HTTP API over real HTTP: tokens and the admins they name, listing with cursors,
replay, decisions, and who made each."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support import (
    RunningEmulator,
    keep_invalid,
    make_body,
    query,
    settings_for_test,
    signed,
    store_delivery,
)

TOKEN = "admin-secret-token"  # the admin named `admin`
ALICE = "alice-secret-token-0123456789"
BOB = "bob-secret-token-0123456789"


class Api:
    def __init__(self, base: str, db: str, processor: Any) -> None:
        self.base = base
        self.db = db
        self.processor = processor

    def call(self, method: str, path: str, token: str | None = TOKEN, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.request(method, f"{self.base}/admin/api{path}", headers=headers, timeout=10, **kw)


@pytest.fixture
def api(db_url: str, emulator: RunningEmulator) -> Iterator[Api]:
    from dramatiq.brokers.stub import StubBroker

    from carbonhook.cli.bootstrap import build_admin, build_receiver_app, build_worker
    from carbonhook.cli.lifecycle import start_server
    from workers.rules import RulesHolder, parse_rules

    broker = StubBroker()
    settings = settings_for_test(db_url, emulator, admin_token=TOKEN, admin_tokens={"alice": ALICE, "bob": BOB})
    rules = '[limits]\nmax_lbs_per_day = 500\n[[rule]]\nname = "flat"\non = "crp.generated"\ncapture_lbs = 400\n'
    runtime = build_worker(settings, broker=broker, rules=RulesHolder(settings.rules_file, parse_rules(rules)))
    runtime.processor.enqueue = lambda event_id, delay: None
    admin = build_admin(settings, broker)
    server = start_server(build_receiver_app(settings, broker=broker, admin=admin), "127.0.0.1", 0, lifespan="on")
    yield Api(f"http://127.0.0.1:{server.port}", db_url, runtime.processor)
    server.stop()
    runtime.close()
    admin.store.engine.dispose()


def test_every_route_needs_the_bearer_token(api: Api):
    for token in (None, "wrong", TOKEN + "x"):
        assert api.call("GET", "/events", token=token).status_code == 401
        assert api.call("POST", "/events/1/replay", token=token).status_code == 401
    assert api.call("GET", "/events").status_code == 200


def test_after_too_many_wrong_tokens_an_address_waits_even_with_the_right_token(api: Api):
    from receiver.lockout import WRONG_TOKENS

    for _ in range(5):  # no token at all is not a guess
        assert api.call("GET", "/events", token=None).status_code == 401
    for _ in range(WRONG_TOKENS):
        assert api.call("GET", "/events", token="guess").status_code == 401
    locked = api.call("GET", "/events")
    assert locked.status_code == 429 and locked.json()["error"] == "too_many_attempts"
    assert 0 < int(locked.headers["Retry-After"]) <= 300


def test_listing_filters_and_pages_with_a_cursor(api: Api):
    for n in range(5):
        store_delivery(api.db, make_body(subject=f"crp_p{n}"))
    store_delivery(api.db, make_body(event="bill.confirmed", subject="bill_p"))
    first = api.call("GET", "/events", params={"limit": 2, "type": "crp.generated"}).json()
    assert [e["subject_id"] for e in first["events"]] == ["crp_p4", "crp_p3"]
    second = api.call("GET", "/events", params={"limit": 2, "type": "crp.generated", "cursor": first["next_cursor"]}).json()
    assert [e["subject_id"] for e in second["events"]] == ["crp_p2", "crp_p1"]
    assert api.call("GET", "/events", params={"status": "queued"}).json()["events"][0]["status"] == "queued"
    assert api.call("GET", "/events", params={"status": "nope"}).status_code == 400
    assert api.call("GET", "/events", params={"since": "not-a-date"}).status_code == 400
    assert api.call("GET", "/events", params={"since": "2999-01-01T00:00:00Z"}).json()["events"] == []


def test_show_replay_and_the_audit_trail(api: Api):
    api_fault = httpx.post(api.processor.impact.http.base_url.join("/_emulator/faults"), json={"endpoint": "capture_carbon", "status": 400})
    assert api_fault.status_code in (200, 201)
    event_id = store_delivery(api.db, make_body(subject="crp_show"))
    assert api.processor.process(event_id) == "failed"
    detail = api.call("GET", f"/events/{event_id}").json()
    assert detail["status"] == "failed" and detail["attempt_history"][0]["http_status"] == 400
    assert detail["captures"][0]["status"] == "failed"
    assert "crp_show" in detail["body"]
    replayed = api.call("POST", f"/events/{event_id}/replay", json={"reason": "1ClickImpact fixed"})
    assert replayed.json() == {"id": event_id, "previous_status": "failed", "status": "queued"}
    assert query(api.db, f"SELECT status FROM events WHERE id = {event_id}") == [("queued",)]
    assert api.call("POST", f"/events/{event_id}/replay").status_code == 409
    assert api.processor.process(event_id) == "succeeded"
    replays = api.call("GET", f"/events/{event_id}").json()["replays"]
    assert [(r["admin"], r["via"], r["reason"], r["previous_status"]) for r in replays] == [("admin", "api", "1ClickImpact fixed", "failed")]
    assert api.call("GET", "/events/999999").status_code == 404


def test_bulk_replay_by_filter(api: Api):
    httpx.post(api.processor.impact.http.base_url.join("/_emulator/faults"), json={"endpoint": "capture_carbon", "status": 400, "times": 3})
    ids = [store_delivery(api.db, make_body(subject=f"crp_b{n}")) for n in range(3)]
    assert [api.processor.process(i) for i in ids] == ["failed"] * 3
    assert api.call("POST", "/events/replay", json={}).status_code == 400
    assert api.call("POST", "/events/replay", json={"status": "bogus"}).status_code == 400
    result = api.call("POST", "/events/replay", json={"status": "failed", "reason": "bulk"}).json()
    assert result["replayed"] == 3 and sorted(result["ids"]) == ids


def test_ignored_events_are_replayed_one_by_one_or_by_type(api: Api):
    calculated = [store_delivery(api.db, make_body(event="bill.calculated", subject=f"bill_i{n}")) for n in range(2)]
    other = store_delivery(api.db, make_body(event="company.updated", subject="comp_i"))
    assert [api.processor.process(i) for i in [*calculated, other]] == ["ignored"] * 3
    listed = api.call("GET", "/events", params={"status": "ignored"}).json()["events"]
    assert [e["id"] for e in listed] == [other, *calculated[::-1]]
    result = api.call("POST", "/events/replay", json={"status": "ignored", "type": "bill.calculated"}).json()
    assert result == {"replayed": 2, "ids": calculated}
    one = api.call("POST", f"/events/{other}/replay", json={"reason": "a rule is on it now"})
    assert one.json() == {"id": other, "previous_status": "ignored", "status": "queued"}
    statuses = query(api.db, f"SELECT status FROM events WHERE id IN ({calculated[0]}, {calculated[1]}, {other})")
    assert statuses == [("queued",)] * 3


def test_waiting_events_are_listed_shown_and_replayed_to_check_now(api: Api):
    note = "waiting for rule 'published' (crp.status is 'draft', wanted 'published')"
    ids = [store_delivery(api.db, make_body(subject=f"crp_w{n}")) for n in range(2)]
    store_delivery(api.db, make_body(subject="crp_other"))
    from sqlalchemy import create_engine, text

    from carbonhook.database import sync_url

    engine = create_engine(sync_url(api.db))
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE events SET status = 'waiting', note = :note WHERE id IN ({ids[0]}, {ids[1]})"), {"note": note})
    engine.dispose()
    listed = api.call("GET", "/events", params={"status": "waiting"}).json()["events"]
    assert [(e["id"], e["status"], e["note"]) for e in listed] == [(ids[1], "waiting", note), (ids[0], "waiting", note)]
    assert api.call("GET", f"/events/{ids[0]}").json()["note"] == note
    one = api.call("POST", f"/events/{ids[0]}/replay", json={"reason": "published now"})
    assert one.json() == {"id": ids[0], "previous_status": "waiting", "status": "queued"}
    assert api.call("POST", "/events/replay", json={"status": "waiting"}).json() == {"replayed": 1, "ids": [ids[1]]}


def test_an_unparseable_delivery_is_listed_shown_and_parsed_again_on_replay(api: Api):
    body = b'{"event": "crp.generated", "timestamp": "06/04/2026 14:35", "data": {"id": "crp_kept"}}'
    answer = httpx.post(f"{api.base}/webhooks/carbonpass", content=body, headers=signed(body), timeout=10)
    assert answer.status_code == 400 and "not ISO-8601" in answer.json()["message"]
    [listed] = api.call("GET", "/events", params={"status": "invalid"}).json()["events"]
    detail = api.call("GET", f"/events/{listed['id']}").json()
    assert detail["status"] == "invalid" and detail["body"] == body.decode()
    assert detail["last_error"] == answer.json()["message"] and detail["received_at"]
    refused = api.call("POST", f"/events/{listed['id']}/replay")
    assert refused.status_code == 409 and "still does not parse" in refused.json()["message"]
    # A body an earlier version could not parse, and this one can: replayed, it is processed.
    revived = keep_invalid(api.db, make_body(subject="crp_later"), "an earlier parser refused it")[0]
    replayed = api.call("POST", f"/events/{revived}/replay", json={"reason": "upgraded"})
    assert replayed.json() == {"id": revived, "previous_status": "invalid", "status": "queued"}
    assert api.processor.process(revived) == "succeeded"
    assert query(api.db, "SELECT subject_id, status FROM captures") == [("crp_later", "captured")]
    shown = api.call("GET", f"/events/{revived}").json()
    assert (shown["type"], shown["subject_id"], shown["status"]) == ("crp.generated", "crp_later", "succeeded")
    assert [r["previous_status"] for r in shown["replays"]] == ["invalid"]


def test_bulk_replay_leaves_events_that_are_not_replayable_and_audits_each_one(api: Api):
    httpx.post(api.processor.impact.http.base_url.join("/_emulator/faults"), json={"endpoint": "capture_carbon", "status": 400, "times": 2})
    failed = [store_delivery(api.db, make_body(subject=f"crp_m{n}")) for n in range(2)]
    assert [api.processor.process(i) for i in failed] == ["failed"] * 2
    waiting = store_delivery(api.db, make_body(subject="crp_waiting"))
    replayed = api.processor.store.replay_many([failed[1], waiting, 999999, failed[0]], admin="ops", via="cli", reason="bulk")
    assert replayed == [failed[1], failed[0]]
    statuses = query(api.db, f"SELECT id, status, attempts FROM events WHERE id IN ({failed[0]}, {failed[1]}, {waiting}) ORDER BY id")
    assert statuses == [(failed[0], "pending", 0), (failed[1], "pending", 0), (waiting, "queued", 0)]
    audit = query(api.db, "SELECT event_id, via, reason, previous_status FROM replays ORDER BY event_id")
    assert audit == [(i, "cli", "bulk", "failed") for i in failed]
    assert api.processor.store.replay_many([waiting], admin="ops", via="cli", reason=None) == []


def test_captures_listing_and_approve_reject(api: Api):
    first = store_delivery(api.db, make_body(subject="crp_c1"))
    second = store_delivery(api.db, make_body(subject="crp_c2"))
    api.processor.process(first)
    assert api.processor.process(second) == "held"
    held = api.call("GET", "/captures", params={"status": "held"}).json()["captures"]
    assert [c["subject_id"] for c in held] == ["crp_c2"]
    approved = api.call("POST", f"/captures/{held[0]['id']}/approve").json()
    assert approved["status"] == "pending" and approved["approved"] is True
    assert api.call("POST", f"/captures/{held[0]['id']}/reject").status_code == 409
    assert api.call("POST", f"/captures/{held[0]['id']}/resolve", json={}).status_code == 400
    assert api.call("POST", f"/captures/{held[0]['id']}/explode").status_code == 404
    assert api.processor.process(second) == "succeeded"
    assert [c["status"] for c in api.call("GET", "/captures").json()["captures"]] == ["captured", "captured"]


# -- named admins -------------------------------------------------------------------------------


def test_each_admin_acts_with_their_own_token_and_every_replay_and_decision_records_who(api: Api):
    first = store_delivery(api.db, make_body(subject="crp_n1"))
    second = store_delivery(api.db, make_body(subject="crp_n2"))
    third = store_delivery(api.db, make_body(subject="crp_n3"))
    assert api.processor.process(first) == "succeeded"
    assert [api.processor.process(e) for e in (second, third)] == ["held", "held"]
    held = {c["event_id"]: c["id"] for c in api.call("GET", "/captures", params={"status": "held"}).json()["captures"]}

    approved = api.call("POST", f"/captures/{held[second]}/approve", token=ALICE, json={"reason": "the board agreed"})
    assert approved.status_code == 200 and approved.json()["status"] == "pending"
    rejected = api.call("POST", f"/captures/{held[third]}/reject", token=BOB, json={"reason": "not this month"})
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    assert api.call("POST", f"/events/{first}/replay", token=BOB, json={"reason": "check it"}).status_code == 200
    assert api.call("POST", f"/captures/{held[third]}/approve", token=BOB, json={"reason": 7}).status_code == 400

    captures = {c["id"]: c for c in api.call("GET", "/captures", token=TOKEN).json()["captures"]}
    assert [(d["decision"], d["status"], d["admin"], d["via"], d["reason"]) for d in captures[held[second]]["decisions"]] == [
        ("approve", "pending", "alice", "api", "the board agreed")
    ]
    assert [(d["decision"], d["admin"], d["reason"]) for d in captures[held[third]]["decisions"]] == [("reject", "bob", "not this month")]
    assert captures[held[second]]["decisions"][0]["at"]
    detail = api.call("GET", f"/events/{second}").json()
    assert [(r["admin"], r["via"], r["reason"]) for r in detail["replays"]] == [
        ("alice", "api", f"capture {held[second]} approved: the board agreed")
    ]
    assert [d["admin"] for d in detail["captures"][0]["decisions"]] == ["alice"]
    assert [(r["admin"], r["reason"]) for r in api.call("GET", f"/events/{first}").json()["replays"]] == [("bob", "check it")]
    decided = query(api.db, "SELECT capture_id, decision, admin, via, reason FROM decisions ORDER BY id")
    assert decided == [
        (held[second], "approve", "alice", "api", "the board agreed"),
        (held[third], "reject", "bob", "api", "not this month"),
    ]


def test_resolve_records_who_checked_1clickimpact(api: Api):
    event_id = store_delivery(api.db, make_body(subject="crp_u1"))
    httpx.post(api.processor.impact.http.base_url.join("/_emulator/faults"), json={"endpoint": "capture_carbon", "status": 503, "times": 100})
    api.processor.process(event_id)
    (capture_id,) = query(api.db, "SELECT id FROM captures WHERE status = 'unknown'")[0]
    resolved = api.call("POST", f"/captures/{capture_id}/resolve", token=ALICE, json={"captured": False, "reason": "not in their dashboard"})
    assert resolved.status_code == 200 and resolved.json()["status"] == "failed"
    assert query(api.db, "SELECT decision, status, admin, via, reason FROM decisions") == [
        ("resolve", "failed", "alice", "api", "not in their dashboard")
    ]


def test_a_token_no_admin_holds_is_a_wrong_token_for_the_lockout(api: Api):
    from receiver.lockout import WRONG_TOKENS

    for _ in range(WRONG_TOKENS - 1):
        assert api.call("GET", "/events", token=ALICE + "x").status_code == 401
    assert api.call("GET", "/events", token=BOB).status_code == 200  # any admin's token is right
    for _ in range(WRONG_TOKENS):
        assert api.call("GET", "/events", token="carol-secret-token-0123456789").status_code == 401
    assert api.call("GET", "/events", token=ALICE).status_code == 429


def test_a_token_is_told_apart_only_by_constant_time_comparisons_of_every_admins_token(monkeypatch: pytest.MonkeyPatch):
    import hmac

    from receiver.admin import admin_named, token_matches

    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    tokens = {"alice": "a" * 16, "bob": "b" * 64, "carol": "c" * 20}
    for given, found in (("a" * 16, "alice"), ("c" * 20, "carol"), ("b" * 63, None), ("", None), ("x" * 500, None)):
        compared.clear()
        assert admin_named(given, tokens) == found
        # Every admin's token is compared, whichever matched, as digests of one length: how
        # long it takes tells neither which admin it is nor how long their token is.
        assert compared == [(32, 32)] * len(tokens), given
    assert admin_named(None, tokens) is None and not token_matches(None, "a" * 16)
    assert token_matches("\ud800 lone surrogate", "a" * 16) is False
