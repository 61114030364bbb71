"""Outbound HTTP policy shared by both API clients: timeouts and what each failure means."""

from __future__ import annotations

import email.utils
import math
import time
import urllib.parse
import urllib.request
from typing import Any

import httpx

from carbonhook.errors import AmbiguousError, PermanentError, RateLimited, RetryableError
from carbonhook.metrics import metrics
from workers.rate_limit import MAX_PAUSE_S, RateLimit


class Api:
    """One API's address, headers and timeouts, over an httpx transport (its connection pool).

    Requests go to the transport, not through `httpx.Client`: the client's layers (cookie jars
    copied for every request, auth flows, redirects, URL merging) do nothing for these two
    APIs and cost ~15% of the CPU of a request (bench/FINDINGS.md). What the service wants
    from a client is kept: a timeout on every phase, no redirects, no cookies (a `Set-Cookie`
    in one answer never rides along on the next request), and the proxy that the standard
    variables name.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        headers: dict[str, str],
        timeout_s: float,
        transport: httpx.BaseTransport | None = None,
        rate_limit: RateLimit | None = None,
    ) -> None:
        self.name = name  # in metrics
        self.rate_limit = rate_limit  # None: calls go unmetered
        self._base = base_url.rstrip("/")
        self.base_url = httpx.URL(self._base)
        self.headers = httpx.Headers(
            {"User-Agent": "carbonhook", "Accept": "application/json", **headers}
        )
        self.timeout = httpx.Timeout(timeout_s).as_dict()
        self.transport = transport or httpx.HTTPTransport(proxy=proxy_for(self._base))

    def request(
        self, method: str, path: str, *, params: Any = None, json: Any = None
    ) -> httpx.Request:
        return httpx.Request(
            method,
            self._base + path,
            params=params,
            json=json,
            headers=self.headers,
            extensions={"timeout": self.timeout},
        )

    def send(self, request: httpx.Request) -> httpx.Response:
        """The answer, read in full."""
        response = self.transport.handle_request(request)
        try:
            response.read()
        finally:
            response.close()
        response.request = request
        return response

    def close(self) -> None:
        self.transport.close()
        if self.rate_limit is not None:
            self.rate_limit.close()


def proxy_for(url: str) -> str | None:
    """The proxy that `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` name for `url`
    (as `httpx.Client` would pick it), or None."""
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy:
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), at most
    `MAX_PAUSE_S`: a wait of years (or `1e999`, read as infinity) would not fit a retry's
    due time, and is not what a rate limit means."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(MAX_PAUSE_S, max(0.0, seconds))


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


# Failures raised before any byte of the request can have reached the server: nothing was


# sent, so nothing can have happened (connection refused, DNS, the TLS handshake, a proxy that
# refused the tunnel, no free connection in the pool, a header or URL the client will not send).
NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
)


def send(
    api: Api,
    method: str,
    path: str,
    *,
    what: str,
    side_effect: bool,
    endpoint: str,
    params: Any = None,
    json: Any = None,
) -> httpx.Response:
    """Send a request; return a 2xx response or raise an error saying what a retry may do.

    Sent or not sent is decided by what happened on the wire. A failure before the request
    left (`NOT_SENT`, or a request that cannot even be built) is a definite `RetryableError`.
    With `side_effect`, a failure after it may have left (a read timeout, a dropped
    connection, a 5xx) is `AmbiguousError`: the caller must check before it calls again.
    """
    observed = metrics()
    try:
        request = api.request(method, path, params=params, json=json)
    except (httpx.InvalidURL, UnicodeError, ValueError, TypeError) as exc:
        observed.api_requests.labels(api.name, endpoint, "not_sent").inc()
        raise RetryableError(f"{what}: not sent, the request is malformed ({exc})") from None
    if api.rate_limit is not None:
        api.rate_limit.take()
    started = time.perf_counter()
    try:
        response = api.send(request)
    except NOT_SENT as exc:
        observed.api_requests.labels(api.name, endpoint, "connect_error").inc()
        raise RetryableError(f"{what}: not sent ({type(exc).__name__}: {exc})") from None
    except httpx.TransportError as exc:
        observed.api_requests.labels(api.name, endpoint, type(exc).__name__).inc()
        cls = AmbiguousError if side_effect else RetryableError
        raise cls(f"{what}: {type(exc).__name__} after sending") from None
    finally:
        observed.api_seconds.labels(api.name, endpoint).observe(time.perf_counter() - started)
    observed.api_requests.labels(api.name, endpoint, str(response.status_code)).inc()
    try:
        decipher_response(response, what=what, side_effect=side_effect)
    except RateLimited as exc:
        if api.rate_limit is None:
            raise
        pause_s = api.rate_limit.pause(exc.retry_after)
        raise RateLimited(str(exc), status=exc.status, retry_after=pause_s) from None
    return response


def decipher_response(response: httpx.Response, *, what: str, side_effect: bool) -> None:
    """What an answer means, apart from how it came (pure): return for a 2xx, else raise the
    error that says what a retry may do. With `side_effect`, a 5xx may have done the work:
    `AmbiguousError`, so the caller checks before it calls again."""
    status = response.status_code
    if status < 300:
        return
    message = f"{what}: HTTP {status} {error_message(response)}"
    if status == 429:  # refused, not performed: not even a create
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise RateLimited(message, status=status, retry_after=retry_after)
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
