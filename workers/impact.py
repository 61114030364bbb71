"""The 1ClickImpact API client: create impacts, read records. The service talks HTTP itself
(the official SDK has no timeouts and hides status codes)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import httpx

from carbonhook.actions import ACTIONS, Action
from carbonhook.captures import Impact
from carbonhook.errors import AmbiguousError
from workers.http import Api, send

MAX_AMOUNT = 10_000_000
RECORDS_PAGE = 1000


class ImpactClient:
    """`POST /v1/<action>`, `GET /v1/records`, `GET /v1/customer_records`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.http = Api(
            "impact",
            base_url,
            headers={"x-api-key": api_key},
            timeout_s=timeout_s,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def create(
        self,
        action: str,
        amount: int,
        *,
        customer_email: str | None = None,
        customer_name: str | None = None,
        notify: bool = True,
        metadata: dict[str, str] | None = None,
    ) -> Impact:
        """Create one impact. Raises `AmbiguousError` when it may or may not have happened."""
        spec = ACTIONS[Action(action)]
        path = spec.path
        body: dict[str, Any] = {"amount": amount}
        if customer_email:
            body["customer_email"] = customer_email
            if customer_name:
                body["customer_name"] = customer_name
        if not notify:
            body["notify"] = False
        if metadata:
            body["metadata"] = metadata
        response = send(
            self.http,
            "POST",
            path,
            json=body,
            what=f"POST {path}",
            side_effect=True,
            endpoint=action,
        )
        return decipher_created(response, spec.amount_key, what=f"POST {path}")

    def records(
        self,
        action: str,
        *,
        customers: bool,
        since: date,
        customer_email: str | None = None,
        newest_first: bool = False,
    ) -> Iterator[Impact]:
        """Every record of `action` since `since`, following the cursor."""
        key = ACTIONS[Action(action)].amount_key
        path = "/v1/customer_records" if customers else "/v1/records"
        params: dict[str, Any] = {
            "filter_by": key,
            "start_date": since.isoformat(),
            "limit": RECORDS_PAGE,
            "sort_order": "desc" if newest_first else "asc",
        }
        if customers and customer_email:
            params["customer_email"] = customer_email
        while True:
            response = send(
                self.http,
                "GET",
                path,
                params=params,
                what=f"GET {path}",
                side_effect=False,
                endpoint=path.rsplit("/", 1)[1],
            )
            page = response.json()
            items = page.get("customer_records" if customers else "user_records") or []
            for item in items:
                if isinstance(item, dict) and key in item:
                    yield _impact(item, key)
            cursor = page.get("cursor")
            if not cursor or not items:
                return
            params["cursor"] = cursor


def decipher_created(response: httpx.Response, key: str, *, what: str) -> Impact:
    """The impact a 2xx create answer says was made (pure). A 2xx we cannot read most likely
    did the work: `AmbiguousError`, and reconciliation decides."""
    try:
        return _impact(response.json(), key)
    except (ValueError, KeyError, TypeError):
        raise AmbiguousError(f"{what}: unreadable answer", status=response.status_code) from None


def _impact(answer: dict[str, Any], key: str) -> Impact:
    customer = answer.get("customer") or {}
    metadata = answer.get("metadata")
    return Impact(
        user_id=str(answer["user_id"]),
        time_utc=str(answer["time_utc"]),
        amount=int(answer[key]),
        customer_id=customer.get("customer_id"),
        customer_email=customer.get("customer_email"),
        metadata=metadata if isinstance(metadata, dict) else None,
    )
