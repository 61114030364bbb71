"""`carbonhook notify test`: one notification to every destination, each one's result."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from carbonhook.cli.arguments import main
from tests.support import Catcher, free_port


@pytest.fixture
def catcher() -> Iterator[Catcher]:
    c = Catcher().start()
    yield c
    c.stop()


@pytest.fixture
def cli_env(sqlite_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CARBONHOOK_DATABASE_URL", sqlite_url)
    return sqlite_url


def test_notify_test_sends_one_message_to_each_destination_and_shows_no_secret_path(
    cli_env: str, catcher: Catcher, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("CARBONHOOK_NOTIFY_URL", catcher.url)
    assert main(["notify", "test", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"ok": True, "destinations": [{"destination": f"http://127.0.0.1:{catcher.port}/***", "ok": True, "error": None}]}
    [body] = catcher.bodies
    assert body["kind"] == "test" and "test notification" in body["text"]
    assert catcher.paths == ["/services/T000/B000/secretpath"]


def test_notify_test_exits_1_when_a_destination_does_not_take_it(
    cli_env: str, catcher: Catcher, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    down = f"http://127.0.0.1:{free_port()}/hooks/secret-key-123"
    monkeypatch.setenv("CARBONHOOK_NOTIFY_URL", f"{catcher.url},{down}")
    assert main(["notify", "test"]) == 1
    out = capsys.readouterr().out
    assert "failed: ConnectError" in out and "secret-key-123" not in out and "secretpath" not in out
    assert len(catcher.bodies) == 1


def test_notify_test_without_a_destination_says_which_variable_is_missing(
    cli_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.delenv("CARBONHOOK_NOTIFY_URL", raising=False)
    assert main(["notify", "test"]) == 2
    assert "no destination: set CARBONHOOK_NOTIFY_URL" in capsys.readouterr().err


def test_a_notify_url_that_is_not_http_is_refused_without_showing_it(
    cli_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("CARBONHOOK_NOTIFY_URL", "ftp://example.com/secret-key-456")
    assert main(["notify", "test"]) == 2
    err = capsys.readouterr().err
    assert "CARBONHOOK_NOTIFY_URL" in err and "secret-key-456" not in err
