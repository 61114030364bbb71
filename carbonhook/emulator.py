"""An emulator of the CarbonPass and 1ClickImpact APIs, with fault injection, for sandbox and tests.

Shapes follow the providers' documents as docs/providers.md summarises them: CarbonPass lives under
`/api/v1`, 1ClickImpact at the root, and `/_emulator` is an unauthenticated control API.
Nothing is built at import: call `create_emulator_app()` or `serve_emulator()`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any, TypeGuard

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

DEMO_CARBONPASS_KEY = "cp_live_sandbox"
DEMO_IMPACT_KEY = "test_sandbox"

USER_ID = "U123"
MAX_AMOUNT = 10_000_000
MAX_LIMIT = 1000
HOLD_LIMIT_S = 600.0
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
FAULT_MODES = frozenset({"status", "drop", "hold"})
RESERVED_METADATA_KEYS = frozenset({"gift", "widgetID"})
CRP_ID = re.compile(r"crp_[A-Za-z0-9_-]{1,64}")
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
SCOPES = ("scope1", "scope2", "scope3")

# The examples of the CarbonPass document (seed 003), as the emulator starts.
SEED_COMPANY: dict[str, Any] = {
    "id": "comp_8xK2mNpQ",
    "name": "Acme Industries Ltd",
    "sector": "Manufacturing",
    "city": "Birmingham",
    "employeeCount": 42,
    "planName": "business",
    "currentEmissions": {
        "reportingPeriod": "2025-26",
        "totalTco2e": 526.5,
        "scope1": 124.8,
        "scope2": 312.5,
        "scope3": 89.2,
    },
    "passportUrl": "https://carbonpass.co/company/acme-industries",
    "passportActivated": True,
}
SEED_SITE: dict[str, Any] = {
    "id": "site_3rZ1",
    "name": "Birmingham Warehouse",
    "city": "Birmingham",
    "employeeCount": 28,
}
SEED_SESSION = {"id": "sess_aB12", "createdAt": "2026-03-15"}
CRP_SECTIONS = (
    "organisationDetails",
    "baselineEmissions",
    "currentEmissions",
    "reductionTargets",
    "reductionProjects",
    "environmentalMeasures",
    "declaration",
)

Clock = Callable[[], datetime]
Endpoint = Callable[[Request], Awaitable[Response]]


class InvalidRequest(ValueError):
    """A request the emulated API refuses, with the status and message to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ConnectionDropped(Exception):
    """Raised mid-response (fault mode "drop") so the server aborts the connection."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime, timespec: str = "seconds") -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec=timespec) + "Z"


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


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


@dataclass
class Fault:
    """An injected failure for the next `times` calls to `endpoint` ("*" matches all)."""

    endpoint: str
    mode: str = "status"
    status: int = 500
    retry_after: float | None = None
    times: int = 1


class EmulatorState:
    """Everything both emulated APIs know, plus the calls answered and the faults pending."""

    def __init__(self, *, clock: Clock = _utc_now) -> None:
        self.clock = clock
        self.company: dict[str, Any] = copy.deepcopy(SEED_COMPANY)
        self.sites: dict[str, dict[str, Any]] = {SEED_SITE["id"]: dict(SEED_SITE)}
        self.sessions: dict[str, dict[str, str]] = {SEED_SITE["id"]: dict(SEED_SESSION)}
        self.site_emissions: dict[str, dict[str, Any]] = {}
        self.crps: dict[str, dict[str, Any]] = {}
        self.missing_crps: set[str] = set()
        self.bills: list[dict[str, Any]] = []
        self.records_include_metadata = True
        self.latency_ms = 0.0
        self.impacts: list[Impact] = []
        self.calls: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self._customer_ids: dict[str, str] = {}
        self._last_time: datetime | None = None
        self._held: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.set_site_emissions(SEED_SITE["id"], 172.0, 42.1, 108.3, 21.6)
        self.set_crp("crp_5tN8xBmQ", generatedAt="2026-04-06T14:35:48Z")

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
            "generatedAt": _iso(self.clock()),
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
            "createdAt": _iso(self.clock()),
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
        return _iso(now, "milliseconds")

    def cancel_impact(self, user_id: str, time_utc: str) -> Impact | None:
        """Remove and return the impact `(user_id, time_utc)` names, or None."""
        for impact in self.impacts:
            if (impact.user_id, impact.time_utc) == (user_id, time_utc):
                self.impacts.remove(impact)
                return impact
        return None

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
        if status is not None and (not _is_int(status) or not 100 <= status <= 599):
            raise ValueError("status must be an HTTP status code")
        if retry_after is not None and (not _is_number(retry_after) or retry_after < 0):
            raise ValueError("retry_after must be a non-negative number")
        if not _is_int(times) or times < 1:
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
        loop, event = asyncio.get_running_loop(), asyncio.Event()
        self._held.append((loop, event))
        try:
            await asyncio.wait_for(event.wait(), HOLD_LIMIT_S)
        except TimeoutError:
            pass
        finally:
            self._held.remove((loop, event))

    @property
    def held(self) -> int:
        """How many answers are being held right now."""
        return len(self._held)

    def release(self) -> int:
        """Let every held answer go (safe from any thread); returns how many were held."""
        held = list(self._held)  # the loop's thread may be removing entries meanwhile
        for loop, event in held:
            loop.call_soon_threadsafe(event.set)
        return len(held)

    def reset(self) -> None:
        """Forget impacts, bills, calls, faults and latency, and release held answers."""
        self.release()
        for log in (self.impacts, self.bills, self.calls, self.faults):
            log.clear()
        self._customer_ids.clear()
        self.latency_ms = 0.0


# Parsing 1ClickImpact requests: each helper raises InvalidRequest naming the field at fault.


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidRequest("request body must be valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def impact_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """Check a create call's body; the keyword arguments of `EmulatorState.record_impact`."""
    amount, notify = body.get("amount"), body.get("notify", True)
    email, name = body.get("customer_email"), body.get("customer_name")
    if not _is_int(amount) or not 1 <= amount <= MAX_AMOUNT:
        raise InvalidRequest(f"amount must be an integer between 1 and {MAX_AMOUNT}")
    if email is not None and not (isinstance(email, str) and EMAIL.fullmatch(email)):
        raise InvalidRequest("customer_email must be a valid email address")
    if name is not None and (not isinstance(name, str) or email is None):
        raise InvalidRequest("customer_name must be a string and requires customer_email")
    if not isinstance(notify, bool):
        raise InvalidRequest("notify must be a boolean")
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 20):
        raise InvalidRequest("metadata must be an object of at most 20 pairs")
    for key, value in (metadata or {}).items():
        if key in RESERVED_METADATA_KEYS or not 1 <= len(key) <= 40:
            raise InvalidRequest(f"metadata key {key!r} is reserved or not 1 to 40 characters")
        if not isinstance(value, str) or len(value) > 500:
            raise InvalidRequest(
                f"metadata value for {key!r} must be a string of at most 500 chars"
            )
    return {
        "amount": amount,
        "customer_email": email,
        "customer_name": name,
        "metadata": metadata,
        "notify": notify,
    }


def _day(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        if DAY.fullmatch(value):
            return date.fromisoformat(value).isoformat()
    except ValueError:
        pass
    raise InvalidRequest(f"{name} must be a date in the format yyyy-mm-dd")


def _cursor_after(query: Mapping[str, str]) -> str | None:
    if (cursor := query.get("cursor")) is None:
        return None
    try:
        decoded = base64.urlsafe_b64decode(cursor.encode()).decode()
    except (binascii.Error, UnicodeError):
        decoded = ""
    if not decoded.startswith("after:"):
        raise InvalidRequest("cursor is invalid")
    return decoded.removeprefix("after:")


def records_page(
    state: EmulatorState, query: Mapping[str, str], *, customers: bool
) -> dict[str, Any]:
    """One page of `/v1/records`, or of `/v1/customer_records` when `customers`."""
    amount_key, limit = query.get("filter_by"), query.get("limit", "10")
    if amount_key is not None and amount_key not in IMPACT_KINDS.values():
        raise InvalidRequest(f"filter_by must be one of {', '.join(IMPACT_KINDS.values())}")
    if not limit.isdigit() or int(limit) > MAX_LIMIT:
        raise InvalidRequest(f"limit must be an integer between 0 and {MAX_LIMIT}")
    start, end, after = _day(query, "start_date"), _day(query, "end_date"), _cursor_after(query)
    email = query.get("customer_email") if customers else None

    def wanted(impact: Impact) -> bool:
        day = impact.time_utc[:10]
        return (
            (impact.customer_email is not None) == customers  # the API lists these apart
            and (email is None or impact.customer_email == email)
            and (amount_key is None or IMPACT_KINDS[impact.kind] == amount_key)
            and (start is None or day >= start)
            and (end is None or day <= end)
            and (after is None or impact.time_utc > after)
        )

    matching = [impact for impact in state.impacts if wanted(impact)]
    page = matching[: int(limit)]
    items = [impact.answer(include_metadata=state.records_include_metadata) for impact in page]
    answer: dict[str, Any] = {"customer_records" if customers else "user_records": items}
    if page and len(matching) > len(page):
        answer["cursor"] = base64.urlsafe_b64encode(f"after:{page[-1].time_utc}".encode()).decode()
    return answer


def _carbonpass_error(status: int, message: str) -> Response:
    codes = {400: "bad_request", 401: "unauthorized", 404: "not_found", 429: "rate_limited"}
    error = codes.get(status, "server_error" if status >= 500 else "error")
    return JSONResponse({"error": error, "message": message, "status": status}, status)


def _impact_error(status: int, message: str) -> Response:
    types = {401: "key_error", 400: "invalid_request_error", 404: "invalid_request_error"}
    return JSONResponse({"type": types.get(status, "api_error"), "message": message}, status)


class _DroppedResponse(Response):
    """Starts `answer` (status, headers, Content-Length), then aborts before the body."""

    def __init__(self, answer: Response) -> None:
        super().__init__(status_code=answer.status_code)
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.answer.status_code}
        await send({**start, "headers": self.answer.raw_headers})
        raise ConnectionDropped("fault injected: connection dropped mid-response")


class _Emulator:
    """The HTTP face of an `EmulatorState`: both providers' endpoints and the control API."""

    def __init__(self, state: EmulatorState, carbonpass_key: str, impact_key: str) -> None:
        self.state = state
        self.carbonpass_auth = ("authorization", f"Bearer {carbonpass_key}")
        self.impact_auth = ("x-api-key", impact_key)

    def routes(self) -> list[Route]:
        carbonpass = partial(self.api, self.carbonpass_auth, _carbonpass_error)
        impact = partial(self.api, self.impact_auth, _impact_error)
        control = self.control
        return [
            Route("/api/v1/company", carbonpass("company", self.company)),
            Route("/api/v1/emissions", carbonpass("emissions", self.emissions)),
            Route("/api/v1/crp/{crp_id}", carbonpass("crp", self.crp)),
            Route("/api/v1/bills", carbonpass("bills", self.bills), methods=["POST"]),
            *(
                Route(f"/v1/{kind}", impact(kind, partial(self.create, kind)), methods=["POST"])
                for kind in IMPACT_KINDS
            ),
            Route("/v1/records", impact("records", partial(self.records, customers=False))),
            Route(
                "/v1/customer_records",
                impact("customer_records", partial(self.records, customers=True)),
            ),
            Route("/v1/cancel_impact", impact("cancel_impact", self.cancel), methods=["POST"]),
            Route("/_emulator/faults", control(self.add_fault), methods=["POST"]),
            Route("/_emulator/release", control(self.release), methods=["POST"]),
            Route("/_emulator/latency", control(self.set_latency), methods=["POST"]),
            Route("/_emulator/impacts", control(self.impacts)),
            Route("/_emulator/calls", control(self.calls)),
            Route("/_emulator/reset", control(self.reset), methods=["POST"]),
            Route("/_emulator/crp/{crp_id}", control(self.change_crp), methods=["PUT", "DELETE"]),
            Route("/_emulator/emissions/{site_id}", control(self.put_emissions), methods=["PUT"]),
        ]

    def api(
        self,
        auth: tuple[str, str],
        error: Callable[[int, str], Response],
        name: str,
        handler: Endpoint,
    ) -> Endpoint:
        """Wrap a provider endpoint with latency, auth, faults and the call log."""
        state, (header, expected) = self.state, auth

        async def endpoint(request: Request) -> Response:
            arrived = time.time()

            def logged(response: Response, status: int | None) -> Response:
                state.calls.append({"endpoint": name, "at": arrived, "status": status})
                return response

            if state.latency_ms:
                await asyncio.sleep(state.latency_ms / 1000)
            if request.headers.get(header) != expected:
                return logged(error(401, "Missing or invalid API key."), 401)
            fault = state.take_fault(name)
            if fault is not None and fault.mode == "status":
                response = error(fault.status, f"fault injected: {name} answers {fault.status}")
                if fault.retry_after is not None:
                    response.headers["Retry-After"] = f"{fault.retry_after:g}"
                return logged(response, fault.status)
            try:
                response = await handler(request)
            except InvalidRequest as exc:
                response = error(exc.status, exc.message)
            if fault is not None and fault.mode == "hold":
                await state.hold()
            if fault is not None and fault.mode == "drop":
                return logged(_DroppedResponse(response), None)
            return logged(response, response.status_code)

        return endpoint

    def control(self, handler: Endpoint) -> Endpoint:
        """Wrap a control endpoint so a malformed request answers 400 with the reason."""
        # Tests drive this API: a typo in a fault or a fixture should say what it was, not 500.

        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except (ValueError, TypeError, KeyError) as exc:
                return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, 400)

        return endpoint

    # CarbonPass

    async def company(self, request: Request) -> Response:
        return JSONResponse({"data": self.state.company_data()})

    async def emissions(self, request: Request) -> Response:
        site_id = request.query_params.get("siteId")
        if (data := self.state.emissions_data(site_id)) is None:
            raise InvalidRequest(f"Site {site_id!r} not found.", 404)
        return JSONResponse({"data": data})

    async def crp(self, request: Request) -> Response:
        if (crp := self.state.crp_data(request.path_params["crp_id"])) is None:
            raise InvalidRequest("CRP not found.", 404)
        return JSONResponse({"data": crp})

    async def bills(self, request: Request) -> Response:
        async with request.form() as form:
            kind, upload, site_id = form.get("type"), form.get("file"), form.get("siteId")
            if not isinstance(kind, str) or not kind:
                raise InvalidRequest('Missing required field "type" in bill upload.')
            if not isinstance(upload, UploadFile):
                raise InvalidRequest('Missing required field "file" in bill upload.')
        bill = self.state.add_bill(kind, site_id if isinstance(site_id, str) else None)
        return JSONResponse({"data": bill})

    # 1ClickImpact

    async def create(self, kind: str, request: Request) -> Response:
        fields = impact_fields(await _json_object(request))
        return JSONResponse(self.state.record_impact(kind, **fields).answer())

    async def records(self, request: Request, *, customers: bool) -> Response:
        return JSONResponse(records_page(self.state, request.query_params, customers=customers))

    async def cancel(self, request: Request) -> Response:
        body = await _json_object(request)
        user_id, time_utc = body.get("user_id"), body.get("time_utc")
        if not isinstance(user_id, str) or not isinstance(time_utc, str):
            raise InvalidRequest("user_id and time_utc must be strings")
        if self.state.cancel_impact(user_id, time_utc) is None:
            raise InvalidRequest("no impact has this user_id and time_utc", 404)
        return JSONResponse({"user_id": user_id, "time_utc": time_utc, "cancelled": True})

    # Control

    async def add_fault(self, request: Request) -> Response:
        body = await _json_object(request)
        fault = self.state.add_fault(
            body.get("endpoint", ""),
            mode=body.get("mode", "status"),
            status=body.get("status"),
            retry_after=body.get("retry_after"),
            times=body.get("times", 1),
        )
        return JSONResponse(asdict(fault), 201)

    async def release(self, request: Request) -> Response:
        return JSONResponse({"released": self.state.release()})

    async def set_latency(self, request: Request) -> Response:
        self.state.latency_ms = max(0.0, float((await _json_object(request)).get("ms", 0)))
        return JSONResponse({"ms": self.state.latency_ms})

    async def impacts(self, request: Request) -> Response:
        return JSONResponse([asdict(impact) for impact in self.state.impacts])

    async def calls(self, request: Request) -> Response:
        return JSONResponse(list(self.state.calls))

    async def reset(self, request: Request) -> Response:
        self.state.reset()
        return Response(status_code=204)

    async def change_crp(self, request: Request) -> Response:
        crp_id = request.path_params["crp_id"]
        if request.method == "DELETE":
            self.state.remove_crp(crp_id)
            return Response(status_code=204)
        self.state.set_crp(crp_id, **await _json_object(request))
        return JSONResponse(self.state.crps[crp_id])

    async def put_emissions(self, request: Request) -> Response:
        body, site_id = await _json_object(request), request.path_params["site_id"]
        scope1, scope2, scope3 = (float(body[scope]) for scope in SCOPES)
        period = str(body.get("reportingPeriod", "2025-26"))
        self.state.set_site_emissions(
            site_id, float(body["total"]), scope1, scope2, scope3, reporting_period=period
        )
        return JSONResponse(self.state.emissions_data(site_id))


def create_emulator_app(
    state: EmulatorState | None = None,
    *,
    carbonpass_key: str = DEMO_CARBONPASS_KEY,
    impact_key: str = DEMO_IMPACT_KEY,
) -> Starlette:
    """Build the emulator around `state` (a fresh one by default), accepting the given keys."""
    state = state if state is not None else EmulatorState()
    app = Starlette(routes=_Emulator(state, carbonpass_key, impact_key).routes())
    app.state.emulator = state
    return app


def serve_emulator(host: str, port: int) -> None:
    """Run a fresh emulator with uvicorn until interrupted (`carbonhook emulate`)."""
    app = create_emulator_app()
    uvicorn.run(app, host=host, port=port, log_level="warning", ws="none")
