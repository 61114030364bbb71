"""GET /metrics after real traffic: the numbers match what happened."""

from __future__ import annotations

import json
import time

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


def test_metrics_count_deliveries_events_captures_and_spend(sqlite_url: str, emulator: RunningEmulator, monkeypatch):
    from carbonhook.cli.bootstrap import build_worker

    monkeypatch.setattr("receiver.app.STORE_METRICS_MAX_AGE_S", 0.0)  # every scrape reads the database

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
    now = time.time()
    assert now - 30 < after[("carbonhook_last_delivery_timestamp_seconds", ())] <= now
    assert now - 30 < after[("carbonhook_ledger_oldest_timestamp_seconds", (("status", "held"),))] <= now
    assert delta(before, after, "carbonhook_metrics_errors_total", source="database") == 0


def test_metrics_on_a_database_never_migrated_serve_the_counters_and_count_the_failure(tmp_path, caplog):
    server, rec = start_receiver(f"sqlite:///{tmp_path}/never-migrated.db")
    try:
        assert rec.post(make_body(subject="crp_nomigration")).status_code == 503
        first = scrape(rec.base)
        second = scrape(rec.base)  # a failure is not cached: each scrape tries again
    finally:
        server.stop()
    assert delta(first, second, "carbonhook_metrics_errors_total", source="database") == 1
    assert first[("carbonhook_deliveries_total", (("outcome", "unavailable"),))] >= 1
    assert not any(name == "carbonhook_events" for name, _ in second)  # left out, not made up
    warnings = [r.getMessage() for r in caplog.records if r.name == "carbonhook.metrics"]
    assert warnings and all(
        m == "/metrics left out the database's figures: OperationalError: no such table: events" for m in warnings
    )


def test_ignored_events_are_counted_by_type(sqlite_url: str, emulator: RunningEmulator, monkeypatch):
    from carbonhook.cli.bootstrap import build_worker

    monkeypatch.setattr("receiver.app.STORE_METRICS_MAX_AGE_S", 0.0)
    server, rec = start_receiver(sqlite_url)
    settings = settings_for_test(sqlite_url, emulator)
    runtime = build_worker(settings, rules=RulesHolder(settings.rules_file, parse_rules(RULES)))
    try:
        before = scrape(rec.base)
        bodies = [make_body(event="bill.calculated", subject=f"bill_{n}") for n in range(2)]
        bodies.append(make_body(event="company.updated", subject="comp_1"))
        ids = [rec.post(body).json()["id"] for body in bodies]
        assert [runtime.processor.process(i) for i in ids] == ["ignored"] * 3
        after = scrape(rec.base)
    finally:
        runtime.close()
        server.stop()
    assert delta(before, after, "carbonhook_deliveries_total", outcome="accepted") == 3
    # What the workers ignored, as they did (per process) and as stored (every receiver alike).
    assert delta(before, after, "carbonhook_events_ignored_total", type="bill.calculated") == 2
    assert delta(before, after, "carbonhook_events_ignored_total", type="company.updated") == 1
    assert after[("carbonhook_ignored_events", (("type", "bill.calculated"),))] == 2
    assert after[("carbonhook_ignored_events", (("type", "company.updated"),))] == 1
    assert after[("carbonhook_events", (("status", "ignored"),))] == 3


def test_scrapes_read_the_database_at_most_every_15_seconds(sqlite_url: str):
    server, rec = start_receiver(sqlite_url)
    try:
        first = scrape(rec.base)
        assert rec.post(make_body(subject="crp_cached")).status_code == 202
        second = scrape(rec.base)
    finally:
        server.stop()
    assert ("carbonhook_events", (("status", "queued"),)) not in first
    assert ("carbonhook_events", (("status", "queued"),)) not in second  # the figures of the first
    assert delta(first, second, "carbonhook_deliveries_total", outcome="accepted") == 1  # counters are live


def test_the_cache_answers_until_its_figures_are_15_seconds_old():
    from prometheus_client.core import GaugeMetricFamily

    from carbonhook.metrics import CachedCollector

    now = [100.0]
    queries = []

    def collect():
        queries.append(now[0])
        family = GaugeMetricFamily("carbonhook_events", "Events by status", labels=["status"])
        family.add_metric(["queued"], len(queries))
        yield family

    cached = CachedCollector(collect, max_age_s=15, clock=lambda: now[0])
    values = []
    for at in (100.0, 105.0, 114.9, 115.0, 129.0, 130.0):
        now[0] = at
        values.append([sample.value for family in cached.collect() for sample in family.samples])
    assert queries == [100.0, 115.0, 130.0]
    assert values == [[1], [1], [1], [2], [2], [3]]


def test_waiting_events_are_counted_by_status(sqlite_url: str, emulator: RunningEmulator, monkeypatch):
    from carbonhook.cli.bootstrap import build_worker

    rules = '[[rule]]\nname = "on-publication"\non = "crp.generated"\nwait_until = { "crp.status" = "published" }\nwait_for = "1d"\ncapture_lbs = 5\n'
    monkeypatch.setattr("receiver.app.STORE_METRICS_MAX_AGE_S", 0.0)
    emulator.state.set_crp("crp_draft_m", status="draft")
    server, rec = start_receiver(sqlite_url)
    settings = settings_for_test(sqlite_url, emulator)
    runtime = build_worker(settings, rules=RulesHolder(settings.rules_file, parse_rules(rules)))
    runtime.processor.enqueue = lambda event_id, delay: None
    try:
        event_id = rec.post(make_body(subject="crp_draft_m")).json()["id"]
        assert runtime.processor.process(event_id) == "waiting"
        after = scrape(rec.base)
    finally:
        runtime.close()
        server.stop()
    assert after[("carbonhook_events", (("status", "waiting"),))] == 1
