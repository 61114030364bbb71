import json
from datetime import UTC, datetime

import pytest

from carbonhook.errors import InvalidDelivery
from carbonhook.event_types import SUBJECT_ID
from receiver.events import parse_delivery


def body(**overrides):
    payload = {"event": "crp.generated", "timestamp": "2026-04-06T14:35:48Z", "data": {"id": "crp_5tN8xBmQ", "status": "draft"}}
    payload.update(overrides)
    return json.dumps(payload).encode()


def test_parses_the_seed_example():
    delivery = parse_delivery(body())
    assert delivery.type == "crp.generated"
    assert delivery.subject_id == "crp_5tN8xBmQ"
    assert delivery.timestamp == datetime(2026, 4, 6, 14, 35, 48, tzinfo=UTC)
    assert delivery.data["status"] == "draft"


def test_a_bill_confirmation_with_only_an_id_is_valid():
    delivery = parse_delivery(body(event="bill.confirmed", data={"id": "bill_9vW4kLpR"}))
    assert delivery.subject_id == "bill_9vW4kLpR"


def test_offsets_are_normalised_to_utc():
    a = parse_delivery(body(timestamp="2026-04-06T16:35:48+02:00"))
    b = parse_delivery(body(timestamp="2026-04-06T14:35:48Z"))
    assert a.timestamp == b.timestamp


def test_an_event_of_any_type_parses_alike():
    # Whether it is processed is for the rules in force when a worker takes it.
    assert parse_delivery(body(event="company.updated")).type == "company.updated"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "JSON object"),
        (json.dumps({"timestamp": "2026-04-06T14:35:48Z", "data": {"id": "x"}}).encode(), "missing field 'event'"),
        (body(timestamp=None), "missing field 'timestamp'"),
        (body(timestamp="yesterday"), "not ISO-8601"),
        (body(timestamp="0001-01-01T00:00:00+01:00"), "not ISO-8601"),
        (body(data=None), "'data' must be an object"),
        (body(data={"status": "x"}), "missing field 'data.id'"),
        (body(data={"id": 5}), "'data.id' must be a non-empty string"),
        (body(data={"id": "crp_" + "x" * 300}), "longer than 255"),
        (body(event=""), "'event' must be a non-empty string"),
    ],
)
def test_invalid_bodies_say_what_is_wrong(raw, says):
    with pytest.raises(InvalidDelivery, match=says):
        parse_delivery(raw)


@pytest.mark.parametrize("subject", ["crp_5tN8xBmQ", "bill_9vW4kLpR", "crp_a-b_c", "crp_" + "a" * 64])
def test_well_formed_subject_ids(subject):
    assert SUBJECT_ID.fullmatch(subject)


@pytest.mark.parametrize("subject", ["crp_", "crp_../x", "comp_1", "crp_" + "a" * 65, "crp_a/b", "crp_a?b", "bill_x y"])
def test_malformed_subject_ids(subject):
    assert not SUBJECT_ID.fullmatch(subject)
