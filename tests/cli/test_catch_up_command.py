"""`carbonhook catch-up`, called as users call it, against the emulator over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carbonhook.cli.arguments import main
from tests.support import CP_KEY, RunningEmulator, query
from workers.planning import lbs_from_tonnes

RULES = '[[rule]]\nname = "bill-growth"\non = "bill.confirmed"\noffset_delta = { fraction = 1.0 }\n'


@pytest.fixture
def cli_env(db_url: str, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rules.toml").write_text(RULES)
    for name, value in {
        "DATABASE_URL": db_url,
        "BROKER_URL": "memory://",
        "CARBONPASS_API_URL": f"{emulator.base}/api/v1",
        "CARBONPASS_API_KEY": CP_KEY,
        "RULES_FILE": str(tmp_path / "rules.toml"),
    }.items():
        monkeypatch.setenv(f"CARBONHOOK_{name}", value)
    return db_url


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_catch_up_stores_one_event_per_site_and_says_so(cli_env: str, emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]):
    emulator.state.set_site_emissions("site_b", 10.0, 1.0, 8.0, 1.0)
    code, out, _ = run(capsys, "catch-up")
    assert code == 0
    assert "2 sites read, 2 new events" in out and "site_3rZ1" in out and "site_b" in out
    # memory:// — no queue this process shares: the events wait as pending for the sweeper
    assert "2 events wait as pending" in out
    assert query(cli_env, "SELECT type, status FROM events ORDER BY id") == [("emissions.catch_up", "pending")] * 2
    code, out, _ = run(capsys, "catch-up")
    assert code == 0 and "0 new events" in out and "before (no new growth)" in out
    assert query(cli_env, "SELECT count(*) FROM events") == [(2,)]


def test_catch_up_json_names_each_reading_and_whether_it_is_new(cli_env: str, emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, "catch-up", "--json")
    first = json.loads(out)
    assert code == 0 and first["dry_run"] is False
    [stored] = first["stored"]
    assert stored | {"event_id": 0} == {
        "event_id": 0,
        "created": True,
        "site_id": "site_3rZ1",
        "period": "2025-26",
        "total_tco2e": 172.0,
        "subject_id": "catch_up:site_3rZ1:2025-26:172.0",
    }
    emulator.state.grow_site_emissions("site_3rZ1", 1.0)
    code, out, _ = run(capsys, "catch-up", "--json")
    assert [(s["created"], s["total_tco2e"]) for s in json.loads(out)["stored"]] == [(True, 173.0)]


def test_catch_up_dry_run_reports_per_site_and_rule_and_stores_nothing(cli_env: str, emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, "catch-up", "--dry-run")
    assert code == 0 and "nothing stored or sent" in out
    assert "bill-growth" in out and str(lbs_from_tonnes(172.0, 1.0)) in out
    code, out, _ = run(capsys, "catch-up", "--dry-run", "--json")
    [offset] = json.loads(out)["offsets"]
    assert offset["rule"] == "bill-growth" and offset["growth_tco2e"] == 172.0
    assert offset["lbs"] == lbs_from_tonnes(172.0, 1.0) and offset["dry_run"] is False
    assert json.loads(out)["stored"] == []
    assert query(cli_env, "SELECT count(*) FROM events") == [(0,)]
    assert emulator.impacts == []


def test_a_carbonpass_error_exits_non_zero_with_the_reason_and_stores_nothing(cli_env: str, emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]):
    emulator.state.set_site_emissions("site_b", 10.0, 1.0, 8.0, 1.0)
    emulator.state.add_fault("emissions", status=404, times=2)
    code, out, err = run(capsys, "catch-up")
    assert code == 2 and out == ""
    assert err.startswith("carbonhook: error: GET /emissions") and "404" in err
    assert query(cli_env, "SELECT count(*) FROM events") == [(0,)]


def test_rules_check_knows_emissions_catch_up_is_carbonhooks_own(cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "own.toml"
    path.write_text('[[rule]]\nname = "catch-up"\non = "emissions.catch_up"\noffset_delta = { fraction = 1.0 }\n')
    code, _, err = run(capsys, "rules", "check", str(path))
    assert code == 0 and "warning" not in err
    path.write_text('[[rule]]\nname = "flat"\non = "emissions.catch_up"\ncapture_lbs = 5\n')
    code, _, err = run(capsys, "rules", "check", str(path))
    assert code == 2 and "a rule on emissions.catch_up takes offset_delta" in err


def test_rules_explain_reads_a_catch_up_events_own_emissions(cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from carbonhook.catch_ups import Reading
    from carbonhook.schema import utcnow

    reading = Reading("site_3rZ1", "2025-26", 200.0, {"reportingPeriod": "2025-26", "totalTco2e": 200.0}, utcnow())
    (tmp_path / "catch_up.json").write_bytes(reading.body())
    code, out, _ = run(capsys, "rules", "explain", str(tmp_path / "catch_up.json"))
    assert code == 0 and "MATCH     bill-growth" in out
    assert "site site_3rZ1, period 2025-26, current 200.0 tCO2e" in out
