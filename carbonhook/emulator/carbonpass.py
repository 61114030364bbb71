"""CarbonPass's endpoints under `/api/v1`: the company, emissions, CRPs, and bill uploads."""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from carbonhook.emulator.errors import InvalidRequest
from carbonhook.emulator.state import EmulatorState


def carbonpass_error(status: int, message: str) -> Response:
    """CarbonPass's error body: `{"error", "message", "status"}`."""
    codes = {400: "bad_request", 401: "unauthorized", 404: "not_found", 429: "rate_limited"}
    error = codes.get(status, "server_error" if status >= 500 else "error")
    return JSONResponse({"error": error, "message": message, "status": status}, status)


class CarbonPassApi:
    """The CarbonPass endpoints over an `EmulatorState`; every answer wraps `{"data": …}`."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

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
