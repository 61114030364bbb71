"""Settings: read once from the environment (and `.env`), typed, secrets wrapped."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from carbonhook.errors import SettingsError

ENV_PREFIX = "CARBONHOOK_"
# The admin token is a bearer password for replays and approvals, which spend money: refuse one
# short enough to guess (the lockout slows guessing per address, not per token).
ADMIN_TOKEN_MIN_CHARS = 16


class Settings(BaseSettings):
    """Every `CARBONHOOK_*` variable the service reads."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True
    )

    database_url: str = "sqlite:///carbonhook.db"
    broker_url: str = "memory://"
    webhook_secrets: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    carbonpass_api_url: str = "https://carbonpass.co/api/v1"
    carbonpass_api_key: SecretStr | None = None
    impact_api_url: str = "https://api.1clickimpact.com"
    impact_api_key: SecretStr | None = None
    rules_file: Path = Path("rules.toml")
    admin_token: SecretStr | None = None

    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    http_timeout_s: float = Field(default=10.0, gt=0)
    max_retries: int = Field(default=10, ge=0)
    retry_min_backoff_s: float = Field(default=15.0, ge=0)
    retry_max_backoff_s: float = Field(default=3600.0, ge=0)
    lease_s: float = Field(default=300.0, gt=0)
    sweep_interval_s: float = Field(default=30.0, gt=0)
    reconcile_after_s: float = Field(default=60.0, ge=0)
    audit_interval_s: float = Field(default=300.0, gt=0)
    db_pool_size: int = Field(default=10, gt=0)
    intake_pool_size: int = Field(default=32, gt=0)
    worker_threads: int = Field(default=8, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("admin_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < ADMIN_TOKEN_MIN_CHARS:
            raise ValueError(
                f"must be at least {ADMIN_TOKEN_MIN_CHARS} characters "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
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

    @property
    def secret_bytes(self) -> tuple[bytes, ...]:
        return tuple(s.get_secret_value().encode() for s in self.webhook_secrets)


def load_settings(**overrides: object) -> Settings:
    """Read the settings once; a malformed value becomes a one-line `SettingsError`."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = f"{ENV_PREFIX}{str(first['loc'][0]).upper()}" if first["loc"] else "settings"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"{name}: {message}") from None
