import pytest

from carbonhook.errors import SettingsError
from carbonhook.settings import load_settings


def test_defaults_are_the_embedded_ones(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.database_url.get_secret_value() == "sqlite:///carbonhook.db"
    assert settings.broker_url.get_secret_value() == "memory://"
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


def test_waiting_events_are_rechecked_between_a_minute_and_four_hours_unless_set(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert (settings.wait_min_interval_s, settings.wait_max_interval_s) == (60, 14400)
    monkeypatch.setenv("CARBONHOOK_WAIT_MIN_INTERVAL_S", "0.5")
    monkeypatch.setenv("CARBONHOOK_WAIT_MAX_INTERVAL_S", "3")
    settings = load_settings()
    assert (settings.wait_min_interval_s, settings.wait_max_interval_s) == (0.5, 3)
    monkeypatch.setenv("CARBONHOOK_WAIT_MIN_INTERVAL_S", "0")
    with pytest.raises(SettingsError, match="CARBONHOOK_WAIT_MIN_INTERVAL_S"):
        load_settings()


def test_the_sandbox_rechecks_waiting_events_every_few_seconds_unless_told_otherwise(monkeypatch, tmp_path):
    from carbonhook.cli.bootstrap import settings_for

    monkeypatch.chdir(tmp_path)
    settings = settings_for(sandbox=True)
    assert (settings.wait_min_interval_s, settings.wait_max_interval_s) == (2, 5)
    monkeypatch.setenv("CARBONHOOK_WAIT_MAX_INTERVAL_S", "30")
    assert settings_for(sandbox=True).wait_max_interval_s == 30
    assert settings_for().wait_min_interval_s == 60


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


# -- named admins -----------------------------------------------------------------------------

ALICE = "alice-0123456789abcdef"
BOB = "bob-0123456789abcdef=="


def secrets_of(admins):
    return {name: token.get_secret_value() for name, token in admins.items()}


def test_named_admins_are_name_token_pairs_beside_the_admin_token_which_is_admin(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CARBONHOOK_ADMIN_TOKENS", f" alice={ALICE} , bob = {BOB},")
    assert secrets_of(load_settings().admins) == {"alice": ALICE, "bob": BOB}  # a token may hold `=`
    monkeypatch.setenv("CARBONHOOK_ADMIN_TOKEN", "x" * 16)
    settings = load_settings()
    assert secrets_of(settings.admins) == {"admin": "x" * 16, "alice": ALICE, "bob": BOB}
    for token in (ALICE, BOB, "x" * 16):
        assert token not in repr(settings) + str(settings.model_dump()) + settings.model_dump_json()
    assert "alice" in repr(settings)  # names are not secrets


def test_without_any_admin_token_there_are_no_admins(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert load_settings().admins == {}
    monkeypatch.setenv("CARBONHOOK_ADMIN_TOKENS", " , ")
    assert load_settings().admins == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("alice", "each admin is `name=token`"),
        (f"={ALICE}", "each admin is `name=token`"),
        (f"alice={ALICE},alice={BOB}", "the admin 'alice' is named twice"),
        (f"alice={ALICE},bob={ALICE}", "admins 'alice' and 'bob' have the same token"),
        (f"admin={ALICE}", "names 'admin', the admin of CARBONHOOK_ADMIN_TOKEN"),
        ("x" * 16 + "=" + ALICE, None),  # fine: a name may be any 1 to 64 of its characters
        ("alice=short-token", "admin 'alice': the token must be at least 16 characters"),
        (f"al ice={ALICE}", "'al ice' is not an admin name"),
        (f"{'a' * 65}={ALICE}", "is not an admin name"),
        (f"bob={'x' * 16}", "admins 'admin' and 'bob' have the same token"),
    ],
)
def test_malformed_named_admins_are_refused_naming_the_variable_never_a_token(monkeypatch, tmp_path, value, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CARBONHOOK_ADMIN_TOKEN", "x" * 16)
    monkeypatch.setenv("CARBONHOOK_ADMIN_TOKENS", value)
    if message is None:
        load_settings()
        return
    with pytest.raises(SettingsError, match=r"^CARBONHOOK_ADMIN_TOKENS: ") as caught:
        load_settings()
    assert message in str(caught.value)
    for token in (ALICE, BOB, "short-token"):
        assert token not in str(caught.value)


# -- what `serve`, `worker` and `run` refuse at start-up --------------------------------------

REAL = "9f86d081884c7d659a2feaa0c55ad015"


def production(**overrides):
    values = {"webhook_secrets": REAL, "admin_token": REAL, "carbonpass_api_key": "cp_live_abc", "impact_api_key": "live_abc"}
    values.update(overrides)
    return load_settings(_env_file=None, **values)


def test_real_secrets_and_https_apis_pass_the_production_check(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    production().check_production()
    production(carbonpass_api_url="http://127.0.0.1:8900/api/v1", impact_api_url="http://localhost:8900").check_production()
    production(impact_api_url="http://[::1]:8900").check_production()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("webhook_secrets", "change-me-webhook-secret"),
        ("webhook_secrets", f"{REAL},CHANGEME-0123456789abcdef"),
        ("webhook_secrets", "whsec_EXAMPLE_0123456789abcdef"),
        ("webhook_secrets", "your_webhook_secret_goes_here"),
        ("webhook_secrets", "0123456789abcde"),
        ("webhook_secrets", f"tiny-1,{REAL}"),
        ("admin_token", "change-me-admin-token"),
        ("admin_token", "an-example-admin-token"),
        ("carbonpass_api_key", "change-me-carbonpass-api-key"),
        ("impact_api_key", "your_api_key"),
    ],
)
def test_a_placeholder_or_short_secret_is_refused_naming_the_variable_not_the_value(monkeypatch, tmp_path, name, value):
    monkeypatch.chdir(tmp_path)
    settings = production(**{name: value})
    with pytest.raises(SettingsError, match=rf"^CARBONHOOK_{name.upper()}: .*openssl rand -hex 32") as caught:
        settings.check_production()
    for part in value.split(","):
        assert part not in str(caught.value)


@pytest.mark.parametrize("token", ["change-me-alice-token", "Your_Token_0123456789", "alice-example-token-1"])
def test_a_named_admins_placeholder_token_is_refused_naming_the_variable_and_the_admin(monkeypatch, tmp_path, token):
    monkeypatch.chdir(tmp_path)
    production(admin_tokens={"bob": BOB}).check_production()
    settings = production(admin_tokens=f"bob={BOB},alice={token}")
    with pytest.raises(
        SettingsError, match=r"^CARBONHOOK_ADMIN_TOKENS: the token of admin 'alice' holds a placeholder .*openssl rand -hex 32"
    ) as caught:
        settings.check_production()
    assert token not in str(caught.value) and BOB not in str(caught.value)


@pytest.mark.parametrize("name", ["carbonpass_api_url", "impact_api_url"])
def test_plain_http_off_this_host_is_refused_unless_allowed(monkeypatch, tmp_path, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match=rf"^CARBONHOOK_{name.upper()}: plain http://.*CARBONHOOK_ALLOW_INSECURE_APIS=1"):
        production(**{name: "http://api.internal:8080"}).check_production()
    with pytest.raises(SettingsError, match=rf"^CARBONHOOK_{name.upper()}: not an https:// URL"):
        production(**{name: "ftp://api.internal"}).check_production()
    monkeypatch.setenv("CARBONHOOK_ALLOW_INSECURE_APIS", "1")
    production(**{name: "http://api.internal:8080"}).check_production()


def test_urls_with_passwords_and_secrets_never_show_in_repr(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CARBONHOOK_DATABASE_URL", "postgresql://carbonhook:pg-Pa55word@db.internal:5432/carbonhook")
    monkeypatch.setenv("CARBONHOOK_BROKER_URL", "redis://:redis-Pa55word@redis.internal:6379/0")
    monkeypatch.setenv("CARBONHOOK_WEBHOOK_SECRETS", "whsec-Sup3rS3cret-0001")
    monkeypatch.setenv("CARBONHOOK_ADMIN_TOKEN", "admin-Sup3rS3cret-0002")
    monkeypatch.setenv("CARBONHOOK_CARBONPASS_API_KEY", "cp_live_Sup3rS3cret")
    monkeypatch.setenv("CARBONHOOK_IMPACT_API_KEY", "live_Sup3rS3cret")
    settings = load_settings()
    shown = repr(settings) + str(settings) + str(settings.model_dump()) + settings.model_dump_json()
    for secret in ("pg-Pa55word", "redis-Pa55word", "Sup3rS3cret"):
        assert secret not in shown
    # The rest of a URL still helps: which host, which database.
    assert "postgresql://carbonhook:***@db.internal:5432/carbonhook" in repr(settings)
    assert "redis://:***@redis.internal:6379/0" in repr(settings)
    assert settings.database_url.get_secret_value().endswith("pg-Pa55word@db.internal:5432/carbonhook")


@pytest.mark.parametrize("value", ["*", "10.0.0.0/8,*", "ingress"])
def test_forwarded_allow_ips_must_name_addresses(monkeypatch, tmp_path, value):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CARBONHOOK_FORWARDED_ALLOW_IPS", value)
    with pytest.raises(SettingsError, match=r"^CARBONHOOK_FORWARDED_ALLOW_IPS: "):
        load_settings()
    monkeypatch.setenv("CARBONHOOK_FORWARDED_ALLOW_IPS", "10.244.0.0/16, 127.0.0.1")
    assert load_settings().forwarded_allow_ips == "10.244.0.0/16,127.0.0.1"


def test_notification_settings_are_read_and_their_secrets_hidden(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CARBONHOOK_NOTIFY_URL", "https://hooks.slack.com/services/T1/B2/key-one , https://chat.example.com/hooks/key-two")
    monkeypatch.setenv("CARBONHOOK_SMTP_URL", "smtps://ops:mail-pass-77@smtp.example.com:465")
    monkeypatch.setenv("CARBONHOOK_NOTIFY_EMAIL", "oncall@example.com, esg@example.com")
    monkeypatch.setenv("CARBONHOOK_PUBLIC_URL", "https://carbonhook.example.com/")
    monkeypatch.setenv("CARBONHOOK_NOTIFY_DIGEST", "08:30")
    settings = load_settings()
    assert [url.get_secret_value() for url in settings.notify_url][1] == "https://chat.example.com/hooks/key-two"
    assert settings.notify_email == ("oncall@example.com", "esg@example.com")
    assert (settings.public_url, settings.notify_digest) == ("https://carbonhook.example.com", "08:30")
    for secret in ("key-one", "key-two", "mail-pass-77"):
        assert secret not in repr(settings)
        assert secret in settings.secret_values or secret in "".join(settings.secret_values)


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("CARBONHOOK_NOTIFY_DIGEST", "24:00", "is not a UTC time HH:MM"),
        ("CARBONHOOK_NOTIFY_DIGEST", "true", "is not a UTC time HH:MM"),
        ("CARBONHOOK_SMTP_URL", "http://ops:pw-x@mail.example.com", "is not smtp://host"),
        ("CARBONHOOK_NOTIFY_EMAIL", "oncall", "is not an e-mail address"),
        ("CARBONHOOK_PUBLIC_URL", "carbonhook.example.com", "is not an http:// or https:// URL"),
        ("CARBONHOOK_NOTIFY_URL", "hooks.slack.com/services/key-three", "must be http:// or https://"),
    ],
)
def test_a_malformed_notification_setting_is_named_without_its_secret(monkeypatch, tmp_path, name, value, said):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value).startswith(f"{name}:") and said in str(caught.value)
    assert "pw-x" not in str(caught.value) and "key-three" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CARBONHOOK_SMTP_URL", "smtps://ops:pw-y@smtp.example.com:465"),
        ("CARBONHOOK_NOTIFY_EMAIL", "oncall@example.com"),
    ],
)
def test_mail_settings_one_without_the_other_is_refused_naming_both(monkeypatch, tmp_path, name, value):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    said = str(caught.value)
    assert "CARBONHOOK_SMTP_URL and CARBONHOOK_NOTIFY_EMAIL go together" in said
    assert "pw-y" not in said


@pytest.mark.parametrize(
    ("value", "rate"),
    [("5", (5.0, 10)), (" 5/20 ", (5.0, 20)), ("0.5/1", (0.5, 1)), ("0.2", (0.2, 1)), ("0", None), ("off", None), ("OFF", None)],
)
def test_a_rate_is_requests_a_second_with_a_burst_of_twice_that_unless_named(value, rate):
    from carbonhook.rates import parse_rate

    assert parse_rate(value) == rate


def test_both_apis_default_to_five_requests_a_second(monkeypatch, tmp_path):
    from carbonhook.rates import Rate, parse_rate

    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert parse_rate(settings.carbonpass_rate) == parse_rate(settings.impact_rate) == Rate(5.0, 10)
    assert settings.rate_limit_url is None


@pytest.mark.parametrize("value", ["fast", "-1", "5/0", "0.0/3", "5/2.5", "5/", "1e3"])
def test_a_malformed_rate_is_refused_naming_the_variable(monkeypatch, tmp_path, value):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CARBONHOOK_IMPACT_RATE", value)
    with pytest.raises(SettingsError, match=r"CARBONHOOK_IMPACT_RATE: .*rate"):
        load_settings()


def test_the_rate_limit_url_must_be_a_redis_one(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CARBONHOOK_RATE_LIMIT_URL", "amqp://guest:hunter2pass@rabbit/")
    with pytest.raises(SettingsError, match="CARBONHOOK_RATE_LIMIT_URL: must be a redis://") as raised:
        load_settings()
    assert "hunter2pass" not in str(raised.value)
    monkeypatch.setenv("CARBONHOOK_RATE_LIMIT_URL", "redis://:hunter2pass@redis:6379/2")
    assert "hunter2pass" not in repr(load_settings())
