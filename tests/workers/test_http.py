"""The outbound HTTP policy both API clients share (workers/http.py)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from workers.http import Api, proxy_for


def api_answering(answer) -> Api:
    return Api("test", "https://api.example/", headers={"x-api-key": "k"}, timeout_s=7, transport=httpx.MockTransport(answer))


def test_a_request_carries_the_apis_address_headers_and_the_answer_is_read():
    seen: list[httpx.Request] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    with_api = api_answering(api)
    answer = with_api.send(with_api.request("GET", "/v1/records", params={"limit": 2}))
    assert answer.json() == {"ok": True}
    (request,) = seen
    assert str(request.url) == "https://api.example/v1/records?limit=2"
    assert request.headers["x-api-key"] == "k" and request.headers["user-agent"] == "carbonhook"
    assert request.headers["accept"] == "application/json"


def test_a_cookie_set_by_one_answer_is_not_sent_with_the_next_request():
    seen: list[str | None] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Cookie"))
        return httpx.Response(200, headers={"Set-Cookie": "session=abc; Path=/"}, json={})

    with_api = api_answering(api)
    with_api.send(with_api.request("GET", "/first"))
    with_api.send(with_api.request("GET", "/second"))
    assert seen == [None, None]


def test_every_phase_of_a_request_has_the_timeout():
    timeouts: list[dict[str, float | None]] = []

    def api(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions["timeout"])
        return httpx.Response(200, json={})

    with_api = api_answering(api)
    with_api.send(with_api.request("POST", "/x", json={"amount": 1}))
    assert timeouts == [{"connect": 7, "read": 7, "write": 7, "pool": 7}]


def test_a_redirect_from_a_real_server_is_a_permanent_error_and_is_not_followed():
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, RedirectResponse, Response
    from starlette.routing import Route

    from carbonhook.cli.lifecycle import start_server
    from carbonhook.errors import PermanentError
    from workers.carbonpass import CarbonPassClient
    from workers.impact import ImpactClient

    hits: list[str] = []

    async def moved(request: Request) -> Response:
        hits.append(request.url.path)
        return RedirectResponse("/elsewhere", status_code=302)

    async def elsewhere(request: Request) -> Response:
        hits.append(request.url.path)
        return JSONResponse({"user_id": "U1", "time_utc": "2026-01-01T00:00:00.000Z", "carbon_captured": 1})

    app = Starlette(
        routes=[
            Route("/v1/capture_carbon", moved, methods=["POST"]),
            Route("/api/v1/company", moved),
            Route("/elsewhere", elsewhere, methods=["GET", "POST"]),
        ]
    )
    server = start_server(app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    impact = ImpactClient(base, "test_key", timeout_s=5)
    carbonpass = CarbonPassClient(f"{base}/api/v1", "cp_live_key", timeout_s=5)
    try:
        with pytest.raises(PermanentError) as created:
            impact.create("capture_carbon", 1)
        with pytest.raises(PermanentError) as fetched:
            carbonpass.company()
    finally:
        impact.close()
        carbonpass.close()
        server.stop()
    assert created.value.status == 302 and fetched.value.status == 302
    assert hits == ["/v1/capture_carbon", "/api/v1/company"]  # never the Location


@pytest.mark.parametrize(
    ("environment", "proxy"),
    [
        ({}, None),
        ({"HTTPS_PROXY": "proxy.internal:3128"}, "http://proxy.internal:3128"),
        ({"https_proxy": "http://proxy.internal:3128", "HTTP_PROXY": "http://other:1"}, "http://proxy.internal:3128"),
        ({"ALL_PROXY": "socks5://proxy.internal:1080"}, "socks5://proxy.internal:1080"),
        ({"HTTPS_PROXY": "proxy.internal:3128", "NO_PROXY": "api.example"}, None),
        ({"HTTPS_PROXY": "proxy.internal:3128", "NO_PROXY": ".example"}, None),
        ({"HTTPS_PROXY": "proxy.internal:3128", "NO_PROXY": "other.example"}, "http://proxy.internal:3128"),
    ],
)
def test_the_proxy_is_the_one_the_standard_variables_name(monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], proxy: str | None):
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert proxy_for("https://api.example/v1") == proxy


def counting_server() -> tuple[Any, list[str]]:
    """A real server that counts the requests that reached it."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from carbonhook.cli.lifecycle import start_server

    hits: list[str] = []

    async def capture(request: Request) -> Response:
        hits.append(request.url.path)
        return JSONResponse({"user_id": "U1", "time_utc": "2026-01-01T00:00:00.000Z", "carbon_captured": 1})

    server = start_server(Starlette(routes=[Route("/v1/capture_carbon", capture, methods=["POST"])]), "127.0.0.1", 0)
    return server, hits


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param({"api_key": "test_key\r\nX-Injected: 1"}, id="a header the client will not send"),
        pytest.param({"base": "ftp://127.0.0.1:{port}"}, id="a scheme it cannot speak"),
        pytest.param({"base": "http://127.0.0.1:{closed}"}, id="connection refused"),
        pytest.param({"base": "http://no-such-host.invalid:{port}"}, id="a name that does not resolve"),
        pytest.param({"base": "https://127.0.0.1:{port}"}, id="a TLS handshake that fails"),
    ],
)
def test_a_failure_before_the_request_left_is_definite_not_ambiguous(broken: dict[str, str]):
    from carbonhook.errors import AmbiguousError, RetryableError
    from tests.support import free_port
    from workers.impact import ImpactClient

    server, hits = counting_server()
    base = broken.get("base", "http://127.0.0.1:{port}").format(port=server.port, closed=free_port())
    client = ImpactClient(base, broken.get("api_key", "test_key"), timeout_s=3)
    try:
        with pytest.raises(RetryableError) as raised:
            client.create("capture_carbon", 1)
    finally:
        client.close()
        server.stop()
    assert not isinstance(raised.value, AmbiguousError), raised.value
    assert hits == []  # nothing reached the server: nothing can have happened


def test_a_read_timeout_after_the_request_left_is_ambiguous():
    import asyncio

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from carbonhook.cli.lifecycle import start_server
    from carbonhook.errors import AmbiguousError
    from workers.impact import ImpactClient

    async def slow(request: Request) -> Response:
        await request.body()
        await asyncio.sleep(2)
        return Response("{}")

    server = start_server(Starlette(routes=[Route("/v1/capture_carbon", slow, methods=["POST"])]), "127.0.0.1", 0)
    client = ImpactClient(f"http://127.0.0.1:{server.port}", "test_key", timeout_s=0.3)
    try:
        with pytest.raises(AmbiguousError):
            client.create("capture_carbon", 1)
    finally:
        client.close()
        server.stop()
