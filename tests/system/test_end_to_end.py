"""End to end over real HTTP: real `carbonhook` processes, the emulator, PostgreSQL and Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.signature import sign
from tests.support import (
    CP_KEY,
    IMPACT_KEY,
    SECRET,
    free_port,
    make_body,
    query,
    wait_http,
    wait_until,
)

RULES = """
[[rule]]
name = "offset-published-crps"
on = "crp.generated"
when = { status = "published" }
capture_lbs = 500
customer_email = "sustainability@example.com"
"""


def env_for(db: str, broker: str, emulator_base: str, rules: Path) -> dict[str, str]:
    return {
        "CARBONHOOK_DATABASE_URL": db,
        "CARBONHOOK_BROKER_URL": broker,
        "CARBONHOOK_WEBHOOK_SECRETS": f"old-webhook-secret-7d3e,{SECRET}",
        "CARBONHOOK_CARBONPASS_API_URL": f"{emulator_base}/api/v1",
        "CARBONHOOK_CARBONPASS_API_KEY": CP_KEY,
        "CARBONHOOK_IMPACT_API_URL": emulator_base,
        "CARBONHOOK_IMPACT_API_KEY": IMPACT_KEY,
        "CARBONHOOK_RULES_FILE": str(rules),
        "CARBONHOOK_LOG_FORMAT": "json",
    }


def post(url: str, body: bytes, secret: str = SECRET) -> httpx.Response:
    return httpx.post(url, content=body, headers={"X-CarbonPass-Signature": sign(body, secret=secret.encode())}, timeout=10)


@pytest.mark.slow
def test_a_signed_delivery_becomes_exactly_one_capture(pg_url: str, redis_url: str, procs: Any, tmp_path: Path):
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    emulator_port, receiver_port = free_port(), free_port()
    emulator_base = f"http://127.0.0.1:{emulator_port}"
    env = env_for(pg_url, redis_url, emulator_base, rules)
    emulator = procs(["emulate", "--port", str(emulator_port)], env, "emulator")
    receiver = procs(["serve", "--port", str(receiver_port)], env, "receiver")
    worker = procs(["worker", "--threads", "2"], env, "worker")
    wait_http(f"{emulator_base}/_emulator/impacts", emulator)
    base = f"http://127.0.0.1:{receiver_port}"
    wait_http(f"{base}/healthz", receiver)
    url = f"{base}/webhooks/carbonpass"

    body = make_body(subject="crp_e2e1")
    first = post(url, body)
    assert first.status_code == 202, first.text
    event_id = first.json()["id"]
    wait_until(lambda: query(pg_url, f"SELECT status FROM events WHERE id = {event_id}")[0][0] == "succeeded", timeout=30, what=f"event succeeded\n{worker.output()}")
    impacts = httpx.get(f"{emulator_base}/_emulator/impacts").json()
    assert [(i["amount"], i["customer_email"]) for i in impacts] == [(500, "sustainability@example.com")]

    again = post(url, body)
    assert again.status_code == 200 and again.json() == {"id": event_id, "status": "duplicate"}
    assert post(url, make_body(subject="crp_e2e2"), secret="old-webhook-secret-7d3e").status_code == 202  # rotation

    wrong = post(url, make_body(subject="crp_e2e3"), secret="not-the-secret")
    assert wrong.status_code == 401
    assert query(pg_url, "SELECT count(*) FROM events WHERE subject_id = 'crp_e2e3'") == [(0,)]
    wait_until(lambda: len(httpx.get(f"{emulator_base}/_emulator/impacts").json()) == 2, timeout=30, what="second capture")
    assert httpx.get(f"{base}/readyz").status_code == 200

    assert worker.stop() == 0  # SIGTERM: a clean exit
    for line in worker.output().splitlines():
        json.loads(line)  # every log line is one JSON object


@pytest.mark.slow
def test_the_sandbox_runs_on_embedded_defaults_with_no_keys(tmp_path: Path):
    """What the README's first command does: `carbonhook run --sandbox` in an empty folder."""
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CARBONHOOK_LOG_FORMAT": "json"}
    proc = subprocess.Popen([sys.executable, "-m", "carbonhook", "run", "--sandbox", "--port", str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30)
        url = f"http://127.0.0.1:{port}/webhooks/carbonpass"
        sent = subprocess.run([sys.executable, "-m", "carbonhook", "send-test-event", "crp.generated", "--url", url, "--id", "crp_sandbox1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "HTTP 202" in sent.stdout
        db = f"sqlite:///{tmp_path}/carbonhook.db"
        # The sandbox's CRPs are drafts, published 10 s later: the event waits for it.
        wait_until(lambda: query(db, "SELECT status FROM events") == [("waiting",)], timeout=30, what="the event waiting")
        assert query(db, "SELECT status FROM captures") == []
        wait_until(lambda: query(db, "SELECT status FROM captures") == [("captured",)], timeout=60, what="sandbox capture")
        listed = subprocess.run([sys.executable, "-m", "carbonhook", "events", "list", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
        assert json.loads(listed.stdout)[0]["status"] == "succeeded"
        assert query(db, "SELECT outcome FROM event_attempts ORDER BY id")[-1] == ("succeeded",)
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert "send a test event" in output
    assert proc.returncode == 0, output


def test_the_sandbox_rules_ship_with_the_package_and_cover_both_event_types():
    import importlib.resources

    from carbonhook.cli.bootstrap import SANDBOX_RULES
    from workers.rules import load_rules

    shipped = importlib.resources.files("carbonhook.cli").joinpath("sandbox_rules.toml")
    assert shipped.read_text(encoding="utf-8") == SANDBOX_RULES.read_text(encoding="utf-8")
    ruleset = load_rules(SANDBOX_RULES)
    assert {rule.on for rule in ruleset.rules} == {"crp.generated", "bill.confirmed"}
    assert all(rule.customer_email is None or "@" in rule.customer_email for rule in ruleset.rules)
    assert ruleset.file.limits.max_lbs_per_day is not None  # the demo shows a limit at work


@pytest.mark.slow
def test_sighup_reloads_the_rules_and_refuses_an_invalid_file(sqlite_url: str, redis_url: str, procs: Any, tmp_path: Path):
    import signal

    from tests.support import store_delivery

    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    emulator_port = free_port()
    base = f"http://127.0.0.1:{emulator_port}"
    env = env_for(sqlite_url, redis_url, base, rules)
    wait_http(f"{base}/_emulator/impacts", procs(["emulate", "--port", str(emulator_port)], env, "emulator"))
    worker = procs(["worker", "--threads", "1"], env, "worker")
    wait_until(lambda: "worker started" in worker.output(), timeout=20, what="worker start")

    rules.write_text(RULES.replace("capture_lbs = 500", "capture_lbs = 700"))
    worker.popen.send_signal(signal.SIGHUP)
    wait_until(lambda: "rules reloaded" in worker.output(), timeout=10, what="reload")
    rules.write_text("[[rule]]\nname = 'broken'\n")
    worker.popen.send_signal(signal.SIGHUP)
    wait_until(lambda: "rules not reloaded" in worker.output(), timeout=10, what="refusal")

    from carbonhook.queue import enqueue_event, make_broker

    event_id = store_delivery(sqlite_url, make_body(subject="crp_reload"))
    broker = make_broker(redis_url)
    enqueue_event(broker, event_id)
    broker.close()
    wait_until(lambda: len(httpx.get(f"{base}/_emulator/impacts").json()) == 1, timeout=30, what="capture")
    assert [i["amount"] for i in httpx.get(f"{base}/_emulator/impacts").json()] == [700]
    assert worker.popen.poll() is None
