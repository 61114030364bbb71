"""Settings: read once from the environment (and `.env`), typed, secrets wrapped."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from carbonhook.errors import SettingsError
from carbonhook.rates import parse_rate

ENV_PREFIX = "CARBONHOOK_"
# The admin token is a bearer password for replays and approvals, which spend money: refuse one
# short enough to guess (the lockout slows guessing per address, not per token).
ADMIN_TOKEN_MIN_CHARS = 16
# What `serve`, `worker` and `run` refuse at start-up (`Settings.check_production`): a webhook
# secret or admin token this short, or one that still holds an example file's placeholder (anyone
# who read the repository could then sign deliveries that spend money).
SECRET_MIN_CHARS = 16
PLACEHOLDER_MARKS = ("change-me", "changeme", "example", "your_")
MAKE_ONE = "make a real one with `openssl rand -hex 32`"
# Who did a replay or a decision: an admin's name in CARBONHOOK_ADMIN_TOKENS, the OS user of a
# command (or its `--as`). Kept in the audit columns (64 wide); `=` and `,` separate the setting.
ADMIN_NAME = re.compile(r"[\w.@+$-]{1,64}")
DEFAULT_ADMIN = "admin"  # the name of CARBONHOOK_ADMIN_TOKEN's admin
# When the daily digest is written (CARBONHOOK_NOTIFY_DIGEST), UTC.
EMAIL_ADDRESS = re.compile(r"[^@\s,]+@[^@\s,]+\.[^@\s,]+")
DIGEST_TIME = re.compile(r"([01]\d|2[0-3]):[0-5]\d")


class SecretUrl(SecretStr):
    """A URL that may hold a password (database, broker): shown with the password masked."""

    def _display(self) -> str:
        return mask_password(self.get_secret_value())


def mask_password(url: str) -> str:
    """`url` with its password (if any) replaced by `***`."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "**********"
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class Settings(BaseSettings):
    """Every `CARBONHOOK_*` variable the service reads."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True
    )

    database_url: SecretUrl = SecretUrl("sqlite:///carbonhook.db")
    broker_url: SecretUrl = SecretUrl("memory://")
    webhook_secrets: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    carbonpass_api_url: str = "https://carbonpass.co/api/v1"
    carbonpass_api_key: SecretStr | None = None
    impact_api_url: str = "https://api.1clickimpact.com"
    impact_api_key: SecretStr | None = None
    allow_insecure_apis: bool = False
    rules_file: Path = Path("rules.toml")
    admin_token: SecretStr | None = None
    admin_tokens: Annotated[dict[str, SecretStr] | None, NoDecode] = None

    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    body_timeout_s: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=200, gt=0)
    forwarded_allow_ips: str | None = None
    metrics_port: int | None = Field(default=None, gt=0, lt=65536)
    http_timeout_s: float = Field(default=10.0, gt=0)
    max_retries: int = Field(default=10, ge=0)
    retry_min_backoff_s: float = Field(default=15.0, ge=0)
    retry_max_backoff_s: float = Field(default=3600.0, ge=0)
    lease_s: float = Field(default=300.0, gt=0)
    sweep_interval_s: float = Field(default=30.0, gt=0)
    reconcile_after_s: float = Field(default=60.0, ge=0)
    not_found_grace_s: float = Field(default=900.0, ge=0)
    # A waiting event (a rule's `wait_until`) is re-checked after as long as it has waited,
    # within these bounds: 1 min, 2, 4, … then every 4 hours.
    wait_min_interval_s: float = Field(default=60.0, gt=0)
    wait_max_interval_s: float = Field(default=14400.0, gt=0)
    audit_interval_s: float = Field(default=300.0, gt=0)
    catch_up_interval_s: float | None = Field(default=None, gt=0)  # unset: no catch-up
    db_pool_size: int = Field(default=10, gt=0)
    intake_pool_size: int = Field(default=32, gt=0)
    worker_threads: int = Field(default=8, gt=0)
    notify_url: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    smtp_url: SecretUrl | None = None
    notify_email: Annotated[tuple[str, ...], NoDecode] = ()
    public_url: str | None = None
    notify_digest: str | None = None
    carbonpass_rate: str = "5"
    impact_rate: str = "5"
    rate_limit_url: SecretUrl | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("webhook_secrets", "notify_url", "notify_email", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("notify_url")
    @classmethod
    def _web_urls(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for url in value:
            parts = urlsplit(url.get_secret_value())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                # The URL itself is a secret (a Slack webhook's path is its key): not shown.
                raise ValueError("each URL must be http:// or https:// with a host")
        return value

    @field_validator("notify_email")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            if not EMAIL_ADDRESS.fullmatch(address):
                raise ValueError(f"{address[:100]!r} is not an e-mail address")
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: SecretUrl | None) -> SecretUrl | None:
        if value is None or not value.get_secret_value().strip():
            return None
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(
                f"{mask_password(value.get_secret_value())!r} is not smtp://host[:port] or "
                "smtps://host[:port] (user and password in it if the server wants them)"
            )
        return value

    @model_validator(mode="after")
    def _mail_wired_whole(self) -> Settings:
        # One without the other would send no e-mail and say nothing: an operator who set one
        # expects mail.
        if (self.smtp_url is None) != (not self.notify_email):
            raise ValueError(
                f"{ENV_PREFIX}SMTP_URL and {ENV_PREFIX}NOTIFY_EMAIL go together: notifications "
                "are mailed only with both set (the server, and who gets them)"
            )
        return self

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value[:100]!r} is not an http:// or https:// URL")
        return value.strip().rstrip("/")

    @field_validator("notify_digest")
    @classmethod
    def _digest_time(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not DIGEST_TIME.fullmatch(value.strip()):
            raise ValueError(f"{value[:20]!r} is not a UTC time HH:MM (00:00 to 23:59)")
        return value.strip()

    @field_validator("admin_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < ADMIN_TOKEN_MIN_CHARS:
            raise ValueError(
                f"must be at least {ADMIN_TOKEN_MIN_CHARS} characters (e.g. `openssl rand -hex 32`)"
            )
        return value

    @field_validator("admin_tokens", mode="before")
    @classmethod
    def _split_admins(cls, value: object) -> object:
        """`name=token,name=token` (a token may hold `=`, never `,`); each name once."""
        if not isinstance(value, str):
            return value
        admins: dict[str, str] = {}
        for pair in value.split(","):
            if not pair.strip():
                continue
            name, sep, token = pair.strip().partition("=")
            name = name.strip()
            if not sep or not name:
                raise ValueError("each admin is `name=token`, comma-separated")
            if name in admins:
                raise ValueError(f"the admin {name!r} is named twice")
            admins[name] = token.strip()
        return admins

    @field_validator("admin_tokens")
    @classmethod
    def _named_admins(
        cls, value: dict[str, SecretStr] | None, info: ValidationInfo
    ) -> dict[str, SecretStr] | None:
        if not value:
            return None
        tokens = dict(value)
        single = info.data.get("admin_token")
        for name, token in tokens.items():
            if not ADMIN_NAME.fullmatch(name):
                raise ValueError(
                    f"{name[:64]!r} is not an admin name (1 to 64 letters, digits or ._@+$-)"
                )
            if len(token.get_secret_value().strip()) < ADMIN_TOKEN_MIN_CHARS:
                raise ValueError(
                    f"admin {name!r}: the token must be at least {ADMIN_TOKEN_MIN_CHARS} "
                    "characters (e.g. `openssl rand -hex 32`)"
                )
        if single is not None:
            if DEFAULT_ADMIN in tokens:
                raise ValueError(
                    f"names {DEFAULT_ADMIN!r}, the admin of {ENV_PREFIX}ADMIN_TOKEN: "
                    "set one of the two"
                )
            tokens = {DEFAULT_ADMIN: single, **tokens}
        # A token says who its bearer is: two admins with one token would be one admin.
        seen: dict[str, str] = {}
        for name, token in tokens.items():
            other = seen.setdefault(token.get_secret_value().strip(), name)
            if other != name:
                raise ValueError(f"admins {other!r} and {name!r} have the same token")
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _networks(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        for item in value.split(","):
            if item.strip() == "*":
                raise ValueError("`*` trusts every client: list the proxies' addresses or CIDRs")
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{item.strip()!r} is not an IP address or CIDR") from None
        return ",".join(item.strip() for item in value.split(","))

    @field_validator("carbonpass_rate", "impact_rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)
        return value.strip()

    @field_validator("rate_limit_url")
    @classmethod
    def _redis_url(cls, value: SecretUrl | None) -> SecretUrl | None:
        if value is not None and not value.get_secret_value().startswith(("redis://", "rediss://")):
            raise ValueError("must be a redis:// or rediss:// URL")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def require(self, *names: str) -> None:
        """Raise `SettingsError` naming the first of `names` that is unset."""
        for name in names:
            value = getattr(self, name)
            if value is None or value == () or value == "":
                raise SettingsError(f"{ENV_PREFIX}{name.upper()} is required but not set")

    def check_production(self) -> None:
        """Raise `SettingsError` naming the variable when a secret is a placeholder or too short,
        or an API is reached over plain HTTP off this host; `serve`, `worker` and `run` call it
        at start-up (the sandbox does not: its demo secret is public on purpose)."""
        for secret in self.webhook_secrets:
            _check_secret("webhook_secrets", secret, min_chars=SECRET_MIN_CHARS)
        if self.admin_token is not None:
            _check_secret("admin_token", self.admin_token, min_chars=ADMIN_TOKEN_MIN_CHARS)
        for name, token in (self.admin_tokens or {}).items():
            _check_secret(
                "admin_tokens", token, min_chars=ADMIN_TOKEN_MIN_CHARS, which=f"admin {name!r}"
            )
        for name in ("carbonpass_api_key", "impact_api_key"):
            key = getattr(self, name)
            if key is not None:
                _check_secret(name, key, min_chars=1)
        for name in ("carbonpass_api_url", "impact_api_url"):
            _check_api_url(name, getattr(self, name), allow_http=self.allow_insecure_apis)

    @property
    def secret_bytes(self) -> tuple[bytes, ...]:
        return tuple(s.get_secret_value().encode() for s in self.webhook_secrets)

    @property
    def secret_values(self) -> tuple[str, ...]:
        """Every secret the settings hold, for what must never show one (notifications)."""
        found = [s.get_secret_value() for s in self.webhook_secrets]
        found += [s.get_secret_value() for s in self.admins.values()]
        found += [s.get_secret_value() for s in self.notify_url]
        if self.smtp_url is not None:
            password = urlsplit(self.smtp_url.get_secret_value()).password
            found += [password] if password else []
        for key in (self.carbonpass_api_key, self.impact_api_key):
            if key is not None:
                found.append(key.get_secret_value())
        return tuple(value for value in found if value)

    @property
    def admins(self) -> dict[str, SecretStr]:
        """Every admin's token by name: CARBONHOOK_ADMIN_TOKEN's is `admin`'s; empty when
        the admin API and pages are off."""
        single = {DEFAULT_ADMIN: self.admin_token} if self.admin_token is not None else {}
        return {**single, **(self.admin_tokens or {})}


def _variable(name: str) -> str:
    return f"{ENV_PREFIX}{name.upper()}"


def placeholder_mark(value: str) -> str | None:
    """The placeholder an example file put in `value`, if it still holds one."""
    lowered = value.lower()
    return next((mark for mark in PLACEHOLDER_MARKS if mark in lowered), None)


def _check_secret(
    name: str, secret: SecretStr, *, min_chars: int, which: str | None = None
) -> None:
    value = secret.get_secret_value().strip()
    variable = _variable(name)
    mark = placeholder_mark(value)
    if mark is not None:
        whose = f" the token of {which}" if which else ""
        raise SettingsError(f"{variable}:{whose} holds a placeholder ({mark!r}); {MAKE_ONE}")
    if len(value) < min_chars:
        what = f"the token of {which}" if which else "a secret"
        raise SettingsError(
            f"{variable}: {what} is shorter than {min_chars} characters; {MAKE_ONE}"
        )


def _check_api_url(name: str, url: str, *, allow_http: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme != "http" or not parts.hostname:
        raise SettingsError(f"{_variable(name)}: not an https:// URL: {mask_password(url)!r}")
    if not (allow_http or _is_loopback(parts.hostname)):
        raise SettingsError(
            f"{_variable(name)}: plain http:// off this host sends the API key in clear; "
            f"use https:// (or set {ENV_PREFIX}ALLOW_INSECURE_APIS=1 for a test API)"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(**overrides: object) -> Settings:
    """Read the settings once; a malformed value becomes a one-line `SettingsError`."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = f"{ENV_PREFIX}{str(first['loc'][0]).upper()}" if first["loc"] else "settings"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"{name}: {message}") from None
