"""The dashboard's session: a signed cookie holding a CSRF token, which admin signed in (if one
did), an expiry, and one flash message. Nothing is stored on the server.

A signed-in admin's cookie is signed with a key derived from that admin's token, and names the
admin: once the name is no longer configured, or its token changed, the cookie is refused at
once (not when it expires). A session before signing in is signed with a key derived from
every token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from itsdangerous import BadSignature, URLSafeSerializer
from starlette.responses import Response

COOKIE = "carbonhook_admin"
COOKIE_PATH = "/admin"
LIFETIME_S = 12 * 3600
KEY_LABEL = b"carbonhook/admin-dashboard/session-key/v2"
# Between the admin's name (base64url) and the signed session; never in itsdangerous's output,
# and a legal cookie character.
NAME_END = "~"


@dataclass(frozen=True, slots=True)
class Session:
    csrf: str
    admin: str | None  # the signed-in admin's name; None before signing in
    expires: int
    flash: tuple[str, str] | None = None  # (kind, message): "ok" or "error"

    @property
    def signed_in(self) -> bool:
        return self.admin is not None

    def with_flash(self, kind: str, message: str) -> Session:
        return replace(self, flash=(kind, message))

    def without_flash(self) -> Session:
        return replace(self, flash=None)

    def csrf_matches(self, given: object) -> bool:
        return isinstance(given, str) and hmac.compare_digest(given.encode(), self.csrf.encode())


class Sessions:
    """Issues, reads and writes session cookies; `tokens` maps each admin's name to its token."""

    def __init__(
        self,
        tokens: Mapping[str, str],
        *,
        lifetime_s: int = LIFETIME_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signers = {
            name: _serializer(token.encode(), KEY_LABEL + b"/admin/" + name.encode())
            for name, token in tokens.items()
        }
        every_token = b"\0".join(sorted(token.encode() for token in tokens.values()))
        self._signed_out = _serializer(every_token, KEY_LABEL + b"/signed-out")
        self.lifetime_s = lifetime_s
        self._clock = clock

    def new(self, *, admin: str | None) -> Session:
        """A fresh session with a new CSRF token (sign-in rotates it: no fixation)."""
        expires = int(self._clock()) + self.lifetime_s
        return Session(csrf=secrets.token_urlsafe(32), admin=admin, expires=expires)

    def read(self, cookie: str | None) -> Session | None:
        """The session in `cookie`, or None if it is missing, forged, malformed or expired, or
        names an admin who is no longer configured or whose token changed."""
        if not cookie:
            return None
        encoded, _, signed = cookie.rpartition(NAME_END)
        try:
            name = _decode_name(encoded) if encoded else None
            serializer = self._signed_out if name is None else self._signers.get(name)
            if serializer is None:
                return None
            csrf, admin, expires, flash = serializer.loads(signed)
            session = Session(
                csrf=str(csrf),
                admin=None if admin is None else str(admin),
                expires=int(expires),
                flash=(str(flash[0]), str(flash[1])) if flash else None,
            )
        except (BadSignature, TypeError, ValueError, IndexError):
            return None
        if session.admin != name:
            return None
        return session if session.expires > self._clock() else None

    def write(self, response: Response, session: Session, *, secure: bool) -> None:
        if session.admin is None:
            serializer, prefix = self._signed_out, ""
        else:
            serializer = self._signers[session.admin]
            prefix = _encode_name(session.admin) + NAME_END
        value = serializer.dumps([session.csrf, session.admin, session.expires, session.flash])
        response.set_cookie(
            COOKIE,
            prefix + value,
            max_age=max(0, session.expires - int(self._clock())),
            path=COOKIE_PATH,
            secure=secure,
            httponly=True,
            samesite="lax",
        )


def _serializer(secret: bytes, label: bytes) -> URLSafeSerializer:
    key = hmac.new(secret, label, hashlib.sha256).digest()
    return URLSafeSerializer(key, salt="session")


def _encode_name(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _decode_name(encoded: str) -> str:
    """The name `_encode_name` wrote; a ValueError (binascii.Error, UnicodeDecodeError) when
    it is not one."""
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
