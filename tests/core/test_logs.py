"""Logs are JSON lines with context, and never carry a secret, even on failures."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from carbonhook.logs import JsonFormatter, configure_logging
from receiver.signature import sign
from tests.support import free_port, make_body, query, wait_http, wait_until

WEBHOOK_SECRET = "whsec_Sup3rS3cretValue"
CP_KEY = "cp_live_L34kM3IfY0uCan"
IMPACT_KEY = "live_Imp4ctK3yN3verLogged"


def test_a_log_record_is_one_json_object_with_its_context():
    record = logging.LogRecord("carbonhook", logging.INFO, __file__, 1, "capture %s done", (7,), None)
    record.event_id = 3
    record.capture_id = 7
    record.outcome = "captured"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "capture 7 done"
    assert (line["level"], line["event_id"], line["capture_id"], line["outcome"]) == ("info", 3, 7, "captured")
    assert "time" in line


def test_console_format_when_asked(capsys: pytest.CaptureFixture[str]):
    configure_logging("INFO", "console")
    logging.getLogger("carbonhook").info("hello")
    assert "INFO" in capsys.readouterr().err
    configure_logging("WARNING", "json")


@pytest.mark.slow
def test_secrets_never_appear_in_logs_or_error_bodies(sqlite_url: str, procs: Any, tmp_path: Path):
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "flat"\non = "crp.generated"\ncapture_lbs = 5\n')
    emulator_port, receiver_port = free_port(), free_port()
    base_emulator = f"http://127.0.0.1:{emulator_port}"
    env = {
        "CARBONHOOK_DATABASE_URL": sqlite_url,
        "CARBONHOOK_WEBHOOK_SECRETS": WEBHOOK_SECRET,
        # Keys the emulator refuses: every outbound call fails with 401.
        "CARBONHOOK_CARBONPASS_API_KEY": CP_KEY,
        "CARBONHOOK_IMPACT_API_KEY": IMPACT_KEY,
        "CARBONHOOK_CARBONPASS_API_URL": f"{base_emulator}/api/v1",
        "CARBONHOOK_IMPACT_API_URL": base_emulator,
        "CARBONHOOK_RULES_FILE": str(rules),
        "CARBONHOOK_ADMIN_TOKEN": "admin-token-Xy9-0123",
        "CARBONHOOK_LOG_LEVEL": "DEBUG",
        "CARBONHOOK_LOG_FORMAT": "json",
    }
    emulator = procs(["emulate", "--port", str(emulator_port)], env, "emulator")
    wait_http(f"{base_emulator}/_emulator/impacts", emulator)
    service = procs(["run", "--port", str(receiver_port)], env, "run")
    base = f"http://127.0.0.1:{receiver_port}"
    wait_http(f"{base}/healthz", service)
    url = f"{base}/webhooks/carbonpass"
    bodies = []
    body = make_body(subject="crp_secret1")
    bodies.append(httpx.post(url, content=body, headers={"X-CarbonPass-Signature": sign(body, secret=WEBHOOK_SECRET.encode())}).text)
    bodies.append(httpx.post(url, content=body, headers={"X-CarbonPass-Signature": "sha256=" + "0" * 64}).text)
    bodies.append(httpx.post(url, content=b"{", headers={"X-CarbonPass-Signature": sign(b"{", secret=WEBHOOK_SECRET.encode())}).text)
    bodies.append(httpx.get(f"{base}/admin/api/events", headers={"Authorization": "Bearer wrong"}).text)
    # The signed "{" is kept too, as an invalid event.
    wait_until(lambda: query(sqlite_url, "SELECT status FROM events ORDER BY id") == [("failed",), ("invalid",)], timeout=30, what="event failed on 401")
    bodies.append(httpx.get(f"{base}/admin/api/events/1", headers={"Authorization": "Bearer admin-token-Xy9-0123"}).text)
    bodies.append(httpx.get(f"{base}/metrics").text)
    assert "401" in query(sqlite_url, "SELECT last_error FROM events ORDER BY id")[0][0]
    service.stop()
    emulator.stop()
    output = service.output()
    assert "event 1 failed" in output
    for secret in (WEBHOOK_SECRET, CP_KEY, IMPACT_KEY, "admin-token-Xy9-0123"):
        assert secret not in output
        for text in bodies:
            assert secret not in text
        for row in query(sqlite_url, "SELECT last_error, note FROM events"):
            assert secret not in str(row)
