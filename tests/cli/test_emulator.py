"""The emulator answers like CarbonPass (seed 003) and 1ClickImpact (seed 000), and fails on cue."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

import carbonhook.emulator as emulator_module
from carbonhook.cli.arguments import build_parser
from carbonhook.emulator import (
    DEMO_CARBONPASS_KEY,
    DEMO_IMPACT_KEY,
    KIND,
    PROFILES,
    STRICT,
    ConnectionReset,
    EmulatorState,
    Profile,
    create_emulator_app,
    named_profile,
    records_page,
)

CARBONPASS = {"Authorization": f"Bearer {DEMO_CARBONPASS_KEY}"}
IMPACT = {"x-api-key": DEMO_IMPACT_KEY}
START = datetime(2026, 4, 6, 14, 35, 48, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.anyio


class FakeClock:
    """A clock that stands still until told to move."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> EmulatorState:
    return EmulatorState(clock=clock)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def asgi_client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://emulator")


@pytest.fixture
async def client(state: EmulatorState) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_emulator_app(state)) as client:
        yield client


@pytest.fixture
def live(state: EmulatorState) -> Iterator[str]:
    """The emulator served by a real uvicorn on a free loopback port, in a thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        create_emulator_app(state), log_config=None, log_level="warning", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        state.release()
        server.should_exit = True
        thread.join(10)
        sock.close()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


async def capture(client: httpx.AsyncClient, amount: int = 5, **fields: Any) -> httpx.Response:
    return await client.post(
        "/v1/capture_carbon", json={"amount": amount, **fields}, headers=IMPACT
    )


# Nothing at import


def test_importing_the_module_builds_no_app() -> None:
    assert not [value for value in vars(emulator_module).values() if isinstance(value, Starlette)]


# CarbonPass


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer cp_live_wrong"}, {"Authorization": DEMO_CARBONPASS_KEY}],
)
async def test_carbonpass_refuses_a_missing_or_wrong_bearer_token(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await client.get("/api/v1/company", headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "error": "unauthorized",
        "message": response.json()["message"],
        "status": 401,
    }


async def test_carbonpass_accepts_the_key_the_app_was_built_with(state: EmulatorState) -> None:
    async with asgi_client(create_emulator_app(state, carbonpass_key="cp_live_other")) as client:
        assert (await client.get("/api/v1/company", headers=CARBONPASS)).status_code == 401
        ok = await client.get("/api/v1/company", headers={"Authorization": "Bearer cp_live_other"})
    assert ok.status_code == 200


async def test_company_is_the_seed_company(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/company", headers=CARBONPASS)
    assert response.json() == {
        "data": {
            "id": "comp_8xK2mNpQ",
            "name": "Acme Industries Ltd",
            "sector": "Manufacturing",
            "city": "Birmingham",
            "employeeCount": 42,
            "planName": "business",
            "sites": [
                {
                    "id": "site_3rZ1",
                    "name": "Birmingham Warehouse",
                    "city": "Birmingham",
                    "employeeCount": 28,
                }
            ],
            "currentEmissions": {
                "reportingPeriod": "2025-26",
                "totalTco2e": 526.5,
                "scope1": 124.8,
                "scope2": 312.5,
                "scope3": 89.2,
            },
            "passportUrl": "https://carbonpass.co/company/acme-industries",
            "passportActivated": True,
        }
    }


SEED_EMISSIONS = {
    "reportingPeriod": "2025-26",
    "totalTco2e": 172.0,
    "scope1": {"total": 42.1, "breakdown": None},
    "scope2": {"total": 108.3, "breakdown": None},
    "scope3": {"total": 21.6, "breakdown": None},
    "perEmployee": 4.1,
    "sessions": [
        {
            "id": "sess_aB12",
            "siteId": "site_3rZ1",
            "siteName": "Birmingham Warehouse",
            "totalTco2e": 172.0,
            "createdAt": "2026-03-15",
        }
    ],
}


async def test_emissions_of_the_seed_site_are_the_seed_emissions(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/api/v1/emissions", params={"siteId": "site_3rZ1"}, headers=CARBONPASS
    )
    assert response.json() == {"data": SEED_EMISSIONS}


async def test_emissions_without_a_site_total_every_site(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    assert (await client.get("/api/v1/emissions", headers=CARBONPASS)).json() == {
        "data": SEED_EMISSIONS
    }
    state.set_site_emissions("site_9", 10.5, 1.5, 2.0, 7.0, reporting_period="2026-27")

    data = (await client.get("/api/v1/emissions", headers=CARBONPASS)).json()["data"]

    assert data["totalTco2e"] == 182.5
    assert [data[scope]["total"] for scope in ("scope1", "scope2", "scope3")] == [43.6, 110.3, 28.6]
    assert data["reportingPeriod"] == "2026-27"
    assert [session["siteId"] for session in data["sessions"]] == ["site_3rZ1", "site_9"]


async def test_emissions_of_an_unknown_site_are_not_found(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/api/v1/emissions", params={"siteId": "site_x"}, headers=CARBONPASS
    )
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert response.json()["status"] == 404


async def test_site_emissions_can_be_set_through_the_control_api(client: httpx.AsyncClient) -> None:
    body = {"total": 9, "scope1": 1, "scope2": 3, "scope3": 5, "reportingPeriod": "2024-25"}
    assert (await client.put("/_emulator/emissions/site_3rZ1", json=body)).status_code == 200

    data = (await client.get("/api/v1/emissions?siteId=site_3rZ1", headers=CARBONPASS)).json()[
        "data"
    ]

    assert (data["totalTco2e"], data["scope3"], data["reportingPeriod"]) == (
        9.0,
        {"total": 5.0, "breakdown": None},
        "2024-25",
    )
    assert (
        await client.put("/_emulator/emissions/site_3rZ1", json={"total": 1})
    ).status_code == 400


async def test_site_emissions_grow_through_the_control_api_as_bills_would(
    client: httpx.AsyncClient,
) -> None:
    grow = {"tco2e": 2.5, "scope": "scope1"}
    assert (await client.post("/_emulator/emissions/site_3rZ1/grow", json=grow)).status_code == 200
    assert (
        await client.post("/_emulator/emissions/site_3rZ1/grow", json={"tco2e": 1})
    ).status_code == 200

    data = (await client.get("/api/v1/emissions?siteId=site_3rZ1", headers=CARBONPASS)).json()[
        "data"
    ]

    assert (data["totalTco2e"], data["scope1"]["total"], data["scope2"]["total"]) == (
        175.5,
        44.6,
        109.3,
    )
    unknown = await client.post("/_emulator/emissions/site_x/grow", json={"tco2e": 1})
    assert unknown.status_code == 400
    bad_scope = {"tco2e": 1, "scope": "total"}
    assert (
        await client.post("/_emulator/emissions/site_3rZ1/grow", json=bad_scope)
    ).status_code == 400


async def test_the_seed_crp_is_published_with_every_section(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/crp/crp_5tN8xBmQ", headers=CARBONPASS)
    assert response.json() == {
        "data": {
            "id": "crp_5tN8xBmQ",
            "status": "published",
            "fyYear": "2026",
            "targetYear": "2050",
            "generatedAt": "2026-04-06T14:35:48Z",
            "sections": {
                "organisationDetails": True,
                "baselineEmissions": True,
                "currentEmissions": True,
                "reductionTargets": True,
                "reductionProjects": True,
                "environmentalMeasures": True,
                "declaration": True,
            },
        }
    }


async def test_an_unknown_well_formed_crp_id_is_created_published_now(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    clock.advance(days=3)
    data = (await client.get("/api/v1/crp/crp_random-Id_42", headers=CARBONPASS)).json()["data"]
    assert data["id"] == "crp_random-Id_42"
    assert (data["status"], data["fyYear"], data["targetYear"]) == ("published", "2026", "2050")
    assert data["generatedAt"] == "2026-04-09T14:35:48Z"
    assert all(data["sections"].values())


async def test_with_drafts_on_a_new_crp_is_a_draft_until_published_later(
    client: httpx.AsyncClient, state: EmulatorState, clock: FakeClock
) -> None:
    assert (await client.get("/_emulator/drafts")).json() == {"publish_after_s": None}
    answer = await client.post("/_emulator/drafts", json={"publish_after_s": 600})
    assert answer.json() == {"publish_after_s": 600.0}

    async def status(crp_id: str) -> str:
        return str((await client.get(f"/api/v1/crp/{crp_id}", headers=CARBONPASS)).json()["data"]["status"])

    assert await status("crp_new") == "draft"
    clock.advance(seconds=599)
    assert await status("crp_new") == "draft"
    assert await status("crp_newer") == "draft"  # generated a little later: published later
    clock.advance(seconds=1)
    assert (await status("crp_new"), await status("crp_newer")) == ("published", "draft")
    state.set_crp("crp_newer", status="draft")  # told what it is: no publication any more
    clock.advance(days=1)
    assert await status("crp_newer") == "draft"
    await client.post("/_emulator/drafts", json={"publish_after_s": None})
    assert await status("crp_newest") == "published"
    refused = await client.post("/_emulator/drafts", json={"publish_after_s": "soon"})
    assert refused.status_code == 400 and "publish_after_s" in refused.text


@pytest.mark.parametrize("crp_id", ["bill_1", "crp_", "crp_" + "x" * 65, "crp_a.b"])
async def test_a_malformed_crp_id_is_not_found(client: httpx.AsyncClient, crp_id: str) -> None:
    response = await client.get(f"/api/v1/crp/{crp_id}", headers=CARBONPASS)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


async def test_a_crp_can_be_changed_or_made_missing(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    state.set_crp("crp_1", status="draft")
    state.missing_crps.add("crp_2")
    assert (await client.get("/api/v1/crp/crp_1", headers=CARBONPASS)).json()["data"][
        "status"
    ] == "draft"
    assert (await client.get("/api/v1/crp/crp_2", headers=CARBONPASS)).status_code == 404

    assert (await client.put("/_emulator/crp/crp_2", json={"fyYear": "2027"})).status_code == 200
    assert (await client.get("/api/v1/crp/crp_2", headers=CARBONPASS)).json()["data"][
        "fyYear"
    ] == "2027"
    assert (await client.delete("/_emulator/crp/crp_5tN8xBmQ")).status_code == 204
    assert (await client.get("/api/v1/crp/crp_5tN8xBmQ", headers=CARBONPASS)).status_code == 404


async def test_a_bill_upload_is_attached_to_the_sites_session(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/bills",
        files={"file": ("invoice-mar-2026.pdf", b"%PDF-1.4", "application/pdf")},
        data={"type": "electricity", "siteId": "site_3rZ1"},
        headers=CARBONPASS,
    )
    assert response.status_code == 200
    bill = response.json()["data"]
    assert bill["id"].startswith("bill_")
    assert bill | {"id": "?"} == {
        "id": "?",
        "status": "uploaded",
        "type": "electricity",
        "sessionId": "sess_aB12",
        "siteId": "site_3rZ1",
        "createdAt": "2026-04-06T14:35:48Z",
    }


async def test_a_bill_upload_without_a_type_is_a_bad_request(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/bills",
        files={"file": ("invoice.pdf", b"%PDF-1.4", "application/pdf")},
        data={"siteId": "site_3rZ1"},
        headers=CARBONPASS,
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "bad_request",
        "message": 'Missing required field "type" in bill upload.',
        "status": 400,
    }


async def test_the_state_hands_out_the_data_the_api_answers(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    company = (await client.get("/api/v1/company", headers=CARBONPASS)).json()["data"]
    crp = (await client.get("/api/v1/crp/crp_5tN8xBmQ", headers=CARBONPASS)).json()["data"]
    assert state.company_data() == company
    assert state.crp_data("crp_5tN8xBmQ") == crp
    assert state.emissions_data("site_3rZ1") == SEED_EMISSIONS
    assert state.emissions_data("site_unknown") is None
    assert state.crp_data("not-a-crp") is None


# 1ClickImpact: creating impacts


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "test_wrong"}, CARBONPASS])
async def test_impact_refuses_a_missing_or_wrong_api_key(
    client: httpx.AsyncClient, state: EmulatorState, headers: dict[str, str]
) -> None:
    response = await client.post("/v1/capture_carbon", json={"amount": 5}, headers=headers)
    assert response.status_code == 401
    assert response.json()["type"] == "key_error"
    assert (await client.get("/v1/records", headers=headers)).status_code == 401
    assert state.impacts == []


@pytest.mark.parametrize(
    ("endpoint", "key"),
    [
        ("capture_carbon", "carbon_captured"),
        ("plant_tree", "tree_planted"),
        ("clean_ocean", "waste_removed"),
    ],
)
async def test_a_create_call_answers_like_the_seed(
    client: httpx.AsyncClient, endpoint: str, key: str
) -> None:
    response = await client.post(f"/v1/{endpoint}", json={"amount": 5}, headers=IMPACT)
    assert response.status_code == 200
    assert response.json() == {"user_id": "U123", key: 5, "time_utc": "2026-04-06T14:35:48.000Z"}


async def test_a_create_call_for_a_customer_names_the_customer(client: httpx.AsyncClient) -> None:
    first = (await capture(client, customer_email="a@example.com", customer_name="Ann")).json()
    again = (await capture(client, customer_email="a@example.com")).json()
    other = (await capture(client, customer_email="b@example.com")).json()

    assert first["customer"] == {
        "customer_id": first["customer"]["customer_id"],
        "customer_email": "a@example.com",
        "customer_name": "Ann",
    }
    assert first["customer"]["customer_id"].startswith("U")
    assert again["customer"]["customer_id"] == first["customer"]["customer_id"]
    assert other["customer"]["customer_id"] != first["customer"]["customer_id"]


async def test_time_utc_strictly_increases_while_the_clock_stands_still(
    client: httpx.AsyncClient,
) -> None:
    stamps = [(await capture(client)).json()["time_utc"] for _ in range(3)]
    assert stamps == [
        "2026-04-06T14:35:48.000Z",
        "2026-04-06T14:35:48.001Z",
        "2026-04-06T14:35:48.002Z",
    ]


async def test_the_amount_bounds_are_inclusive(client: httpx.AsyncClient) -> None:
    assert (await capture(client, 1)).status_code == 200
    assert (await capture(client, 10_000_000)).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "amount"),
        ({"amount": 0}, "amount"),
        ({"amount": 10_000_001}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": 1.5}, "amount"),
        ({"amount": "5"}, "amount"),
        ({"amount": 5, "customer_email": "not-an-email"}, "customer_email"),
        ({"amount": 5, "customer_name": "Ann"}, "customer_name"),
        ({"amount": 5, "notify": "yes"}, "notify"),
        ({"amount": 5, "metadata": ["a"]}, "metadata"),
        ({"amount": 5, "metadata": {f"k{i}": "v" for i in range(21)}}, "metadata"),
        ({"amount": 5, "metadata": {"gift": "yes"}}, "gift"),
        ({"amount": 5, "metadata": {"widgetID": "w1"}}, "widgetID"),
        ({"amount": 5, "metadata": {"k" * 41: "v"}}, "metadata"),
        ({"amount": 5, "metadata": {"k": "v" * 501}}, "metadata"),
        ({"amount": 5, "metadata": {"k": 1}}, "metadata"),
    ],
)
async def test_an_invalid_create_body_is_refused_naming_the_field(
    client: httpx.AsyncClient, state: EmulatorState, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/v1/capture_carbon", json=body, headers=IMPACT)
    assert response.status_code == 400
    assert response.json()["type"] == "invalid_request_error"
    assert field in response.json()["message"]
    assert state.impacts == []


async def test_a_body_that_is_not_json_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/plant_tree", content=b"amount=5", headers=IMPACT)
    assert response.status_code == 400
    assert response.json()["type"] == "invalid_request_error"


async def test_the_largest_metadata_allowed_is_kept(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    metadata = {f"{i:02d}" + "k" * 38: "v" * 500 for i in range(20)}
    assert (await capture(client, metadata=metadata, notify=False)).status_code == 200
    assert (state.impacts[0].metadata, state.impacts[0].notify) == (metadata, False)


# 1ClickImpact: records


async def test_records_split_own_impacts_from_customers_impacts(client: httpx.AsyncClient) -> None:
    own = (await capture(client, 5)).json()
    ann = (await capture(client, 6, customer_email="a@example.com", customer_name="Ann")).json()
    await capture(client, 7, customer_email="b@example.com")

    user_records = (await client.get("/v1/records", headers=IMPACT)).json()
    customer_records = (await client.get("/v1/customer_records", headers=IMPACT)).json()
    only_ann = (
        await client.get(
            "/v1/customer_records", params={"customer_email": "a@example.com"}, headers=IMPACT
        )
    ).json()

    assert user_records == {
        "user_records": [{"user_id": "U123", "time_utc": own["time_utc"], "carbon_captured": 5}]
    }
    assert [record["carbon_captured"] for record in customer_records["customer_records"]] == [6, 7]
    assert only_ann == {
        "customer_records": [
            {
                "user_id": "U123",
                "customer": ann["customer"],
                "time_utc": ann["time_utc"],
                "carbon_captured": 6,
            }
        ]
    }


async def test_records_filter_by_impact_kind(client: httpx.AsyncClient) -> None:
    await capture(client, 5)
    await client.post("/v1/plant_tree", json={"amount": 2}, headers=IMPACT)
    await client.post("/v1/clean_ocean", json={"amount": 3}, headers=IMPACT)

    trees = (await client.get("/v1/records?filter_by=tree_planted", headers=IMPACT)).json()
    everything = (await client.get("/v1/records", headers=IMPACT)).json()

    assert [set(record) - {"user_id", "time_utc"} for record in trees["user_records"]] == [
        {"tree_planted"}
    ]
    assert len(everything["user_records"]) == 3


async def test_records_page_with_a_cursor_until_none_remain(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    created = [state.record_impact("capture_carbon", amount) for amount in range(1, 26)]
    pages, params = [], {"limit": "10"}
    while True:
        page = (await client.get("/v1/records", params=params, headers=IMPACT)).json()
        pages.append(page)
        if "cursor" not in page:
            break
        params["cursor"] = page["cursor"]

    assert [len(page["user_records"]) for page in pages] == [10, 10, 5]
    seen = [record["time_utc"] for page in pages for record in page["user_records"]]
    assert seen == [impact.time_utc for impact in created]


async def test_records_default_to_ten_per_page(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    for amount in range(1, 13):
        state.record_impact("capture_carbon", amount)
    page = (await client.get("/v1/records", headers=IMPACT)).json()
    assert len(page["user_records"]) == 10
    assert "cursor" in page


@given(count=st.integers(0, 30), limit=st.integers(1, 12))
@settings(max_examples=40, deadline=None)
def test_paging_returns_every_record_once_in_order(count: int, limit: int) -> None:
    state = EmulatorState(clock=FakeClock())
    created = [state.record_impact("plant_tree", 1) for _ in range(count)]
    seen: list[str] = []
    query = {"limit": str(limit)}
    while True:
        page = records_page(state, query, customers=False)
        seen += [record["time_utc"] for record in page["user_records"]]
        if "cursor" not in page:
            break
        query["cursor"] = page["cursor"]
    assert seen == [impact.time_utc for impact in created]


async def test_date_filters_include_whole_days(
    client: httpx.AsyncClient, state: EmulatorState, clock: FakeClock
) -> None:
    for amount in (1, 2, 3):
        state.record_impact("capture_carbon", amount)
        clock.advance(days=1)

    async def amounts(**params: str) -> list[int]:
        body = (await client.get("/v1/records", params=params, headers=IMPACT)).json()
        return [record["carbon_captured"] for record in body["user_records"]]

    assert await amounts(start_date="2026-04-07", end_date="2026-04-07") == [2]
    assert await amounts(start_date="2026-04-07") == [2, 3]
    assert await amounts(end_date="2026-04-07") == [1, 2]
    assert await amounts(start_date="2026-04-09") == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "1001"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"filter_by": "trees"}, "filter_by"),
        ({"start_date": "2026-4-1"}, "start_date"),
        ({"end_date": "2026-02-30"}, "end_date"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"sort_order": "newest"}, "sort_order"),
    ],
)
async def test_invalid_record_queries_are_refused_naming_the_field(
    client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    for path in ("/v1/records", "/v1/customer_records"):
        response = await client.get(path, params=params, headers=IMPACT)
        assert response.status_code == 400
        assert response.json()["type"] == "invalid_request_error"
        assert field in response.json()["message"]


async def test_limit_accepts_zero_and_a_thousand(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    state.record_impact("capture_carbon", 5)
    assert (await client.get("/v1/records?limit=0", headers=IMPACT)).json() == {"user_records": []}
    assert (
        len((await client.get("/v1/records?limit=1000", headers=IMPACT)).json()["user_records"])
        == 1
    )


async def test_records_carry_metadata_unless_switched_off(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    await capture(client, 5, metadata={"event": "evt_1"})
    await capture(client, 6)
    with_metadata = (await client.get("/v1/records", headers=IMPACT)).json()["user_records"]
    state.records_include_metadata = False
    without = (await client.get("/v1/records", headers=IMPACT)).json()["user_records"]

    assert [record.get("metadata") for record in with_metadata] == [{"event": "evt_1"}, None]
    assert ["metadata" in record for record in without] == [False, False]


async def test_cancelling_an_impact_removes_it_once(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    made = (await capture(client)).json()
    body = {"user_id": made["user_id"], "time_utc": made["time_utc"], "reason": "duplicate"}

    first = await client.post("/v1/cancel_impact", json=body, headers=IMPACT)
    second = await client.post("/v1/cancel_impact", json=body, headers=IMPACT)

    assert first.status_code == 200
    assert state.impacts == []
    # cancel_impact is idempotent (docs/providers.md): a repeat answers the same, reverses nothing
    assert (second.status_code, second.json()) == (200, first.json())
    assert len(state.cancelled) == 1


async def test_records_sort_newest_first_with_sort_order_desc_across_pages(
    client: httpx.AsyncClient, state: EmulatorState, clock: FakeClock
) -> None:
    for amount in range(1, 6):
        state.record_impact("capture_carbon", amount)
        clock.advance(hours=12)

    async def amounts(**params: str) -> list[int]:
        seen, query = [], {"sort_order": "desc", "limit": "2", **params}
        while True:
            page = (await client.get("/v1/records", params=query, headers=IMPACT)).json()
            seen += [record["carbon_captured"] for record in page["user_records"]]
            if "cursor" not in page:
                return seen
            query["cursor"] = page["cursor"]

    assert await amounts() == [5, 4, 3, 2, 1]
    # 1 was made on 2026-04-06, 2 and 3 on 04-07, 4 and 5 on 04-08: both dates inclusive
    assert await amounts(start_date="2026-04-07") == [5, 4, 3, 2]
    assert await amounts(start_date="2026-04-07", end_date="2026-04-07") == [3, 2]
    assert await amounts(sort_order="asc", end_date="2026-04-07") == [1, 2, 3]


async def test_customer_records_take_the_same_order_and_dates(
    client: httpx.AsyncClient, state: EmulatorState, clock: FakeClock
) -> None:
    for amount in (1, 2, 3):
        state.record_impact("plant_tree", amount, customer_email="a@example.com")
        clock.advance(days=1)
    query = {"sort_order": "desc", "end_date": "2026-04-07"}
    page = (await client.get("/v1/customer_records", params=query, headers=IMPACT)).json()
    assert [record["tree_planted"] for record in page["customer_records"]] == [2, 1]


async def test_cancelling_twice_answers_the_same_body_and_reverses_once(
    client: httpx.AsyncClient, state: EmulatorState, clock: FakeClock
) -> None:
    made = (await client.post("/v1/plant_tree", json={"amount": 4}, headers=IMPACT)).json()
    body = {"user_id": "U123", "time_utc": made["time_utc"], "reason": "sent twice"}
    clock.advance(minutes=1)
    first = await client.post("/v1/cancel_impact", json=body, headers=IMPACT)
    clock.advance(minutes=1)
    second = await client.post("/v1/cancel_impact", json=body | {"reason": "again"}, headers=IMPACT)

    assert first.json() == {
        "user_id": "U123",
        "time_utc": made["time_utc"],
        "tree_planted": 4,
        "cancelled_on": "2026-04-06T14:36:48.000Z",
        "message": first.json()["message"],
    }
    assert (second.status_code, second.json()) == (200, first.json())
    assert (await client.get("/_emulator/impacts")).json() == []
    cancelled = (await client.get("/_emulator/cancelled")).json()
    assert [(c["amount"], c["cancelled_on"], c["reason"]) for c in cancelled] == [
        (4, "2026-04-06T14:36:48.000Z", "sent twice")
    ]


async def test_cancelling_an_impact_that_never_existed_is_not_found(
    client: httpx.AsyncClient,
) -> None:
    body = {"user_id": "U123", "time_utc": "2026-04-06T14:35:48.000Z", "reason": "typo"}
    response = await client.post("/v1/cancel_impact", json=body, headers=IMPACT)
    assert response.status_code == 404
    assert response.json() == {
        "type": "invalid_request_error",
        "message": response.json()["message"],
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": 123}, "user_id"),
        ({"time_utc": None}, "time_utc"),
        ({"reason": "x" * 201}, "reason"),
        ({"reason": 42}, "reason"),
    ],
)
async def test_an_invalid_cancel_body_is_refused_naming_the_field(
    client: httpx.AsyncClient, state: EmulatorState, body: dict[str, Any], field: str
) -> None:
    made = (await capture(client)).json()
    full = {"user_id": "U123", "time_utc": made["time_utc"]} | body
    response = await client.post("/v1/cancel_impact", json=full, headers=IMPACT)
    assert response.status_code == 400
    assert field in response.json()["message"]
    assert len(state.impacts) == 1


async def test_a_cancel_reason_of_two_hundred_characters_is_kept(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    made = (await capture(client)).json()
    body = {"user_id": "U123", "time_utc": made["time_utc"], "reason": "x" * 200}
    assert (await client.post("/v1/cancel_impact", json=body, headers=IMPACT)).status_code == 200
    assert state.cancelled[0].reason == "x" * 200


# Profiles: kind (the default) and strict, where the documents leave the behaviour open


def test_the_default_profile_is_kind_and_strict_is_unkind_everywhere() -> None:
    assert EmulatorState().profile == KIND == Profile()
    assert asdict(KIND) == {
        "name": "kind",
        "records_lag_s": 0.0,
        "records_metadata": True,
        "lowercase_emails": False,
        "cancelled_listed": False,
        "random_failure_rate": 0.0,
        "late_finish_s": 30.0,
        "seed": 0,
    }
    assert asdict(STRICT) == asdict(KIND) | {
        "name": "strict",
        "records_lag_s": 3.0,
        "records_metadata": False,
        "lowercase_emails": True,
        "cancelled_listed": True,
    }


async def test_a_strict_listing_shows_a_new_impact_only_after_the_lag(
    client: httpx.AsyncClient, state: EmulatorState, clock: FakeClock
) -> None:
    state.profile = STRICT
    await capture(client, 5)
    await capture(client, 6, customer_email="a@example.com")

    async def listed() -> list[int]:
        own = (await client.get("/v1/records", headers=IMPACT)).json()["user_records"]
        theirs = (await client.get("/v1/customer_records", headers=IMPACT)).json()
        return [record["carbon_captured"] for record in own + theirs["customer_records"]]

    assert await listed() == []
    clock.advance(seconds=2.9)
    assert await listed() == []
    clock.advance(seconds=0.2)
    assert await listed() == [5, 6]
    assert len((await client.get("/_emulator/impacts")).json()) == 2  # made all along


async def test_a_strict_listing_echoes_no_metadata(
    client: httpx.AsyncClient, state: EmulatorState, clock: FakeClock
) -> None:
    state.profile = STRICT
    made = await capture(client, 5, metadata={"carbonhook_capture": "7"})
    clock.advance(seconds=3)
    [record] = (await client.get("/v1/records", headers=IMPACT)).json()["user_records"]

    assert "metadata" not in made.json()
    assert "metadata" not in record
    assert state.impacts[0].metadata == {"carbonhook_capture": "7"}


async def test_a_strict_listing_shows_customer_emails_lower_cased(
    client: httpx.AsyncClient, state: EmulatorState, clock: FakeClock
) -> None:
    state.profile = named_profile("strict", records_lag_s=0)
    made = (await capture(client, 5, customer_email="Ann.Lee@Example.com")).json()

    async def customer_records(**params: str) -> list[dict[str, Any]]:
        page = await client.get("/v1/customer_records", params=params, headers=IMPACT)
        return list(page.json()["customer_records"])

    [record] = await customer_records()
    assert made["customer"]["customer_email"] == "Ann.Lee@Example.com"
    assert record["customer"]["customer_email"] == "ann.lee@example.com"
    assert await customer_records(customer_email="Ann.Lee@Example.com") == []
    assert await customer_records(customer_email="ann.lee@example.com") == [record]


async def test_a_strict_listing_still_shows_a_cancelled_impact(
    client: httpx.AsyncClient, state: EmulatorState, clock: FakeClock
) -> None:
    state.profile = STRICT
    kept, cancelled = (await capture(client, 5)).json(), (await capture(client, 6)).json()
    body = {"user_id": "U123", "time_utc": cancelled["time_utc"], "reason": "test"}
    assert (await client.post("/v1/cancel_impact", json=body, headers=IMPACT)).status_code == 200
    clock.advance(seconds=4)

    listed = (await client.get("/v1/records", headers=IMPACT)).json()["user_records"]
    standing = (await client.get("/_emulator/impacts")).json()
    gone = (await client.get("/_emulator/cancelled")).json()

    assert [record["time_utc"] for record in listed] == [kept["time_utc"], cancelled["time_utc"]]
    assert [impact["time_utc"] for impact in standing] == [kept["time_utc"]]
    assert [impact["time_utc"] for impact in gone] == [cancelled["time_utc"]]


async def test_a_kind_listing_drops_a_cancelled_impact(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    made = (await capture(client, 5)).json()
    body = {"user_id": "U123", "time_utc": made["time_utc"], "reason": "test"}
    await client.post("/v1/cancel_impact", json=body, headers=IMPACT)
    assert (await client.get("/v1/records", headers=IMPACT)).json() == {"user_records": []}
    assert len((await client.get("/_emulator/cancelled")).json()) == 1


async def test_each_strict_behaviour_can_be_set_alone(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    answer = await client.post(
        "/_emulator/profile", json={"name": "kind", "lowercase_emails": True}
    )
    await capture(client, 5, customer_email="A@Example.com", metadata={"k": "v"})
    [record] = (await client.get("/v1/customer_records", headers=IMPACT)).json()["customer_records"]

    assert answer.status_code == 200
    assert answer.json() == asdict(KIND) | {"lowercase_emails": True}
    assert record["customer"]["customer_email"] == "a@example.com"
    assert record["metadata"] == {"k": "v"}  # still kind everywhere else


async def test_the_profile_is_set_and_shown_through_the_control_api(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    assert (await client.get("/_emulator/profile")).json() == asdict(KIND)
    strict = await client.post("/_emulator/profile", json={"name": "strict", "records_lag_s": 1})
    tweaked = await client.post("/_emulator/profile", json={"random_failure_rate": 0.25})

    assert strict.json() == asdict(STRICT) | {"records_lag_s": 1.0}
    assert tweaked.json() == strict.json() | {"random_failure_rate": 0.25}
    assert (await client.get("/_emulator/profile")).json() == tweaked.json()
    assert state.profile == named_profile("strict", records_lag_s=1, random_failure_rate=0.25)
    await client.post("/_emulator/reset")
    assert (await client.get("/_emulator/profile")).json() == tweaked.json()  # reset keeps it


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "lenient"}, "name"),
        ({"name": "strict", "records_lag": 3}, "records_lag"),
        ({"records_lag_s": -1}, "records_lag_s"),
        ({"records_lag_s": "3"}, "records_lag_s"),
        ({"records_metadata": "no"}, "records_metadata"),
        ({"lowercase_emails": 1}, "lowercase_emails"),
        ({"cancelled_listed": None}, "cancelled_listed"),
        ({"random_failure_rate": 1.5}, "random_failure_rate"),
        ({"late_finish_s": True}, "late_finish_s"),
        ({"seed": 1.5}, "seed"),
    ],
)
async def test_a_malformed_profile_is_refused_naming_the_field(
    client: httpx.AsyncClient, state: EmulatorState, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/_emulator/profile", json=body)
    assert response.status_code == 400
    assert field in response.json()["error"]
    assert state.profile == KIND


# Faults, latency, observation


async def test_a_status_fault_answers_the_impact_error_once_and_records_nothing(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    fault = {"endpoint": "capture_carbon", "status": 503, "retry_after": 2}
    assert (await client.post("/_emulator/faults", json=fault)).status_code == 201

    failed = await capture(client)
    assert failed.status_code == 503
    assert failed.headers["Retry-After"] == "2"
    assert failed.json() == {"type": "api_error", "message": failed.json()["message"]}
    assert state.impacts == []
    assert (await capture(client)).status_code == 200


@pytest.mark.parametrize(("status", "error"), [(429, "rate_limited"), (500, "server_error")])
async def test_a_status_fault_answers_the_carbonpass_error(
    client: httpx.AsyncClient, state: EmulatorState, status: int, error: str
) -> None:
    state.add_fault("crp", status=status, retry_after=0.5, times=2)
    answers = [await client.get("/api/v1/crp/crp_5tN8xBmQ", headers=CARBONPASS) for _ in range(3)]

    assert [answer.status_code for answer in answers] == [status, status, 200]
    assert answers[0].json() == {
        "error": error,
        "message": answers[0].json()["message"],
        "status": status,
    }
    assert answers[0].headers["Retry-After"] == "0.5"


async def test_a_wildcard_fault_hits_any_endpoint(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    state.add_fault("*", status=502, times=2)
    assert (await client.get("/api/v1/company", headers=CARBONPASS)).status_code == 502
    assert (await client.get("/v1/records", headers=IMPACT)).status_code == 502
    assert (await client.get("/v1/records", headers=IMPACT)).status_code == 200


async def test_a_refused_key_does_not_use_up_a_fault(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    state.add_fault("records", status=500)
    assert (await client.get("/v1/records")).status_code == 401
    assert (await client.get("/v1/records", headers=IMPACT)).status_code == 500


@pytest.mark.parametrize(
    "fault",
    [
        {"endpoint": "nowhere"},
        {"endpoint": "records", "mode": "explode"},
        {"endpoint": "records", "times": 0},
        {"endpoint": "records", "status": 42},
        {"endpoint": "records", "retry_after": "soon"},
    ],
)
async def test_a_malformed_fault_is_refused(
    client: httpx.AsyncClient, fault: dict[str, Any]
) -> None:
    assert (await client.post("/_emulator/faults", json=fault)).status_code == 400


async def test_calls_are_logged_with_endpoint_time_and_status(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    state.add_fault("records", status=503, times=2)
    before = time.time()
    for _ in range(3):
        await client.get("/v1/records", headers=IMPACT)
    await client.get("/api/v1/company")

    calls = (await client.get("/_emulator/calls")).json()

    assert [(call["endpoint"], call["status"]) for call in calls] == [
        ("records", 503),
        ("records", 503),
        ("records", 200),
        ("company", 401),
    ]
    assert before <= calls[0]["at"] <= calls[1]["at"] <= calls[2]["at"] <= time.time()


async def test_latency_delays_api_calls_but_not_control_calls(client: httpx.AsyncClient) -> None:
    assert (await client.post("/_emulator/latency", json={"ms": 200})).status_code == 200

    started = time.perf_counter()
    await client.get("/v1/records", headers=IMPACT)
    api_seconds = time.perf_counter() - started
    started = time.perf_counter()
    await client.get("/_emulator/calls")
    control_seconds = time.perf_counter() - started

    assert api_seconds >= 0.2
    assert control_seconds < 0.2


async def test_impacts_are_listed_for_tests(client: httpx.AsyncClient) -> None:
    made = (await capture(client, 9, customer_email="a@example.com", metadata={"k": "v"})).json()
    assert (await client.get("/_emulator/impacts")).json() == [
        {
            "kind": "capture_carbon",
            "amount": 9,
            "time_utc": made["time_utc"],
            "customer_email": "a@example.com",
            "customer_name": None,
            "customer_id": made["customer"]["customer_id"],
            "metadata": {"k": "v"},
            "notify": True,
            "user_id": "U123",
        }
    ]


async def test_reset_forgets_impacts_calls_faults_and_latency(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    await capture(client)
    state.add_fault("records", status=500)
    await client.post("/_emulator/latency", json={"ms": 50})
    state.set_crp("crp_kept", status="draft")

    assert (await client.post("/_emulator/reset")).status_code == 204

    assert (state.impacts, state.calls, state.faults, state.latency_ms) == ([], [], [], 0.0)
    assert (await client.get("/v1/records", headers=IMPACT)).json() == {"user_records": []}
    assert state.crps["crp_kept"]["status"] == "draft"


# Faults over real HTTP: uvicorn in a thread, httpx as the client


@pytest.mark.slow
def test_a_drop_fault_records_the_impact_then_breaks_the_connection(
    live: str, state: EmulatorState
) -> None:
    state.add_fault("capture_carbon", mode="drop")
    with httpx.Client(base_url=live, timeout=5) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            http.post("/v1/capture_carbon", json={"amount": 5}, headers=IMPACT)
        impacts = http.get("/_emulator/impacts").json()
        calls = http.get("/_emulator/calls").json()
        after = http.post("/v1/capture_carbon", json={"amount": 6}, headers=IMPACT)

    assert [impact["amount"] for impact in impacts] == [5]
    assert [call["status"] for call in calls] == [None]
    assert after.status_code == 200


@pytest.mark.slow
def test_a_drop_fault_on_a_read_breaks_the_connection_too(live: str, state: EmulatorState) -> None:
    state.add_fault("company", mode="drop")
    with httpx.Client(base_url=live, timeout=5) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            http.get("/api/v1/company", headers=CARBONPASS)
        assert http.get("/api/v1/company", headers=CARBONPASS).status_code == 200


@pytest.mark.slow
def test_a_hold_fault_records_the_impact_and_answers_after_release(
    live: str, state: EmulatorState
) -> None:
    with httpx.Client(base_url=live, timeout=5) as http:
        http.post("/_emulator/faults", json={"endpoint": "capture_carbon", "mode": "hold"})
        with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=live, timeout=5) as held:
            pending = pool.submit(
                held.post, "/v1/capture_carbon", json={"amount": 7}, headers=IMPACT
            )
            wait_until(lambda: state.held == 1)
            assert [impact["amount"] for impact in http.get("/_emulator/impacts").json()] == [7]
            assert not pending.done()
            assert http.post("/_emulator/release").json() == {"released": 1}
            response = pending.result(timeout=5)

    assert response.status_code == 200
    assert response.json()["carbon_captured"] == 7


@pytest.mark.slow
def test_a_held_answer_times_the_client_out_after_the_impact_is_made(
    live: str, state: EmulatorState
) -> None:
    state.add_fault("plant_tree", mode="hold")
    with httpx.Client(base_url=live, timeout=0.3) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/v1/plant_tree", json={"amount": 3}, headers=IMPACT)
    assert [impact.amount for impact in state.impacts] == [3]


@pytest.mark.slow
def test_a_late_finish_times_the_client_out_then_makes_the_impact(
    live: str, state: EmulatorState
) -> None:
    with httpx.Client(base_url=live, timeout=0.5) as http:
        fault = {"endpoint": "capture_carbon", "mode": "late_finish", "delay_s": 1.5}
        assert http.post("/_emulator/faults", json=fault).json()["delay_s"] == 1.5
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/capture_carbon", json={"amount": 5}, headers=IMPACT)
        assert http.get("/_emulator/impacts").json() == []  # the caller gave up: nothing yet
    # The client has closed its connections; the impact is made all the same.
    wait_until(lambda: len(state.impacts) == 1)
    assert state.impacts[0].amount == 5


async def test_a_late_finish_is_made_even_when_the_request_is_cancelled(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    state.add_fault("plant_tree", mode="late_finish", delay_s=0.3)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await client.post("/v1/plant_tree", json={"amount": 2}, headers=IMPACT)
    assert state.impacts == []
    await asyncio.sleep(0.5)
    assert [impact.amount for impact in state.impacts] == [2]


async def test_a_late_finish_is_made_at_release_and_dropped_by_a_reset(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    state.add_fault("capture_carbon", mode="late_finish", delay_s=60, times=2)

    async def started(amount: int) -> asyncio.Task[httpx.Response]:
        task = asyncio.create_task(capture(client, amount))
        while not state.late:
            await asyncio.sleep(0.01)
        return task

    released = await started(5)
    assert state.impacts == []
    assert (await client.post("/_emulator/release")).json() == {"released": 1}
    assert (await released).json()["carbon_captured"] == 5
    dropped = await started(6)
    assert (await client.post("/_emulator/reset")).status_code == 204
    assert (await dropped).status_code == 503
    assert state.impacts == []


@pytest.mark.slow
def test_a_reset_before_fault_breaks_the_connection_and_makes_nothing(
    live: str, state: EmulatorState
) -> None:
    state.add_fault("capture_carbon", mode="reset_before")
    with httpx.Client(base_url=live, timeout=5) as http:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            http.post("/v1/capture_carbon", json={"amount": 5}, headers=IMPACT)
        after = http.post("/v1/capture_carbon", json={"amount": 6}, headers=IMPACT)
        calls = http.get("/_emulator/calls").json()

    assert [impact.amount for impact in state.impacts] == [6]
    assert [call["status"] for call in calls] == [None, 200]
    assert after.status_code == 200


@pytest.mark.slow
def test_a_reset_after_fault_makes_the_impact_and_breaks_the_connection(
    live: str, state: EmulatorState
) -> None:
    state.add_fault("clean_ocean", mode="reset_after")
    with httpx.Client(base_url=live, timeout=5) as http:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            http.post("/v1/clean_ocean", json={"amount": 5}, headers=IMPACT)
        impacts = http.get("/_emulator/impacts").json()

    assert [impact["amount"] for impact in impacts] == [5]


async def test_a_reset_where_no_connection_can_be_reset_raises_connection_reset(
    client: httpx.AsyncClient, state: EmulatorState
) -> None:
    state.add_fault("capture_carbon", mode="reset_after")
    with pytest.raises(ConnectionReset):
        await capture(client, 5)
    assert len(state.impacts) == 1


@pytest.mark.slow
def test_random_failures_fail_creates_every_way_and_repeat_with_the_seed(
    live: str, state: EmulatorState
) -> None:
    state.profile = named_profile("kind", random_failure_rate=1.0, late_finish_s=1.0, seed=0)

    def outcomes() -> list[int | str]:
        seen: list[int | str] = []
        with httpx.Client(base_url=live, timeout=0.5) as http:
            for amount in range(1, 7):
                try:
                    answer = http.post(
                        "/v1/capture_carbon", json={"amount": amount}, headers=IMPACT
                    )
                    seen.append(answer.status_code)
                except httpx.TimeoutException:
                    seen.append("late")
                except httpx.TransportError:
                    seen.append("reset")
            assert http.get("/v1/records", headers=IMPACT).status_code == 200  # reads never fail
        wait_until(lambda: state.late == 0)
        return seen

    first = outcomes()
    made = sorted(impact.amount for impact in state.impacts)
    state.reset()
    again = outcomes()

    assert set(first) == {500, "reset", "late"}
    assert made == [amount for amount, seen in enumerate(first, 1) if seen != 500]
    assert again == first


def test_random_failures_follow_the_rate_and_only_hit_create_calls() -> None:
    def draws(**fields: Any) -> list[str | None]:
        state = EmulatorState(profile=named_profile("kind", **fields))
        faults = [state.draw_failure("plant_tree") for _ in range(1000)]
        assert state.draw_failure("records") is None
        return [fault.mode if fault is not None else None for fault in faults]

    quarter = draws(random_failure_rate=0.25, seed=1)
    assert 200 < sum(mode is not None for mode in quarter) < 300
    assert {mode for mode in quarter if mode} == {"status", "reset_after", "late_finish"}
    assert draws(random_failure_rate=0.25, seed=1) == quarter
    assert draws(random_failure_rate=0.25, seed=2) != quarter
    assert draws() == [None] * 1000


@pytest.mark.slow
def test_serve_emulator_answers_over_http_in_its_own_process() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = f"from carbonhook.emulator import serve_emulator; serve_emulator('127.0.0.1', {port})"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=1) as http:

            def company_answers() -> bool:
                try:
                    return http.get("/api/v1/company", headers=CARBONPASS).status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(company_answers, timeout=15)
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_emulate_command_takes_a_profile_and_has_none_by_default() -> None:
    parser = build_parser()
    assert parser.parse_args(["emulate"]).profile is None
    assert parser.parse_args(["emulate", "--profile", "strict"]).profile == "strict"
    assert [parser.parse_args(["emulate", "--profile", name]).profile for name in PROFILES] == [
        "kind",
        "strict",
    ]
    with pytest.raises(SystemExit):
        parser.parse_args(["emulate", "--profile", "lenient"])


@pytest.mark.slow
@pytest.mark.parametrize(("flags", "profile"), [([], KIND), (["--profile", "strict"], STRICT)])
def test_carbonhook_emulate_serves_the_profile_it_was_given(
    flags: list[str], profile: Profile
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "carbonhook", "emulate", "--port", str(port), *flags]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=1) as http:
            shown: list[dict[str, Any]] = []

            def profile_shown() -> bool:
                try:
                    shown.append(http.get("/_emulator/profile").json())
                except httpx.TransportError:
                    return False
                return True

            wait_until(profile_shown, timeout=15)
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert shown == [asdict(profile)]
