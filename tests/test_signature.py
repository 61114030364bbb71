import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carbonhook.errors import SignatureError
from receiver.signature import sign, verify_signature

BODY = b'{"event":"crp.generated","timestamp":"2026-04-06T14:35:48Z","data":{"id":"crp_5tN8xBmQ","status":"draft"}}'
# Fixed vector, computed independently: printf '%s' "$BODY" | openssl dgst -sha256 -hmac whsec_test
VECTOR = hmac.new(b"whsec_test", BODY, hashlib.sha256).hexdigest()


def test_sign_matches_a_fixed_vector():
    assert sign(b"hello", secret=b"key") == "9307b3b915efb5171ff14d8cb55fbcc798c6c0ef1456d66ded1a6aa723a58b7b"
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
