"""The unauthenticated control API under `/_emulator`, which tests and the bench drive."""

from __future__ import annotations

from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from carbonhook.emulator.errors import InvalidRequest
from carbonhook.emulator.formats import is_number
from carbonhook.emulator.impact import json_object
from carbonhook.emulator.profile import DEFAULT_LATE_FINISH_S, named_profile, with_overrides
from carbonhook.emulator.state import SCOPES, EmulatorState


class ControlApi:
    """The profile, faults, latency, held answers, what was made, cancelled and called, and
    CarbonPass fixtures."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    async def profile(self, request: Request) -> Response:
        """GET shows the profile; POST `{"name": preset, field: value, ...}` sets it.

        Without a name, the fields given change the current profile.
        """
        if request.method == "POST":
            overrides = await json_object(request)
            name = overrides.pop("name", None)
            self.state.profile = (
                with_overrides(self.state.profile, **overrides)
                if name is None
                else named_profile(name, **overrides)
            )
        return JSONResponse(asdict(self.state.profile))

    async def add_fault(self, request: Request) -> Response:
        body = await json_object(request)
        fault = self.state.add_fault(
            body.get("endpoint", ""),
            mode=body.get("mode", "status"),
            status=body.get("status"),
            retry_after=body.get("retry_after"),
            times=body.get("times", 1),
            delay_s=body.get("delay_s", DEFAULT_LATE_FINISH_S),
        )
        return JSONResponse(asdict(fault), 201)

    async def release(self, request: Request) -> Response:
        return JSONResponse({"released": self.state.release()})

    async def set_latency(self, request: Request) -> Response:
        self.state.latency_ms = max(0.0, float((await json_object(request)).get("ms", 0)))
        return JSONResponse({"ms": self.state.latency_ms})

    async def impacts(self, request: Request) -> Response:
        return JSONResponse([asdict(impact) for impact in self.state.impacts])

    async def cancelled(self, request: Request) -> Response:
        return JSONResponse(
            [
                asdict(cancellation.impact)
                | {"cancelled_on": cancellation.cancelled_on, "reason": cancellation.reason}
                for cancellation in self.state.cancelled
            ]
        )

    async def calls(self, request: Request) -> Response:
        return JSONResponse(list(self.state.calls))

    async def reset(self, request: Request) -> Response:
        self.state.reset()
        return Response(status_code=204)

    async def drafts(self, request: Request) -> Response:
        """GET shows, POST `{"publish_after_s": seconds or null}` sets whether a CRP first seen
        is a draft published that long after (null: published at once)."""
        if request.method == "POST":
            body = await json_object(request)
            after = body.get("publish_after_s")
            if after is not None and (not is_number(after) or after < 0):
                raise InvalidRequest("publish_after_s must be a non-negative number or null")
            self.state.publish_drafts_after_s = None if after is None else float(after)
        return JSONResponse({"publish_after_s": self.state.publish_drafts_after_s})

    async def change_crp(self, request: Request) -> Response:
        crp_id = request.path_params["crp_id"]
        if request.method == "DELETE":
            self.state.remove_crp(crp_id)
            return Response(status_code=204)
        self.state.set_crp(crp_id, **await json_object(request))
        return JSONResponse(self.state.crps[crp_id])

    async def put_emissions(self, request: Request) -> Response:
        body, site_id = await json_object(request), request.path_params["site_id"]
        scope1, scope2, scope3 = (float(body[scope]) for scope in SCOPES)
        period = str(body.get("reportingPeriod", "2025-26"))
        self.state.set_site_emissions(
            site_id, float(body["total"]), scope1, scope2, scope3, reporting_period=period
        )
        return JSONResponse(self.state.emissions_data(site_id))

    async def grow_emissions(self, request: Request) -> Response:
        """POST `{"tco2e": n, "scope": "scope2"}`: the site's emissions grow by n tonnes."""
        body, site_id = await json_object(request), request.path_params["site_id"]
        scope = str(body.get("scope", "scope2"))
        self.state.grow_site_emissions(site_id, float(body["tco2e"]), scope)
        return JSONResponse(self.state.emissions_data(site_id))
