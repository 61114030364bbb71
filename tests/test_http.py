"""The outbound HTTP policy both API clients share (workers/http.py)."""

from __future__ import annotations

import httpx

from workers.http import make_client


def test_a_cookie_set_by_one_answer_is_not_sent_with_the_next_request():
    seen: list[str | None] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Cookie"))
        return httpx.Response(200, headers={"Set-Cookie": "session=abc; Path=/"}, json={})

    client = make_client(
        "https://api.example", headers={}, timeout_s=5, transport=httpx.MockTransport(api)
    )
    with client:
        client.get("/first")
        client.get("/second")
    assert seen == [None, None]
    assert not client.cookies


def test_every_phase_of_a_request_has_the_timeout():
    timeouts: list[dict[str, float | None]] = []

    def api(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions["timeout"])
        return httpx.Response(200, json={})

    with make_client(
        "https://api.example", headers={}, timeout_s=7, transport=httpx.MockTransport(api)
    ) as client:
        client.get("/x")
    assert timeouts == [{"connect": 7, "read": 7, "write": 7, "pool": 7}]
