"""What both emulated APIs know: CarbonPass's data, the impacts made, the calls and the faults."""

from __future__ import annotations

import asyncio
import copy
import random
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from carbonhook.emulator.errors import InvalidRequest
from carbonhook.emulator.faults import (
    HOLD_LIMIT_S,
    RANDOM_FAILURE_MODES,
    Fault,
    Gate,
    checked_fault,
)
from carbonhook.emulator.formats import iso, utc_now
from carbonhook.emulator.profile import DEFAULT_LATE_FINISH_S, KIND, Profile
from carbonhook.emulator.records import IMPACT_KINDS, Cancellation, Impact
from carbonhook.emulator.seeds import (
    CRP_SECTIONS,
    SEED_COMPANY,
    SEED_CRP_GENERATED_AT,
    SEED_CRP_ID,
    SEED_SESSION,
    SEED_SITE,
    SEED_SITE_EMISSIONS,
)

CRP_ID = re.compile(r"crp_[A-Za-z0-9_-]{1,64}")
SCOPES = ("scope1", "scope2", "scope3")

Clock = Callable[[], datetime]
T = TypeVar("T")


class EmulatorState:
    """Everything both emulated APIs know, plus the calls answered and the faults pending."""

    def __init__(
        self,
        *,
        clock: Clock = utc_now,
        profile: Profile = KIND,
        publish_drafts_after_s: float | None = None,
    ) -> None:
        self.clock = clock
        self.profile = profile  # also seeds the random failures
        # CarbonPass sends `crp.generated` for a draft and no event when it is published: with
        # this set, a CRP first seen is a draft, published this long after (by `clock`).
        self.publish_drafts_after_s = publish_drafts_after_s
        self._publish_at: dict[str, datetime] = {}
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
        self._late = Gate()
        self._late_tasks: set[asyncio.Task[Any]] = set()  # referenced until done
        self._generation = 0  # moves on at each reset, so late work from before is dropped
        self.set_site_emissions(SEED_SITE["id"], *SEED_SITE_EMISSIONS)
        self.set_crp(SEED_CRP_ID, generatedAt=SEED_CRP_GENERATED_AT)

    @property
    def profile(self) -> Profile:
        """How kind the emulated 1ClickImpact is; setting it restarts the random failures."""
        return self._profile

    @profile.setter
    def profile(self, profile: Profile) -> None:
        self._profile = profile
        self._random = random.Random(profile.seed)

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

    def grow_site_emissions(self, site_id: str, tco2e: float, scope: str = "scope2") -> None:
        """Add `tco2e` to a known site's emissions (to `scope` and the total), as a confirmed
        bill would: KeyError for a site with no emissions."""
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
        row = self.site_emissions[site_id]
        row[scope] = round(row[scope] + tco2e, 6)
        row["total"] = round(row["total"] + tco2e, 6)

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
        if "status" in fields:  # told what it is: no publication planned any more
            self._publish_at.pop(crp_id, None)

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
            self._generate_crp(crp_id)
        publish_at = self._publish_at.get(crp_id)
        if publish_at is not None and self.clock() >= publish_at:
            self.set_crp(crp_id, status="published")
        return self.crps[crp_id]

    def _generate_crp(self, crp_id: str) -> None:
        """A new CRP: published, or a draft published later (`publish_drafts_after_s`)."""
        if self.publish_drafts_after_s is None:
            self.set_crp(crp_id)
            return
        self.set_crp(crp_id, status="draft")
        later = timedelta(seconds=self.publish_drafts_after_s)
        self._publish_at[crp_id] = self.clock() + later

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
        delay_s: float = DEFAULT_LATE_FINISH_S,
    ) -> Fault:
        """Make the next `times` calls to `endpoint` fail; ValueError if the fault is malformed."""
        fault = checked_fault(
            endpoint,
            mode=mode,
            status=status,
            retry_after=retry_after,
            times=times,
            delay_s=delay_s,
        )
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

    def draw_failure(self, endpoint: str) -> Fault | None:
        """A fault for this call to `endpoint` if it is a create drawn to fail at random."""
        rate = self.profile.random_failure_rate
        if endpoint not in IMPACT_KINDS or not rate or self._random.random() >= rate:
            return None
        mode = self._random.choice(RANDOM_FAILURE_MODES)
        return Fault(endpoint, mode, delay_s=self.profile.late_finish_s)

    async def finish_late(self, delay_s: float, work: Callable[[], Awaitable[T]]) -> T | None:
        """Do `work` after `delay_s` (or at `release()`), whether or not the caller waits.

        The work runs in a task of its own, so it is done even if the request is cancelled
        when the client goes. None if the state was reset meanwhile (the work is dropped).
        """
        generation = self._generation

        async def later() -> T | None:
            await self._late.wait(delay_s)
            return await work() if generation == self._generation else None

        task = asyncio.create_task(later())
        self._late_tasks.add(task)
        task.add_done_callback(self._late_tasks.discard)
        return await asyncio.shield(task)

    @property
    def late(self) -> int:
        """How many calls are waiting to finish late right now."""
        return len(self._late)

    async def hold(self) -> None:
        """Wait until `release()` is called, or `HOLD_LIMIT_S` at most."""
        await self._holds.wait(HOLD_LIMIT_S)

    @property
    def held(self) -> int:
        """How many answers are being held right now."""
        return len(self._holds)

    def release(self) -> int:
        """Let every held answer go, and late calls finish now (safe from any thread).

        Returns how many calls were waiting.
        """
        return self._holds.release() + self._late.release()

    def reset(self) -> None:
        """Forget impacts, bills, calls, faults and latency, release held answers, and drop the
        work of late calls. The profile stays, its random failures start again.
        """
        self._generation += 1
        self.release()
        self._random = random.Random(self.profile.seed)
        for log in (self.impacts, self.cancelled, self.bills, self.calls, self.faults):
            log.clear()
        self._customer_ids.clear()
        self.latency_ms = 0.0
