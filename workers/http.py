"""Outbound HTTP policy shared by both API clients: timeouts and what each failure means."""

from __future__ import annotations

import email.utils
import time
from http.cookiejar import CookieJar
from typing import Any

import httpx

from receiver.errors import AmbiguousError, PermanentError, RetryableError
from receiver.metrics import metrics


class NoCookies(CookieJar):
    """Keeps no cookie: neither API uses them, so a `Set-Cookie` in one answer must not ride
    along on the next request. (httpx has no switch for it: encode/httpx#2992 suggests this.)
    It also spares reading `Set-Cookie` on every answer."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass

    def set_cookie(self, cookie: Any) -> None:
        pass


def make_client(
    base_url: str,
    *,
    headers: dict[str, str],
    timeout_s: float,
    transport: httpx.BaseTransport | None,
) -> httpx.Client:
    """An httpx client with explicit timeouts on every phase, and no cookies."""
    return httpx.Client(
        base_url=base_url.rstrip("/"),
        cookies=NoCookies(),
        headers={"User-Agent": "carbonhook", "Accept": "application/json", **headers},
        timeout=httpx.Timeout(timeout_s),
        transport=transport,
        follow_redirects=False,
    )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_message(response: httpx.Response) -> str:
    """The provider's own words from an error body, whichever API sent it."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        parts = [str(body[key]) for key in ("error", "type", "message") if body.get(key)]
        if parts:
            return ": ".join(parts)[:500]
    return str(body)[:200]


def send(
    client: httpx.Client,
    request: httpx.Request,
    *,
    what: str,
    side_effect: bool,
    api: str,
    endpoint: str,
) -> httpx.Response:
    """Send `request`; return a 2xx response or raise an error saying what a retry may do.

    With `side_effect`, anything after the request may have left the machine (a read timeout,
    a dropped connection, a 5xx) is `AmbiguousError`: the caller must check before retrying.
    """
    observed = metrics()
    started = time.perf_counter()
    try:
        response = client.send(request)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        observed.api_requests.labels(api, endpoint, "connect_error").inc()
        raise RetryableError(f"{what}: cannot connect ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        observed.api_requests.labels(api, endpoint, type(exc).__name__).inc()
        cls = AmbiguousError if side_effect else RetryableError
        raise cls(f"{what}: {type(exc).__name__} after sending") from None
    finally:
        observed.api_seconds.labels(api, endpoint).observe(time.perf_counter() - started)
    status = response.status_code
    observed.api_requests.labels(api, endpoint, str(status)).inc()
    if status < 300:
        return response
    message = f"{what}: HTTP {status} {error_message(response)}"
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise RetryableError(message, status=status, retry_after=retry_after)
    if status >= 500:
        cls = AmbiguousError if side_effect else RetryableError
        raise cls(
            message,
            status=status,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if status == 408:
        raise RetryableError(message, status=status)
    raise PermanentError(message, status=status)
