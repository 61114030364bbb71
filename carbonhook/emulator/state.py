"""What both emulated APIs know: CarbonPass's data, the impacts made, the calls and the faults."""

from __future__ import annotations

import copy
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from carbonhook.emulator.errors import InvalidRequest
from carbonhook.emulator.faults import FAULT_MODES, HOLD_LIMIT_S, Fault, Gate
from carbonhook.emulator.formats import is_int, is_number, iso, utc_now
from carbonhook.emulator.profile import KIND, Profile
from carbonhook.emulator.seeds import (
    CRP_SECTIONS,
    SEED_COMPANY,
    SEED_CRP_GENERATED_AT,
    SEED_CRP_ID,
    SEED_SESSION,
    SEED_SITE,
    SEED_SITE_EMISSIONS,
    USER_ID,
)

# Each create endpoint answers, and its records are listed, under its own amount key.
IMPACT_KINDS = {
    "capture_carbon": "carbon_captured",
    "plant_tree": "tree_planted",
    "clean_ocean": "waste_removed",
}
# Endpoint names, as faults and the call log know them ("*" matches every endpoint).
IMPACT_ENDPOINTS = (*IMPACT_KINDS, "records", "customer_records", "cancel_impact")
CARBONPASS_ENDPOINTS = ("company", "emissions", "crp", "bills")
FAULT_ENDPOINTS = frozenset({*IMPACT_ENDPOINTS, *CARBONPASS_ENDPOINTS, "*"})
CRP_ID = re.compile(r"crp_[A-Za-z0-9_-]{1,64}")
SCOPES = ("scope1", "scope2", "scope3")

Clock = Callable[[], datetime]


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


class EmulatorState:
    """Everything both emulated APIs know, plus the calls answered and the faults pending."""

    def __init__(self, *, clock: Clock = utc_now, profile: Profile = KIND) -> None:
        self.clock = clock
        self.profile = profile
        self.company: dict[str, Any] = copy.deepcopy(SEED_COMPANY)
        self.sites: dict[str, dict[str, Any]] = {SEED_SITE["id"]: dict(SEED_SITE)}
        self.sessions: dict[str, dict[str, str]] = {SEED_SITE["id"]: dict(SEED_SESSION)}
        self.site_emissions: dict[str, dict[str, Any]] = {}
        self.crps: dict[str, dict[str, Any]] = {}
        self.missing_crps: set[str] = set()
        self.bills: list[dict[str, Any]] = []
        self.latency_ms = 0.0
        self.impacts: list[Impact] = []  # the impacts that stand: made and not cancelled
        self.cancelled: list[Cancellation] = []
        self.calls: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self._customer_ids: dict[str, str] = {}
        self._last_time: datetime | None = None
        self._holds = Gate()
        self.set_site_emissions(SEED_SITE["id"], *SEED_SITE_EMISSIONS)
        self.set_crp(SEED_CRP_ID, generatedAt=SEED_CRP_GENERATED_AT)

    @property
    def records_include_metadata(self) -> bool:
        """Whether the listings echo `metadata` (the profile's `records_metadata`)."""
        return self.profile.records_metadata

    @records_include_metadata.setter
    def records_include_metadata(self, value: bool) -> None:
        self.profile = replace(self.profile, records_metadata=value)

    # CarbonPass data

    def set_site_emissions(
        self,
        site_id: str,
        total: float,
        scope1: float,
        scope2: float,
        scope3: float,
        reporting_period: str = "2025-26",
    ) -> None:
        """Store a site's emissions, adding the site (and a session for it) if new."""
        self.sites.setdefault(
            site_id, {"id": site_id, "name": site_id, "city": "", "employeeCount": 0}
        )
        today = self.clock().date().isoformat()
        self.sessions.setdefault(
            site_id, {"id": f"sess_{secrets.token_hex(4)}", "createdAt": today}
        )
        totals = {"total": total, "scope1": scope1, "scope2": scope2, "scope3": scope3}
        self.site_emissions[site_id] = {"reportingPeriod": reporting_period} | {
            key: float(value) for key, value in totals.items()
        }

    def emissions_data(self, site_id: str | None = None) -> dict[str, Any] | None:
        """The `/emissions` data for one site, or totalled over all; None for an unknown site."""
        if site_id is not None and site_id not in self.site_emissions:
            return None
        site_ids = [site_id] if site_id is not None else list(self.site_emissions)
        rows = [self.site_emissions[sid] for sid in site_ids]
        totals = {key: round(sum(row[key] for row in rows), 2) for key in ("total", *SCOPES)}
        employees = self.company["employeeCount"]
        sessions = [
            {
                "id": self.sessions[sid]["id"],
                "siteId": sid,
                "siteName": self.sites[sid]["name"],
                "totalTco2e": self.site_emissions[sid]["total"],
                "createdAt": self.sessions[sid]["createdAt"],
            }
            for sid in site_ids
        ]
        return {
            "reportingPeriod": max((row["reportingPeriod"] for row in rows), default=""),
            "totalTco2e": totals["total"],
            **{scope: {"total": totals[scope], "breakdown": None} for scope in SCOPES},
            "perEmployee": round(totals["total"] / employees, 1) if employees else 0.0,
            "sessions": sessions,
        }

    def set_crp(self, crp_id: str, **fields: Any) -> None:
        """Create or update a CRP: published with every section, unless `fields` say otherwise."""
        crp = self.crps.get(crp_id) or {
            "id": crp_id,
            "status": "published",
            "fyYear": "2026",
            "targetYear": "2050",
            "generatedAt": iso(self.clock()),
            "sections": dict.fromkeys(CRP_SECTIONS, True),
        }
        self.crps[crp_id] = {**crp, **fields, "id": crp_id}
        self.missing_crps.discard(crp_id)

    def remove_crp(self, crp_id: str) -> None:
        """Make `GET /crp/{crp_id}` answer 404 from now on."""
        self.crps.pop(crp_id, None)
        self.missing_crps.add(crp_id)

    def company_data(self) -> dict[str, Any]:
        """The `/company` data: the company with its sites."""
        return {**self.company, "sites": list(self.sites.values())}

    def crp_data(self, crp_id: str) -> dict[str, Any] | None:
        """A CRP by id; a well-formed unknown id is created on first sight so random ids work."""
        if crp_id in self.missing_crps or not CRP_ID.fullmatch(crp_id):
            return None
        if crp_id not in self.crps:
            self.set_crp(crp_id)
        return self.crps[crp_id]

    def add_bill(self, kind: str, site_id: str | None) -> dict[str, Any]:
        """Record an uploaded bill against its site's session (the first site by default)."""
        site_id = site_id or next(iter(self.sites))
        if site_id not in self.sessions:
            raise InvalidRequest(f"Site {site_id!r} not found.", 404)
        bill = {
            "id": f"bill_{secrets.token_hex(4)}",
            "status": "uploaded",
            "type": kind,
            "sessionId": self.sessions[site_id]["id"],
            "siteId": site_id,
            "createdAt": iso(self.clock()),
        }
        self.bills.append(bill)
        return bill

    # 1ClickImpact data

    def record_impact(
        self,
        kind: str,
        amount: int,
        *,
        customer_email: str | None = None,
        customer_name: str | None = None,
        metadata: dict[str, str] | None = None,
        notify: bool = True,
    ) -> Impact:
        """Store a new impact stamped with a strictly increasing `time_utc`."""
        customer_id = None
        if customer_email is not None:
            fresh_id = f"U{10000 + len(self._customer_ids)}"
            customer_id = self._customer_ids.setdefault(customer_email, fresh_id)
        stamp = self._next_time()
        impact = Impact(
            kind, amount, stamp, customer_email, customer_name, customer_id, metadata, notify
        )
        self.impacts.append(impact)
        return impact

    def _next_time(self) -> str:
        now = self.clock().astimezone(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if self._last_time is not None and now <= self._last_time:
            now = self._last_time + timedelta(milliseconds=1)
        self._last_time = now
        return iso(now, "milliseconds")

    def cancel_impact(
        self, user_id: str, time_utc: str, reason: str | None = None
    ) -> Cancellation | None:
        """Cancel the impact `(user_id, time_utc)` names, once; None if it never existed."""
        for cancellation in self.cancelled:
            if (cancellation.impact.user_id, cancellation.impact.time_utc) == (user_id, time_utc):
                return cancellation
        for impact in self.impacts:
            if (impact.user_id, impact.time_utc) == (user_id, time_utc):
                self.impacts.remove(impact)
                cancellation = Cancellation(impact, iso(self.clock(), "milliseconds"), reason)
                self.cancelled.append(cancellation)
                return cancellation
        return None

    def listed(self) -> list[Impact]:
        """The impacts the listings show now under the profile, oldest first."""
        shown = list(self.impacts)
        if self.profile.cancelled_listed and self.cancelled:
            shown += [cancellation.impact for cancellation in self.cancelled]
            shown.sort(key=lambda impact: impact.time_utc)
        if self.profile.records_lag_s:
            # time_utc strings in one format sort as the times do.
            lag = timedelta(seconds=self.profile.records_lag_s)
            newest = iso(self.clock() - lag, "milliseconds")
            shown = [impact for impact in shown if impact.time_utc <= newest]
        return shown

    # Faults and observation

    def add_fault(
        self,
        endpoint: str,
        *,
        mode: str = "status",
        status: int | None = None,
        retry_after: float | None = None,
        times: int = 1,
    ) -> Fault:
        """Make the next `times` calls to `endpoint` fail; ValueError if the fault is malformed."""
        if endpoint not in FAULT_ENDPOINTS or mode not in FAULT_MODES:
            raise ValueError(
                f"endpoint must be in {sorted(FAULT_ENDPOINTS)}, mode in {sorted(FAULT_MODES)}"
            )
        if status is not None and (not is_int(status) or not 100 <= status <= 599):
            raise ValueError("status must be an HTTP status code")
        if retry_after is not None and (not is_number(retry_after) or retry_after < 0):
            raise ValueError("retry_after must be a non-negative number")
        if not is_int(times) or times < 1:
            raise ValueError("times must be a positive integer")
        fault = Fault(endpoint, mode, status or 500, retry_after, times)
        self.faults.append(fault)
        return fault

    def take_fault(self, endpoint: str) -> Fault | None:
        """Use up one turn of the first fault matching `endpoint`."""
        for fault in self.faults:
            if fault.endpoint in (endpoint, "*"):
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    async def hold(self) -> None:
        """Wait until `release()` is called, or `HOLD_LIMIT_S` at most."""
        await self._holds.wait(HOLD_LIMIT_S)

    @property
    def held(self) -> int:
        """How many answers are being held right now."""
        return len(self._holds)

    def release(self) -> int:
        """Let every held answer go (safe from any thread); returns how many were held."""
        return self._holds.release()

    def reset(self) -> None:
        """Forget impacts, bills, calls, faults and latency, and release held answers.

        The profile stays.
        """
        self.release()
        for log in (self.impacts, self.cancelled, self.bills, self.calls, self.faults):
            log.clear()
        self._customer_ids.clear()
        self.latency_ms = 0.0
