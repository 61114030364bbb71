"""Request bodies read no further than needed.

Every body must arrive within `timeout_s` of the request's start (a client that trickles one in
holds a connection and its buffer: it gets 408 and the connection is closed). Under /admin, where
only small forms and JSON objects are posted, a body over `ADMIN_BODY_BYTES` gets 413 and
multipart gets 415 before anything reads them (the sign-in form is parsed before any check;
multipart files would be spooled to disk): at once when the headers say so, whichever route it
is, else as the body is read. Those met while reading are raised from `receive`, so a route
meets them where it reads its body and receiver/app.py answers them like every error of ours.
"""

from __future__ import annotations

import asyncio
import time

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from carbonhook.errors import BodyTimeout, BodyTooLarge, CarbonhookError, UnsupportedMediaType

ADMIN_BODY_BYTES = 8 * 1024
ADMIN_PREFIX = "/admin"


def body_limit(path: str) -> int | None:
    """The most a body to `path` may hold here (None: the route decides, as the intake does)."""
    if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
        return ADMIN_BODY_BYTES
    return None


def refusal(headers: Headers, limit: int | None) -> CarbonhookError | None:
    """What to answer a body before reading any of it, from its headers alone."""
    if limit is None:
        return None
    if headers.get("content-type", "").lower().startswith("multipart/"):
        return UnsupportedMediaType("multipart bodies are not accepted here")
    declared = headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return BodyTooLarge(f"body exceeds {limit} bytes")
    return None


class BodyLimits:
    """ASGI middleware: the limits above on every HTTP request."""

    def __init__(self, app: ASGIApp, *, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope["path"])
        refused = refusal(Headers(scope=scope), limit)
        if refused is not None:
            # Answered here, before any route (which might answer 401 or 403 first, leaving the
            # client to send the rest); the same JSON receiver/app.py gives every error of ours.
            assert refused.http_status is not None
            answer = JSONResponse(
                {"error": refused.code, "message": str(refused)},
                status_code=refused.http_status,
                headers={"Connection": "close"},
            )
            await answer(scope, receive, send)
            return
        deadline = time.monotonic() + self.timeout_s
        size = 0
        complete = False

        async def bounded() -> Message:
            nonlocal size, complete
            if complete:  # past the body: only a disconnect is left to wait for
                return await receive()
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(f"the body did not arrive within {self.timeout_s:g} s") from None
            if message["type"] != "http.request":
                complete = True
                return message
            size += len(message.get("body", b""))
            if limit is not None and size > limit:
                raise BodyTooLarge(f"body exceeds {limit} bytes")
            complete = not message.get("more_body", False)
            return message

        await self.app(scope, bounded, send)
