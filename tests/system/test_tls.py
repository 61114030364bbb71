"""`carbonhook serve` with TLS: a signed delivery over HTTPS with verification on."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from receiver.signature import sign
from tests.support import SECRET, free_port, make_body, wait_http


@pytest.mark.slow
def test_serve_answers_over_https_with_a_verified_certificate(sqlite_url: str, procs: Any, tmp_path: Path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, cafile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    port = free_port()
    env = {"CARBONHOOK_DATABASE_URL": sqlite_url, "CARBONHOOK_WEBHOOK_SECRETS": SECRET}
    receiver = procs(["serve", "--port", str(port), "--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile)], env, "receiver")
    base = f"https://127.0.0.1:{port}"
    trusted = ssl.create_default_context(cafile=str(cafile))
    wait_http(f"{base}/healthz", receiver, verify=trusted)
    body = make_body(subject="crp_tls")
    with httpx.Client(verify=trusted) as client:
        response = client.post(f"{base}/webhooks/carbonpass", content=body, headers={"X-CarbonPass-Signature": sign(body, secret=SECRET.encode())})
    assert response.status_code == 202, response.text
    with pytest.raises(httpx.ConnectError):  # an unknown CA is refused: verification is on
        httpx.get(f"{base}/healthz")


@pytest.mark.slow
@pytest.mark.parametrize(("allowed", "secure"), [("127.0.0.1", True), ("10.1.2.3", False)])
def test_forwarded_headers_count_only_from_allowed_proxies(sqlite_url: str, procs: Any, allowed: str, secure: bool):
    port = free_port()
    env = {"CARBONHOOK_DATABASE_URL": sqlite_url, "CARBONHOOK_WEBHOOK_SECRETS": SECRET, "CARBONHOOK_ADMIN_TOKEN": "t" * 32}
    receiver = procs(["serve", "--port", str(port), "--forwarded-allow-ips", allowed], env, "receiver")
    wait_http(f"http://127.0.0.1:{port}/healthz", receiver)
    # A proxy that terminated TLS says so; only a trusted one makes the session cookie Secure.
    response = httpx.get(f"http://127.0.0.1:{port}/admin/login", headers={"X-Forwarded-Proto": "https"})
    assert response.status_code == 200
    cookie = response.headers["set-cookie"]
    assert ("Secure" in cookie) is secure, cookie
