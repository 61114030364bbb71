"""`carbonhook report`, called as users call it."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from carbonhook.cli.arguments import main
from carbonhook.database import create_sync_engine
from tests.core.test_impact_report import seed_ledger

NOVEMBER = ["--from", "2026-11-01", "--to", "2026-11-30"]


@pytest.fixture
def ledger(sqlite_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, int]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CARBONHOOK_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("CARBONHOOK_BROKER_URL", "memory://")
    monkeypatch.delenv("CARBONHOOK_CARBONPASS_API_KEY", raising=False)
    engine = create_sync_engine(sqlite_url, pool_size=1)
    try:
        return seed_ledger(engine)
    finally:
        engine.dispose()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_report_prints_impacts_totals_coverage_and_reversed_duplicates_as_tables(ledger: dict[str, int], capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, "report", *NOVEMBER, "--by", "rule")
    assert code == 0
    assert "4 impacts standing, 2026-11-01 to 2026-11-30" in out
    assert "2,205 lbs carbon" in out and "3 trees" in out
    assert "totals by rule" in out and "offset-bills" in out
    assert "emissions unavailable: CarbonPass is not configured" in out
    assert "1 reversed duplicates (not counted)" in out and "2026-11-03T10:00:01.000Z" in out


def test_report_as_json_and_csv(ledger: dict[str, int], capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, "report", *NOVEMBER, "--format", "json", "--by", "day")
    assert code == 0
    report = json.loads(out)
    assert [r["capture_id"] for r in report["impacts"]] == [ledger["bill"], ledger["trees"], ledger["resolved"], ledger["old_bill"]]
    assert [t["group"] for t in report["totals"]] == ["2026-11-03", "2026-11-15", "2026-11-16", "2026-11-30"]
    assert len(report["reversed_duplicates"]) == 1
    code, out, _ = run(capsys, "report", *NOVEMBER, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 4
    assert rows[0]["customer_email"].startswith("'=")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--from", "2026-11-31"], "carbonhook: error: 'from' is not a date YYYY-MM-DD: '2026-11-31'"),
        (["--from", "2026-12-01", "--to", "2026-11-01"], "carbonhook: error: 'from' (2026-12-01) is after 'to' (2026-11-01)"),
    ],
)
def test_a_bad_date_exits_2_with_the_reason(ledger: dict[str, int], capsys: pytest.CaptureFixture[str], args: list[str], says: str):
    code, out, err = run(capsys, "report", *args)
    assert code == 2 and out == "" and err.strip() == says


@pytest.mark.parametrize("args", [["--by", "week"], ["--format", "xml"]])
def test_an_unknown_grouping_or_format_exits_2(capsys: pytest.CaptureFixture[str], args: list[str]):
    with pytest.raises(SystemExit) as exited:
        main(["report", *args])
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
