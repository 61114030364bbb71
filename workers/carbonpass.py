"""The CarbonPass API client: the CRP, the company and its emissions (read only)."""

from __future__ import annotations

from typing import Any

import httpx

from carbonhook.errors import PermanentError, RetryableError
from carbonhook.event_types import SUBJECT_ID
from workers.http import Api, send
from workers.rate_limit import RateLimit

SITE_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


class CarbonPassClient:
    """`GET /crp/{id}`, `/company`, `/emissions`; responses unwrapped from `{"data": …}`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        rate_limit: RateLimit | None = None,
    ) -> None:
        self.http = Api(
            "carbonpass",
            base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout_s=timeout_s,
            transport=transport,
            rate_limit=rate_limit,
        )

    def close(self) -> None:
        self.http.close()

    def crp(self, crp_id: str) -> dict[str, Any]:
        if not SUBJECT_ID.fullmatch(crp_id) or not crp_id.startswith("crp_"):
            raise PermanentError(f"refusing to fetch a CRP with a malformed id: {crp_id!r}")
        return self._get(f"/crp/{crp_id}", what=f"GET /crp/{crp_id}", endpoint="crp")

    def company(self) -> dict[str, Any]:
        return self._get("/company", what="GET /company", endpoint="company")

    def emissions(self, site_id: str | None = None) -> dict[str, Any]:
        params: dict[str, str] = {}
        if site_id is not None:
            if not site_id or len(site_id) > 64 or set(site_id) - set(SITE_ID_CHARS):
                raise PermanentError(f"refusing to query a malformed siteId: {site_id!r}")
            params["siteId"] = site_id
        return self._get("/emissions", what="GET /emissions", endpoint="emissions", params=params)

    def _get(
        self, path: str, *, what: str, endpoint: str, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        response = send(
            self.http, "GET", path, params=params, what=what, side_effect=False, endpoint=endpoint
        )
        return decipher_data(response, what=what)


def decipher_data(response: httpx.Response, *, what: str) -> dict[str, Any]:
    """The object a 2xx answer wraps in `{"data": …}` (pure); anything else may pass later."""
    try:
        body = response.json()
    except ValueError:
        raise RetryableError(f"{what}: answer is not JSON", status=response.status_code) from None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise RetryableError(f"{what}: answer has no 'data' object", status=response.status_code)
    return data
