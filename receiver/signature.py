"""The webhook signature: hex HMAC-SHA256 of the raw body, keyed with the webhook secret."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from carbonhook.errors import SignatureError

HEADER = "X-CarbonPass-Signature"
_PREFIX = "sha256="


def sign(body: bytes, *, secret: bytes) -> str:
    """Return the signature CarbonPass sends for `body`."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, *, secrets: Sequence[bytes]) -> None:
    """Raise `SignatureError` unless `header` is the signature of `body` under any secret.

    Accepts an optional `sha256=` prefix and either case of hex. Every secret is compared
    (constant time each), so timing does not reveal which secret of a rotation matched.
    """
    if not header:
        raise SignatureError(f"missing {HEADER} header")
    candidate = header.strip()
    if candidate[: len(_PREFIX)].lower() == _PREFIX:
        candidate = candidate[len(_PREFIX) :]
    given = candidate.lower().encode("ascii", "replace")
    matched = False
    for secret in secrets:
        expected = sign(body, secret=secret).encode("ascii")
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise SignatureError(f"{HEADER} does not match")
