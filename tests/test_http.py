"""The outbound HTTP policy both API clients share (workers/http.py)."""

from __future__ import annotations

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


def test_a_redirect_is_answered_not_followed():
    calls: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(302, headers={"Location": "https://elsewhere.example/"})

    with_api = api_answering(api)
    assert with_api.send(with_api.request("POST", "/v1/capture_carbon", json={})).status_code == 302
    assert calls == ["/v1/capture_carbon"]


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
