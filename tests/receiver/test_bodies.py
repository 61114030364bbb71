"""Bodies read no further than needed, over real HTTP: the admin's 8 KiB, no multipart there, and
a deadline for every body (408, and the connection closed)."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from receiver.bodies import ADMIN_BODY_BYTES
from tests.support import make_body, settings_for_test, signed

TOKEN = "bodies-admin-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def base(sqlite_url: str) -> Iterator[str]:
    from carbonhook.cli.bootstrap import build_receiver
    from carbonhook.cli.lifecycle import start_server
    from carbonhook.queue import make_broker

    settings = settings_for_test(sqlite_url, admin_token=TOKEN, body_timeout_s=0.5)
    server = start_server(build_receiver(settings, make_broker("memory://")), "127.0.0.1", 0, lifespan="on")
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


def raw(base: str, request: bytes, *, wait_s: float = 5) -> tuple[bytes, bool]:
    """Send `request` as is on a new connection; the answer, and whether the server closed."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        sock.sendall(request)
        answer = b""
        closed = False
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            answer += chunk
        return answer, closed


def head(path: str, length: int, content_type: str = "application/x-www-form-urlencoded", extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("path", "extra"),
    [("/admin/login", ""), ("/admin/api/events/replay", ""), ("/admin/events/1/replay", "")],
)
def test_an_admin_body_declared_past_8_kib_is_refused_before_a_byte_of_it_is_read(base: str, path: str, extra: str):
    # Nothing of the body is sent: the answer cannot wait for it.
    started = time.monotonic()
    answer, closed = raw(base, head(path, ADMIN_BODY_BYTES + 1, extra=extra))
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert b'"error":"too_large"' in answer and closed
    assert time.monotonic() - started < 0.5  # not the body deadline: refused at once


def test_an_admin_body_streamed_past_8_kib_is_refused(base: str):
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"x" * 1024

    response = httpx.post(f"{base}/admin/api/events/replay", content=chunks(), headers=BEARER, timeout=10)
    assert response.status_code == 413 and response.json()["error"] == "too_large"
    assert response.headers["connection"] == "close"
    form = httpx.post(f"{base}/admin/login", data={"token": "x" * (ADMIN_BODY_BYTES + 1)}, timeout=10)
    assert form.status_code == 413


def test_admin_bodies_up_to_8_kib_are_read(base: str):
    response = httpx.post(f"{base}/admin/api/events/replay", json={"status": "failed", "reason": "r" * 1900, "pad": "x" * 6000}, headers=BEARER, timeout=10)
    assert response.status_code == 200 and response.json() == {"replayed": 0, "ids": []}
    login = httpx.get(f"{base}/admin/login", timeout=10)
    assert login.status_code == 200


@pytest.mark.parametrize(("path", "headers"), [("/admin/login", {}), ("/admin/api/events/replay", BEARER)])
def test_multipart_is_refused_outright_on_the_admin_surfaces(base: str, path: str, headers: dict[str, str]):
    response = httpx.post(f"{base}{path}", files={"token": ("token.txt", b"x")}, headers=headers, timeout=10)
    assert response.status_code == 415 and response.json()["error"] == "unsupported_media_type"


def test_a_webhook_body_may_be_larger_than_the_admins(base: str):
    body = make_body(subject="crp_big", pad="x" * (4 * ADMIN_BODY_BYTES))
    response = httpx.post(f"{base}/webhooks/carbonpass", content=body, headers=signed(body), timeout=10)
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("path", ["/webhooks/carbonpass", "/admin/login", "/admin/api/events/replay"])
def test_a_body_that_arrives_too_slowly_gets_408_and_the_connection_is_closed(base: str, path: str):
    extra = f"Authorization: Bearer {TOKEN}\r\n" if "/api/" in path else ""
    kind = "application/x-www-form-urlencoded" if path == "/admin/login" else "application/json"
    started = time.monotonic()
    answer, closed = raw(base, head(path, 100, kind, extra) + b"token=0123", wait_s=5)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"error":"timeout"' in answer
    assert closed, "the connection stays open after a 408"
    assert time.monotonic() - started < 3


def test_the_deadline_is_for_the_body_not_each_piece_of_it(base: str):
    host, port = base.removeprefix("http://").split(":")
    answer = b""
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head("/webhooks/carbonpass", 100, "application/json"))
        for _ in range(30):  # a byte every 0.1 s: each piece in time, the whole too late
            if select.select([sock], [], [], 0.1)[0]:
                answer = sock.recv(65536)
                break
            sock.sendall(b" ")
    assert answer.startswith(b"HTTP/1.1 408 "), answer


def test_a_body_in_time_is_unaffected(base: str):
    body = make_body(subject="crp_on_time")
    response: Any = httpx.post(f"{base}/webhooks/carbonpass", content=body, headers=signed(body), timeout=10)
    assert response.status_code == 202
