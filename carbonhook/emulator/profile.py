"""How kind the emulated 1ClickImpact is where its documents leave the behaviour open.

docs/providers.md ("Where the documents are silent") lists what could go either way. `kind` is
the emulator as it always was, the kind way everywhere; `strict` goes the unkind way everywhere
at once, because real money moves on the real API. Each field can also be set alone.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from carbonhook.emulator.formats import is_int, is_number

DEFAULT_LATE_FINISH_S = 30.0


@dataclass(frozen=True)
class Profile:
    """The behaviours the documents leave open, as this emulator plays them."""

    name: str = "kind"  # the preset the other fields started from
    # A new impact shows in /v1/records and /v1/customer_records only this long after it was made.
    records_lag_s: float = 0.0
    # Whether the listings echo an impact's `metadata` (the create answer never does).
    records_metadata: bool = True
    # Whether the listings show `customer_email` lower-cased (and filter on it so).
    lowercase_emails: bool = False
    # Whether a cancelled impact still shows in the listings.
    cancelled_listed: bool = False
    # The chance that a create call fails at random: 500 unrecorded, reset, or a late finish.
    random_failure_rate: float = 0.0
    # How long a create that fails at random by finishing late waits before it records.
    late_finish_s: float = DEFAULT_LATE_FINISH_S
    # Seeds the random failures, so that a run can be repeated.
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("records_lag_s", "late_finish_s", "random_failure_rate"):
            value = getattr(self, name)
            if not is_number(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative number")
            object.__setattr__(self, name, float(value))
        if self.random_failure_rate > 1:
            raise ValueError("random_failure_rate must be between 0 and 1")
        for name in ("records_metadata", "lowercase_emails", "cancelled_listed"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a boolean")
        if not is_int(self.seed):
            raise ValueError("seed must be an integer")


KIND = Profile()
STRICT = Profile(
    name="strict",
    records_lag_s=3.0,
    records_metadata=False,
    lowercase_emails=True,
    cancelled_listed=True,
)
PROFILES = {"kind": KIND, "strict": STRICT}
PROFILE_FIELDS = tuple(field.name for field in fields(Profile))


def named_profile(name: str, **overrides: Any) -> Profile:
    """The preset `name` with some fields overridden; ValueError naming a bad field."""
    if name not in PROFILES:
        raise ValueError(f"name must be one of {sorted(PROFILES)}")
    return with_overrides(PROFILES[name], **overrides)


def with_overrides(profile: Profile, **overrides: Any) -> Profile:
    """`profile` with some fields changed (not its name); ValueError naming a bad field."""
    settable = PROFILE_FIELDS[1:]  # every field but the name
    if unknown := sorted(set(overrides) - set(settable)):
        raise ValueError(f"unknown profile field {unknown[0]!r}; fields are {', '.join(settable)}")
    return replace(profile, **overrides)
