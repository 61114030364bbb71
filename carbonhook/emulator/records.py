"""1ClickImpact's records: an impact and its cancellation, as the API answers and lists them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from carbonhook.emulator.profile import Profile
from carbonhook.emulator.seeds import USER_ID

# Each create endpoint answers, and its records are listed, under its own amount key.
IMPACT_KINDS = {
    "capture_carbon": "carbon_captured",
    "plant_tree": "tree_planted",
    "clean_ocean": "waste_removed",
}


@dataclass
class Impact:
    """One impact made through a 1ClickImpact create call; `(user_id, time_utc)` identifies it."""

    kind: str  # the create endpoint: capture_carbon, plant_tree or clean_ocean
    amount: int
    time_utc: str
    customer_email: str | None = None
    customer_name: str | None = None
    customer_id: str | None = None
    metadata: dict[str, str] | None = None
    notify: bool = True
    user_id: str = USER_ID

    def answer(self, *, include_metadata: bool = False) -> dict[str, Any]:
        """The create call's answer, which is also how records list the impact."""
        item: dict[str, Any] = {"user_id": self.user_id, IMPACT_KINDS[self.kind]: self.amount}
        if self.customer_email is not None:
            item["customer"] = {
                "customer_id": self.customer_id,
                "customer_email": self.customer_email,
            }
            if self.customer_name is not None:
                item["customer"]["customer_name"] = self.customer_name
        item["time_utc"] = self.time_utc
        if include_metadata and self.metadata is not None:
            item["metadata"] = dict(self.metadata)
        return item

    def record(self, profile: Profile) -> dict[str, Any]:
        """How the listings show the impact under `profile`."""
        item = self.answer(include_metadata=profile.records_metadata)
        if profile.lowercase_emails and "customer" in item:
            item["customer"]["customer_email"] = item["customer"]["customer_email"].lower()
        return item


@dataclass
class Cancellation:
    """An impact reversed by `POST /v1/cancel_impact`; a repeat answers the same."""

    impact: Impact
    cancelled_on: str
    reason: str | None = None

    def answer(self) -> dict[str, Any]:
        """The cancel call's answer, the same however often it is repeated."""
        return {
            "user_id": self.impact.user_id,
            "time_utc": self.impact.time_utc,
            IMPACT_KINDS[self.impact.kind]: self.impact.amount,
            "cancelled_on": self.cancelled_on,
            "message": "Impact cancelled.",
        }
