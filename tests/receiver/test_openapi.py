"""The admin API's OpenAPI document is true: it names every route the app serves, malformed input
gets a 4xx in JSON, and schemathesis, run against a live receiver, finds nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.openapi import MAX_ID, document
from tests.support import RunningEmulator, make_body, settings_for_test, store_delivery

TOKEN = "openapi-admin-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
RULES = '[limits]\nmax_lbs_per_day = 500\n[[rule]]\nname = "flat"\non = "crp.generated"\ncapture_lbs = 400\n'
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,ignored_auth"


@pytest.fixture
def base(db_url: str, emulator: RunningEmulator) -> Iterator[str]:
    """A live receiver with its admin API over events that failed, succeeded and are held."""
    from dramatiq.brokers.stub import StubBroker

    from carbonhook.cli.bootstrap import build_admin, build_receiver_app, build_worker
    from carbonhook.cli.lifecycle import start_server
    from receiver.lockout import Lockout
    from workers.rules import RulesHolder, parse_rules

    broker = StubBroker()
    settings = settings_for_test(db_url, emulator, admin_token=TOKEN)
    runtime = build_worker(settings, broker=broker, threads=2, rules=RulesHolder(settings.rules_file, parse_rules(RULES)))
    httpx.post(f"{emulator.base}/_emulator/faults", json={"endpoint": "capture_carbon", "status": 400, "times": 1})
    for n in range(3):  # failed, succeeded, held (over the day's 500 lbs)
        runtime.processor.process(store_delivery(db_url, make_body(subject=f"crp_o{n}")))
    for n in range(20):  # replayable, and replayable again once the workers processed them
        runtime.processor.process(store_delivery(db_url, make_body(event="bill.confirmed", subject=f"bill_o{n}")))
    admin = build_admin(settings, broker)
    # Workers process what the API replays: the events become replayable again, so replays (and
    # their reasons) keep reaching the database while schemathesis runs.
    runtime.start()
    # Wrong tokens are part of what is tried: no lockout here (tests/receiver/test_lockout.py).
    app = build_receiver_app(settings, broker=broker, admin=admin, lockout=Lockout(limit=10**9))
    server = start_server(app, "127.0.0.1", 0, lifespan="on")
    yield f"http://127.0.0.1:{server.port}"
    server.stop()
    runtime.stop(timeout_s=10)
    admin.store.engine.dispose()


def test_the_document_names_every_admin_api_route_and_method():
    from receiver.admin import admin_api_routes
    from receiver.lockout import Lockout

    served = {
        (re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path), method.lower())
        for route in admin_api_routes(None, {"admin": TOKEN}, Lockout())  # type: ignore[arg-type]
        for method in route.methods or ()
        if method != "HEAD"
    }
    described = {(path, method) for path, operations in document()["paths"].items() for method in operations}
    assert described == served


def test_every_operation_documents_its_parameters_and_answers():
    for path, operations in document()["paths"].items():
        for method, operation in operations.items():
            names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert names == set(re.findall(r"\{(\w+)\}", path)), (method, path)
            assert {"200", "401", "429"} <= set(operation["responses"]), (method, path)
            if method == "post" and path != "/admin/api/openapi.json":
                assert {"400", "413", "415"} <= set(operation["responses"]), (method, path)


def test_the_document_is_served_behind_the_token(base: str):
    assert httpx.get(f"{base}/admin/api/openapi.json", timeout=10).status_code == 401
    served = httpx.get(f"{base}/admin/api/openapi.json", headers=BEARER, timeout=10)
    assert served.status_code == 200 and served.headers["content-type"] == "application/json"
    assert served.json() == json.loads(json.dumps(document()))


@pytest.mark.parametrize(
    ("method", "path", "kw"),
    [
        ("GET", f"/events/{MAX_ID + 1}", {}),
        ("GET", "/events/99999999999999999999999999", {}),
        ("POST", f"/events/{MAX_ID + 1}/replay", {}),
        ("POST", f"/captures/{MAX_ID + 1}/approve", {}),
        ("POST", "/captures/1/explode", {}),
        ("GET", "/events/-1", {}),
        ("GET", "/events/abc", {}),
        ("POST", "/events/1/replay", {"content": b'{"reason": "\\ud800"}'}),
        ("POST", "/events/1/replay", {"json": {"reason": 5}}),
        ("POST", "/events/1/replay", {"json": {"reason": {"why": "x"}}}),
        ("POST", "/events/1/replay", {"json": {"reason": "nul \x00"}}),
        ("POST", "/events/1/replay", {"content": b"[" * 5000 + b"]" * 5000}),
        ("POST", "/events/1/replay", {"content": b"\xff\xfe"}),
        ("POST", "/events/replay", {"json": {"status": "failed", "reason": ["x"]}}),
        ("POST", "/events/replay", {"json": {"type": 5}}),
        ("POST", "/events/replay", {"json": {"status": 5}}),
        ("POST", "/events/replay", {"json": {"since": {"a": 1}}}),
        ("POST", "/events/replay", {"params": {"type": "crp\x00"}}),
        ("GET", "/events", {"params": {"cursor": str(MAX_ID + 1)}}),
        ("GET", "/events", {"params": {"cursor": "-5"}}),
        ("GET", "/events", {"params": {"cursor": "1e5"}}),
        ("GET", "/events", {"params": {"limit": "9" * 5000}}),
        ("GET", "/events", {"params": {"type": "\x00"}}),
        ("GET", "/events", {"params": {"type": "t" * 101}}),
        ("GET", "/events", {"params": {"since": "2026-13-45"}}),
        ("GET", "/captures", {"params": {"status": "\x00"}}),
        ("GET", "/captures", {"params": {"status": "nope"}}),
        ("GET", "/captures", {"params": {"cursor": "x"}}),
        ("DELETE", "/events", {}),
    ],
)
def test_malformed_input_gets_a_4xx_in_json(base: str, method: str, path: str, kw: dict[str, Any]):
    headers = {**BEARER, "Content-Type": "application/json"} if "content" in kw else BEARER
    response = httpx.request(method, f"{base}/admin/api{path}", headers=headers, timeout=10, **kw)
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"error", "message"}


@pytest.mark.slow
def test_schemathesis_finds_nothing_against_a_live_receiver(base: str, tmp_path: Path):
    result = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run", f"{base}/admin/api/openapi.json",
            "--url", base, "--header", f"Authorization: Bearer {TOKEN}",
            "--checks", CHECKS, "--max-examples", "40", "--workers", "1",
            "--request-timeout", "20", "--no-color", "--warnings", "off",
            "--report", "junit", "--report-dir", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:]
    assert re.search(r"\b[1-9]\d* passed", output), output[-5000:]
