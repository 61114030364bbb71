"""The dashboard's session: a signed cookie holding a CSRF token, whether the admin signed in,
an expiry, and one flash message. Nothing is stored on the server."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from itsdangerous import BadSignature, URLSafeSerializer
from starlette.responses import Response

COOKIE = "carbonhook_admin"
COOKIE_PATH = "/admin"
LIFETIME_S = 12 * 3600
# The signing key is derived from the admin token: rotating the token signs everyone out.
KEY_LABEL = b"carbonhook/admin-dashboard/session-key/v1"


@dataclass(frozen=True, slots=True)
class Session:
    csrf: str
    signed_in: bool
    expires: int
    flash: tuple[str, str] | None = None  # (kind, message): "ok" or "error"

    def with_flash(self, kind: str, message: str) -> Session:
        return replace(self, flash=(kind, message))

    def without_flash(self) -> Session:
        return replace(self, flash=None)

    def csrf_matches(self, given: object) -> bool:
        return isinstance(given, str) and hmac.compare_digest(given.encode(), self.csrf.encode())


class Sessions:
    """Issues, reads and writes session cookies signed with a key derived from `token`."""

    def __init__(
        self,
        token: str,
        *,
        lifetime_s: int = LIFETIME_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        key = hmac.new(token.encode(), KEY_LABEL, hashlib.sha256).digest()
        self._serializer = URLSafeSerializer(key, salt="session")
        self.lifetime_s = lifetime_s
        self._clock = clock

    def new(self, *, signed_in: bool) -> Session:
        """A fresh session with a new CSRF token (sign-in rotates it: no fixation)."""
        expires = int(self._clock()) + self.lifetime_s
        return Session(csrf=secrets.token_urlsafe(32), signed_in=signed_in, expires=expires)

    def read(self, cookie: str | None) -> Session | None:
        """The session in `cookie`, or None if it is missing, forged, malformed or expired."""
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie)
            csrf, signed_in, expires, flash = data
            session = Session(
                csrf=str(csrf),
                signed_in=signed_in is True,
                expires=int(expires),
                flash=(str(flash[0]), str(flash[1])) if flash else None,
            )
        except (BadSignature, TypeError, ValueError, IndexError):
            return None
        return session if session.expires > self._clock() else None

    def write(self, response: Response, session: Session, *, secure: bool) -> None:
        value = self._serializer.dumps(
            [session.csrf, session.signed_in, session.expires, session.flash]
        )
        response.set_cookie(
            COOKIE,
            value,
            max_age=max(0, session.expires - int(self._clock())),
            path=COOKIE_PATH,
            secure=secure,
            httponly=True,
            samesite="lax",
        )
