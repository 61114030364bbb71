"""The 1ClickImpact API client: create impacts, read records. The service talks HTTP itself
(the official SDK has no timeouts and hides status codes)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import date
from typing import Any

import httpx

from carbonhook.actions import ACTIONS, Action
from carbonhook.captures import Impact
from carbonhook.errors import AmbiguousError, RetryableError
from workers.http import Api, send
from workers.rate_limit import RateLimit

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
        rate_limit: RateLimit | None = None,
    ) -> None:
        self.http = Api(
            "impact",
            base_url,
            headers={"x-api-key": api_key},
            timeout_s=timeout_s,
            transport=transport,
            rate_limit=rate_limit,
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
        action: str | None,
        *,
        customers: bool,
        since: date,
        customer_email: str | None = None,
        newest_first: bool = False,
    ) -> Iterator[Impact]:
        """Every record of `action` (None: of every action) since `since`, page by page."""
        path = "/v1/customer_records" if customers else "/v1/records"
        params: dict[str, Any] = {
            "start_date": since.isoformat(),
            "limit": RECORDS_PAGE,
            "sort_order": "desc" if newest_first else "asc",
        }
        if action is not None:
            params["filter_by"] = ACTIONS[Action(action)].amount_key
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
            items, cursor = decipher_records(
                response, "customer_records" if customers else "user_records", action
            )
            yield from items
            if not cursor or not items:
                return
            params["cursor"] = cursor

    def cancel(self, user_id: str, time_utc: str, *, reason: str) -> None:
        """Reverse one impact. 1ClickImpact answers a repeated cancel with the same result
        without reversing twice, so a cancel whose answer was lost is simply sent again."""
        send(
            self.http,
            "POST",
            "/v1/cancel_impact",
            json={"user_id": user_id, "time_utc": time_utc, "reason": reason[:200]},
            what="POST /v1/cancel_impact",
            side_effect=False,
            endpoint="cancel_impact",
        )


def decipher_records(
    response: httpx.Response, list_key: str, action: str | None
) -> tuple[list[Impact], str | None]:
    """One listing page's records and the cursor of the next (pure); records of other actions
    than `action` (when given) and items we cannot read are left out."""
    try:
        page = response.json()
    except ValueError:
        raise RetryableError("records: answer is not JSON", status=response.status_code) from None
    items = page.get(list_key) if isinstance(page, dict) else None
    found: list[Impact] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        for each, spec in ACTIONS.items():
            if spec.amount_key in item and (action is None or each == action):
                with contextlib.suppress(KeyError, TypeError, ValueError):  # unreadable: skipped
                    found.append(_impact(item, spec.amount_key, action=each))
                break
    cursor = page.get("cursor") if isinstance(page, dict) else None
    return found, cursor if isinstance(cursor, str) and cursor else None


def decipher_created(response: httpx.Response, key: str, *, what: str) -> Impact:
    """The impact a 2xx create answer says was made (pure). A 2xx we cannot read most likely
    did the work: `AmbiguousError`, and reconciliation decides."""
    try:
        return _impact(response.json(), key)
    except (ValueError, KeyError, TypeError):
        raise AmbiguousError(f"{what}: unreadable answer", status=response.status_code) from None


def _impact(answer: dict[str, Any], key: str, *, action: str | None = None) -> Impact:
    customer = answer.get("customer") or {}
    metadata = answer.get("metadata")
    return Impact(
        action=action,
        user_id=str(answer["user_id"]),
        time_utc=str(answer["time_utc"]),
        amount=int(answer[key]),
        customer_id=customer.get("customer_id"),
        customer_email=customer.get("customer_email"),
        metadata=metadata if isinstance(metadata, dict) else None,
    )
