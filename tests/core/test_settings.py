import pytest

from carbonhook.errors import SettingsError
from carbonhook.settings import load_settings


def test_defaults_are_the_embedded_ones(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.database_url == "sqlite:///carbonhook.db"
    assert settings.broker_url == "memory://"
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.http_timeout_s == 10
    assert (settings.max_retries, settings.retry_min_backoff_s, settings.retry_max_backoff_s) == (10, 15, 3600)


def test_secrets_are_comma_separated_and_hidden(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CARBONHOOK_WEBHOOK_SECRETS", " old-secret , new-secret ,")
    settings = load_settings()
    assert settings.secret_bytes == (b"old-secret", b"new-secret")
    assert "old-secret" not in repr(settings)


def test_fractions_of_a_second_are_accepted(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CARBONHOOK_RETRY_MIN_BACKOFF_S", "0.25")
    assert load_settings().retry_min_backoff_s == 0.25


def test_a_malformed_value_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CARBONHOOK_HTTP_TIMEOUT_S", "soon")
    with pytest.raises(SettingsError, match="CARBONHOOK_HTTP_TIMEOUT_S"):
        load_settings()


def test_a_missing_required_value_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match="CARBONHOOK_IMPACT_API_KEY is required"):
        load_settings(carbonpass_api_key="k").require("carbonpass_api_key", "impact_api_key")


def test_dotenv_is_read(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("CARBONHOOK_MAX_RETRIES=3\n")
    assert load_settings().max_retries == 3


@pytest.mark.parametrize("token", ["change-me", "", " " * 20, "x" * 15])
def test_a_short_admin_token_is_refused(monkeypatch, tmp_path, token):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CARBONHOOK_ADMIN_TOKEN", token)
    with pytest.raises(SettingsError, match=r"^CARBONHOOK_ADMIN_TOKEN: must be at least 16 characters"):
        load_settings()


def test_an_admin_token_of_16_characters_is_taken(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CARBONHOOK_ADMIN_TOKEN", "x" * 16)
    token = load_settings().admin_token
    assert token is not None and token.get_secret_value() == "x" * 16
