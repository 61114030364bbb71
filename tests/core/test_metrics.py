"""GET /metrics after real traffic: the numbers match what happened."""

from __future__ import annotations

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

from receiver.signature import sign
from tests.support import SECRET, RunningEmulator, make_body, settings_for_test, start_receiver
from workers.rules import RulesHolder, parse_rules

RULES = '[limits]\nmax_lbs_per_day = 1000\n[[rule]]\nname = "flat"\non = "crp.generated"\ncapture_lbs = 300\n'


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_count_deliveries_events_captures_and_spend(sqlite_url: str, emulator: RunningEmulator):
    from carbonhook.cli.bootstrap import build_worker

    server, rec = start_receiver(sqlite_url, max_body_bytes=2000)
    settings = settings_for_test(sqlite_url, emulator)
    runtime = build_worker(settings, rules=RulesHolder(settings.rules_file, parse_rules(RULES)))
    try:
        before = scrape(rec.base)
        ids = [rec.post(make_body(subject=f"crp_m{n}")).json()["id"] for n in range(4)]
        rec.post(make_body(subject="crp_m0"))  # duplicate
        rec.post(make_body(subject="crp_m9"), headers={"X-CarbonPass-Signature": "bad"})
        rec.post(b"{}", headers={"X-CarbonPass-Signature": sign(b"{}", secret=SECRET.encode())})
        big = json.dumps({"pad": "x" * 3000}).encode()
        rec.post(big)
        for event_id in ids:
            runtime.processor.process(event_id)
        after = scrape(rec.base)
    finally:
        runtime.close()
        server.stop()

    for outcome, count in (("accepted", 4), ("duplicate", 1), ("bad_signature", 1), ("invalid", 1), ("too_large", 1)):
        assert delta(before, after, "carbonhook_deliveries_total", outcome=outcome) == count, outcome
    # 3 × 300 lbs fit under the 1,000 lbs day limit; the 4th is held.
    assert after[("carbonhook_events", (("status", "succeeded"),))] == 3
    assert after[("carbonhook_events", (("status", "held"),))] == 1
    assert after[("carbonhook_ledger_captures", (("status", "held"),))] == 1
    assert after[("carbonhook_spend_lbs", (("window", "day"),))] == 900
    assert delta(before, after, "carbonhook_captures_total", rule="flat", status="captured") == 3
    assert delta(before, after, "carbonhook_captures_total", rule="flat", status="held") == 1
    assert delta(before, after, "carbonhook_captured_amount_total", rule="flat", action="capture_carbon") == 900
    assert delta(before, after, "carbonhook_api_requests_total", api="impact", endpoint="capture_carbon", status="200") == 3
    assert delta(before, after, "carbonhook_api_requests_total", api="carbonpass", endpoint="crp", status="200") == 4
    assert delta(before, after, "carbonhook_event_processing_seconds_count", type="crp.generated", status="succeeded") == 3
