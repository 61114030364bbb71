"""The webhook signature (receiver/signature.py), checked against vectors computed elsewhere."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carbonhook.errors import SignatureError
from receiver.signature import sign, verify_signature

BODY = b'{"event":"crp.generated","timestamp":"2026-04-06T14:35:48Z","data":{"id":"crp_5tN8xBmQ","status":"draft"}}'
# Written out, not computed by the code under test: printf '%s' "$BODY" | openssl dgst -sha256 -hmac whsec_test
VECTOR = "39e8dc29bfc3e674dd0ed4725f1a91dd82f153d32e61e7a1436599eaa2439384"

# RFC 4231's published HMAC-SHA256 test cases 1, 2, 3 and 6 (key, data, MAC).
RFC_4231 = [
    (b"\x0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 20, b"\xdd" * 50, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (
        b"\xaa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
]


@pytest.mark.parametrize(("key", "data", "mac"), RFC_4231)
def test_sign_gives_rfc_4231s_published_macs(key: bytes, data: bytes, mac: str):
    assert sign(data, secret=key) == mac
    verify_signature(data, mac, secrets=[key])


def test_sign_matches_a_body_signed_with_openssl():
    assert sign(BODY, secret=b"whsec_test") == VECTOR


@pytest.mark.parametrize("header", [VECTOR, VECTOR.upper(), f"sha256={VECTOR}", f"SHA256={VECTOR.upper()}", f"  {VECTOR} "])
def test_accepts_plain_prefixed_and_either_case(header):
    verify_signature(BODY, header, secrets=[b"whsec_test"])


def test_any_secret_of_a_rotation_passes():
    verify_signature(BODY, VECTOR, secrets=[b"new-secret", b"whsec_test"])


@pytest.mark.parametrize("header", [None, "", "sha256=", VECTOR[:-1], VECTOR + "0", "z" * 64, "sha1=" + VECTOR, "é" * 64])
def test_rejects_missing_short_long_and_garbage(header):
    with pytest.raises(SignatureError):
        verify_signature(BODY, header, secrets=[b"whsec_test"])


def test_rejects_a_body_changed_by_one_byte():
    with pytest.raises(SignatureError):
        verify_signature(BODY.replace(b"draft", b"drafT"), VECTOR, secrets=[b"whsec_test"])


def test_no_secrets_means_nothing_passes():
    with pytest.raises(SignatureError):
        verify_signature(BODY, VECTOR, secrets=[])


@given(st.binary(max_size=512), st.binary(min_size=1, max_size=64))
def test_own_signature_always_verifies(body, secret):
    verify_signature(body, sign(body, secret=secret), secrets=[secret])
