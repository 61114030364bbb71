"""The emulator as one Starlette app: both providers' routes, their faults, and the control API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from carbonhook.emulator.carbonpass import CarbonPassApi, carbonpass_error
from carbonhook.emulator.control import ControlApi
from carbonhook.emulator.errors import InvalidRequest
from carbonhook.emulator.faults import DroppedResponse, ResetResponse
from carbonhook.emulator.impact import ImpactApi, impact_error
from carbonhook.emulator.profile import KIND, Profile
from carbonhook.emulator.records import IMPACT_KINDS
from carbonhook.emulator.seeds import DEMO_CARBONPASS_KEY, DEMO_IMPACT_KEY
from carbonhook.emulator.state import EmulatorState

Endpoint = Callable[[Request], Awaitable[Response]]


class _Emulator:
    """The HTTP face of an `EmulatorState`: both providers' endpoints and the control API."""

    def __init__(self, state: EmulatorState, carbonpass_key: str, impact_key: str) -> None:
        self.state = state
        self.carbonpass_auth = ("authorization", f"Bearer {carbonpass_key}")
        self.impact_auth = ("x-api-key", impact_key)

    def routes(self) -> list[Route]:
        carbonpass = partial(self.api, self.carbonpass_auth, carbonpass_error)
        impact = partial(self.api, self.impact_auth, impact_error)
        cp, one, ctl = CarbonPassApi(self.state), ImpactApi(self.state), ControlApi(self.state)
        control = self.control
        return [
            Route("/api/v1/company", carbonpass("company", cp.company)),
            Route("/api/v1/emissions", carbonpass("emissions", cp.emissions)),
            Route("/api/v1/crp/{crp_id}", carbonpass("crp", cp.crp)),
            Route("/api/v1/bills", carbonpass("bills", cp.bills), methods=["POST"]),
            *(
                Route(f"/v1/{kind}", impact(kind, partial(one.create, kind)), methods=["POST"])
                for kind in IMPACT_KINDS
            ),
            Route("/v1/records", impact("records", partial(one.records, customers=False))),
            Route(
                "/v1/customer_records",
                impact("customer_records", partial(one.records, customers=True)),
            ),
            Route("/v1/cancel_impact", impact("cancel_impact", one.cancel), methods=["POST"]),
            Route("/_emulator/profile", control(ctl.profile), methods=["GET", "POST"]),
            Route("/_emulator/faults", control(ctl.add_fault), methods=["POST"]),
            Route("/_emulator/release", control(ctl.release), methods=["POST"]),
            Route("/_emulator/latency", control(ctl.set_latency), methods=["POST"]),
            Route("/_emulator/impacts", control(ctl.impacts)),
            Route("/_emulator/cancelled", control(ctl.cancelled)),
            Route("/_emulator/calls", control(ctl.calls)),
            Route("/_emulator/reset", control(ctl.reset), methods=["POST"]),
            Route("/_emulator/crp/{crp_id}", control(ctl.change_crp), methods=["PUT", "DELETE"]),
            Route("/_emulator/drafts", control(ctl.drafts), methods=["GET", "POST"]),
            Route("/_emulator/emissions/{site_id}", control(ctl.put_emissions), methods=["PUT"]),
            Route(
                "/_emulator/emissions/{site_id}/grow",
                control(ctl.grow_emissions),
                methods=["POST"],
            ),
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

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except InvalidRequest as exc:
                return error(exc.status, exc.message)

        async def endpoint(request: Request) -> Response:
            arrived = time.time()

            def logged(response: Response, status: int | None) -> Response:
                state.calls.append({"endpoint": name, "at": arrived, "status": status})
                return response

            if state.latency_ms:
                await asyncio.sleep(state.latency_ms / 1000)
            if request.headers.get(header) != expected:
                return logged(error(401, "Missing or invalid API key."), 401)
            fault = state.take_fault(name) or state.draw_failure(name)
            if fault is None:
                response = await answer(request)
                return logged(response, response.status_code)
            if fault.mode == "status":
                response = error(fault.status, f"fault injected: {name} answers {fault.status}")
                if fault.retry_after is not None:
                    response.headers["Retry-After"] = f"{fault.retry_after:g}"
                return logged(response, fault.status)
            if fault.mode == "reset_before":
                return logged(ResetResponse(), None)
            if fault.mode == "late_finish":
                await request.body()  # read while the caller is there; the handler reads it again
                late = await state.finish_late(fault.delay_s, partial(answer, request))
                response = late or error(503, "emulator reset before this call finished")
            else:
                response = await answer(request)
            if fault.mode == "hold":
                await state.hold()
            if fault.mode == "drop":
                return logged(DroppedResponse(response), None)
            if fault.mode == "reset_after":
                return logged(ResetResponse(), None)
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


def serve_emulator(
    host: str, port: int, *, profile: Profile = KIND, publish_drafts_after_s: float | None = None
) -> None:
    """Run a fresh emulator with uvicorn until interrupted (`carbonhook emulate`)."""
    state = EmulatorState(profile=profile, publish_drafts_after_s=publish_drafts_after_s)
    app = create_emulator_app(state)
    uvicorn.run(app, host=host, port=port, log_level="warning", ws="none")
