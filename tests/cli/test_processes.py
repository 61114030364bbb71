"""`carbonhook serve` and `run` as real processes over real HTTP: how many connections they hold
at once, and /metrics on a port of its own."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import CP_KEY, IMPACT_KEY, SECRET, free_port, wait_http, wait_until


def env_for(db: str, **extra: str) -> dict[str, str]:
    return {
        "CARBONHOOK_DATABASE_URL": db,
        "CARBONHOOK_WEBHOOK_SECRETS": SECRET,
        "CARBONHOOK_CARBONPASS_API_KEY": CP_KEY,
        "CARBONHOOK_IMPACT_API_KEY": IMPACT_KEY,
        **extra,
    }


@pytest.mark.slow
@pytest.mark.parametrize("command", ["serve", "run"])
def test_past_max_connections_new_ones_get_503_until_one_closes(sqlite_url: str, procs: Any, tmp_path: Path, command: str):
    port = free_port()
    env = env_for(sqlite_url, CARBONHOOK_MAX_CONNECTIONS="3", CARBONHOOK_RULES_FILE=str(tmp_path / "none.toml"))
    if command == "run":
        (tmp_path / "none.toml").write_text("")
    receiver = procs([command, "--port", str(port)], env, command)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/healthz", receiver, timeout=60)
    # Slow clients: connected, a request begun and never finished.
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    try:
        for sock in held:
            sock.sendall(b"POST /webhooks/carbonpass HTTP/1.1\r\nHost: x\r\n")
        wait_until(lambda: httpx.get(f"{base}/healthz", timeout=5).status_code == 503, timeout=10, what="503 past the limit")
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: httpx.get(f"{base}/healthz", timeout=5).status_code == 200, timeout=10, what="200 once they closed")


@pytest.mark.slow
def test_metrics_answer_on_their_own_port_only(sqlite_url: str, procs: Any):
    port, metrics_port = free_port(), free_port()
    env = env_for(sqlite_url, CARBONHOOK_METRICS_PORT=str(metrics_port), CARBONHOOK_ADMIN_TOKEN="m" * 32)
    receiver = procs(["serve", "--port", str(port)], env, "receiver")
    base, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}"
    wait_http(f"{base}/healthz", receiver)
    scraped = httpx.get(f"{metrics}/metrics", timeout=10)
    assert scraped.status_code == 200 and "carbonhook_deliveries_total" in scraped.text
    assert httpx.get(f"{base}/metrics", timeout=10).status_code == 404
    for path in ("/healthz", "/admin/login", "/admin/api/events", "/webhooks/carbonpass"):
        assert httpx.get(f"{metrics}{path}", timeout=10).status_code == 404, path
    assert httpx.get(f"{base}/admin/login", timeout=10).status_code == 200


@pytest.mark.slow
def test_serve_with_several_workers_also_serves_metrics_on_their_port(sqlite_url: str, procs: Any):
    port, metrics_port = free_port(), free_port()
    env = env_for(sqlite_url, CARBONHOOK_METRICS_PORT=str(metrics_port))
    receiver = procs(["serve", "--port", str(port), "--workers", "2"], env, "receiver")
    wait_http(f"http://127.0.0.1:{port}/healthz", receiver, timeout=60)
    deadline = time.monotonic() + 30
    while httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)
