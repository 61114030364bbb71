"""The intake over real HTTP on real SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime
from typing import Any

import httpx
import pytest

from receiver.signature import sign
from tests.support import SECRET, Receiver, signed, start_receiver, wait_until


def delivery(event="crp.generated", subject="crp_5tN8xBmQ", ts="2026-04-06T14:35:48Z", **data: Any) -> bytes:
    return json.dumps({"event": event, "timestamp": ts, "data": {"id": subject, **data}}).encode()


@pytest.fixture
def receiver(db_url: str) -> Iterator[Receiver]:
    server, rec = start_receiver(db_url)
    yield rec
    server.stop()


def queued_ids(rec: Receiver) -> list[int]:
    from carbonhook.queue import EVENTS_QUEUE

    queue = rec.broker.queues[EVENTS_QUEUE]
    return sorted(json.loads(m)["args"][0] for m in list(queue.queue))


def test_a_new_delivery_is_accepted_stored_and_enqueued_by_id(receiver: Receiver):
    from tests.support import wait_until

    response = receiver.post(delivery())
    assert response.status_code == 202
    event_id = response.json()["id"]
    assert response.json() == {"id": event_id, "status": "accepted"}
    wait_until(lambda: receiver.rows()[0][3] == "queued", what="event marked queued")
    assert receiver.rows() == [(event_id, "crp.generated", "crp_5tN8xBmQ", "queued")]
    wait_until(lambda: queued_ids(receiver) == [event_id], what="the event id handed to the broker")
    stored = receiver.rows("SELECT body FROM events")[0][0]
    assert bytes(stored) == delivery()


def test_the_same_delivery_again_is_a_duplicate_and_not_enqueued_again(receiver: Receiver):
    from tests.support import wait_until

    first = receiver.post(delivery()).json()["id"]
    wait_until(lambda: queued_ids(receiver), what="first enqueue")
    again = receiver.post(delivery())
    assert again.status_code == 200
    assert again.json() == {"id": first, "status": "duplicate"}
    assert len(receiver.rows()) == 1
    assert queued_ids(receiver) == [first]


def test_identity_is_event_subject_and_timestamp(receiver: Receiver):
    ids = {
        receiver.post(delivery()).json()["id"],
        receiver.post(delivery(ts="2026-04-06T14:35:49Z")).json()["id"],
        receiver.post(delivery(subject="crp_other")).json()["id"],
        receiver.post(delivery(event="bill.confirmed", subject="crp_5tN8xBmQ")).json()["id"],
    }
    assert len(ids) == 4
    # the same instant written another way is the same delivery
    assert receiver.post(delivery(ts="2026-04-06T16:35:48+02:00")).status_code == 200


def test_sqlite_keeps_the_time_format_that_redeliveries_are_matched_on(sqlite_url: str, monkeypatch):
    # Rows stored by earlier versions hold sqlite3's default datetime text (no fraction when it
    # is 0); a redelivery must still find them, so the intake writes exactly that text, itself:
    # Python 3.12 deprecates the adapter that made it, so here it refuses.
    def refuse(value: datetime) -> str:
        raise TypeError("a datetime reached sqlite3's default adapter")

    monkeypatch.setitem(sqlite3.adapters, (datetime, sqlite3.PrepareProtocol), refuse)
    server, receiver = start_receiver(sqlite_url)
    try:
        first = receiver.post(delivery()).json()["id"]
        receiver.post(delivery(subject="crp_frac", ts="2026-04-06T14:35:48.25Z"))
        stored = receiver.rows("SELECT subject_id, event_ts, typeof(event_ts), received_at FROM events ORDER BY id")
        assert [row[:3] for row in stored] == [
            ("crp_5tN8xBmQ", "2026-04-06 14:35:48", "text"),
            ("crp_frac", "2026-04-06 14:35:48.250000", "text"),
        ]
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?", stored[0][3])
        # An event stored by an earlier version, through the adapter itself: still a duplicate.
        with closing(sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))) as conn, conn:
            conn.execute(
                "INSERT INTO events (type, subject_id, event_ts, received_at, body, status, attempts,"
                " available_at, updated_at) VALUES ('crp.generated', 'crp_old', ?, ?, x'7b7d',"
                " 'succeeded', 1, ?, ?)",
                (str(datetime(2026, 4, 6, 14, 35, 48)),) * 4,
            )
        old = receiver.post(delivery(subject="crp_old"))
        assert old.status_code == 200 and old.json()["status"] == "duplicate"
        assert receiver.post(delivery()).json() == {"id": first, "status": "duplicate"}
    finally:
        server.stop()


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-CarbonPass-Signature": "0" * 64}, {"X-CarbonPass-Signature": sign(b"other", secret=SECRET.encode())}, signed(b"x", "wrong")],
)
def test_a_wrong_or_missing_signature_is_401_and_stores_nothing(receiver: Receiver, headers: dict[str, str]):
    response = receiver.post(delivery(), headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_signature"
    assert receiver.rows() == []


def test_signed_but_unparseable_is_400_naming_the_problem_and_kept_invalid_once_per_body(receiver: Receiver):
    import hashlib

    body = json.dumps({"event": "crp.generated", "timestamp": 1775486148, "data": {"id": "crp_epoch"}}).encode()
    response = receiver.post(body)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_delivery", "message": "field 'timestamp' must be a non-empty string"}
    again = receiver.post(body)
    assert again.status_code == 400 and again.json() == response.json()
    assert receiver.post(b"{not json").status_code == 400
    kept = receiver.rows("SELECT id, type, subject_id, status, last_error, body, body_sha256, received_at FROM events ORDER BY id")
    assert [row[1:5] for row in kept] == [
        ("", hashlib.sha256(body).hexdigest(), "invalid", "field 'timestamp' must be a non-empty string"),
        ("", hashlib.sha256(b"{not json").hexdigest(), "invalid", kept[1][4]),
    ]
    assert kept[1][4].startswith("body is not valid JSON")
    assert bytes(kept[0][5]) == body and bytes(kept[1][5]) == b"{not json"
    assert [row[6] for row in kept] == [row[2] for row in kept]
    assert all(row[7] is not None for row in kept)
    assert queued_ids(receiver) == []  # nothing to process until a replay parses it


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-CarbonPass-Signature": "0" * 64}, signed(b"{not json", "another-secret-entirely")],
)
def test_an_unparseable_body_that_is_not_signed_is_401_and_never_stored(receiver: Receiver, headers: dict[str, str]):
    response = receiver.post(b"{not json", headers=headers)
    assert response.status_code == 401
    assert receiver.rows() == []


def test_concurrent_copies_of_one_unparseable_body_keep_one_row(receiver: Receiver):
    body = b'{"event": "crp.generated", "timestamp": "tomorrow", "data": {"id": "crp_race"}}'
    answers: list[int] = []
    lock = threading.Lock()

    def send() -> None:
        code = receiver.post(body).status_code
        with lock:
            answers.append(code)

    threads = [threading.Thread(target=send) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [400] * 12
    assert [row[3] for row in receiver.rows()] == ["invalid"]


def test_a_database_that_cannot_keep_an_unparseable_body_is_503_so_the_sender_retries(tmp_path):
    from tests.support import free_port

    down = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    server, rec = start_receiver(down)
    try:
        assert rec.post(b"{not json").status_code == 503
    finally:
        server.stop()


def test_an_event_of_a_type_carbonpass_is_not_known_to_send_is_stored_and_enqueued_alike(receiver: Receiver):
    # The receiver reads no rules: whether one is on the type is the worker's to say.
    response = receiver.post(delivery(event="company.updated", subject="comp_8xK2mNpQ"))
    assert response.status_code == 202 and response.json()["status"] == "accepted"
    assert receiver.rows()[0][1:] == ("company.updated", "comp_8xK2mNpQ", "queued")
    # The hand-off to the broker happens after the answer, on the enqueuer's thread.
    wait_until(lambda: queued_ids(receiver) == [response.json()["id"]], what="the event id handed to the broker")


def test_an_oversized_body_is_413_without_reading_it_all(sqlite_url: str):
    server, rec = start_receiver(sqlite_url, max_body_bytes=1000)
    try:
        big = delivery(padding="x" * 2000)
        assert rec.post(big).status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
            for _ in range(100):
                yield b"x" * 100

        response = httpx.post(rec.url, content=chunks(), headers={"X-CarbonPass-Signature": "0" * 64}, timeout=10)
        assert response.status_code == 413
        assert rec.rows() == []
    finally:
        server.stop()


def test_health_and_readiness(receiver: Receiver):
    assert httpx.get(f"{receiver.base}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{receiver.base}/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert (body["database"], body["schema"], body["broker"]) == ("ok", "ok", "ok")
    assert body["revision"]["found"] == body["revision"]["needed"]


def test_a_schema_behind_the_migrations_is_not_ready_and_names_both_revisions(tmp_path):
    from carbonhook.migrate import upgrade

    url = f"sqlite:///{tmp_path}/behind.db"
    upgrade(url, "0001")
    server, rec = start_receiver(url)
    try:
        ready = httpx.get(f"{rec.base}/readyz")
    finally:
        server.stop()
    assert ready.status_code == 503
    body = ready.json()
    assert body["ready"] is False and body["database"] == "ok"
    assert body["revision"]["found"] == "0001" and body["revision"]["needed"] != "0001"
    assert body["schema"] == (
        f"the database schema is at revision 0001, this version needs {body['revision']['needed']}: "
        "run `carbonhook migrate`"
    )


def test_an_unreachable_database_is_503_never_2xx(tmp_path):
    from tests.support import free_port

    down = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    server, rec = start_receiver(down)
    try:
        assert rec.post(delivery()).status_code == 503
        assert httpx.get(f"{rec.base}/readyz").status_code == 503
    finally:
        server.stop()


def test_the_admin_api_is_absent_without_a_token(receiver: Receiver):
    assert httpx.get(f"{receiver.base}/admin/api/events").status_code == 404


def test_concurrent_copies_of_one_delivery_make_one_event(receiver: Receiver):
    body = delivery(subject="crp_race")
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def send() -> None:
        response = receiver.post(body)
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=send) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 19 + [202]
    assert len({a.json()["id"] for a in answers}) == 1
    assert len(receiver.rows()) == 1
