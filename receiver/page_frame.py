"""The dashboard's frame: signing in and out with an admin's token, pages only signed-in admins
see, and forms that must carry the session's CSRF token (receiver/sessions.py holds the signed
cookie). Wrong tokens are counted by the lockout shared with the admin API; every answer carries
the pages' security headers.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from carbonhook.errors import BadRequest, CarbonhookError, Conflict
from receiver.admin import admin_named
from receiver.lockout import Lockout, client_address, retry_after
from receiver.pages import environment
from receiver.params import here, query_string, safe_next
from receiver.sessions import COOKIE, Session, Sessions

ERROR_TITLES = {400: "Bad request", 404: "Not found", 409: "Refused", 500: "Error"}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


View = Callable[[Request, Session], Awaitable[Response]]
Action = Callable[[Request, Session, dict[str, str]], Awaitable[Response]]


class PageFrame:
    """Sessions, rendering and the two kinds of endpoint (`view`, `action`) the pages use."""

    def __init__(self, sessions: Sessions, tokens: Mapping[str, str], lockout: Lockout) -> None:
        self.sessions = sessions
        self.tokens = tokens
        self.lockout = lockout
        self.templates = environment()

    # -- plumbing ----------------------------------------------------------------------

    def render(
        self, request: Request, session: Session | None, name: str, code: int = 200, **ctx: Any
    ) -> Response:
        flash = session.flash if session else None
        html = self.templates.get_template(name).render(
            csrf=session.csrf if session else "",
            signed_in=bool(session and session.signed_in),
            signed_in_as=session.admin if session else None,
            flash=flash,
            path=request.url.path,
            here=here(request),
            **ctx,
        )
        response = HTMLResponse(html, status_code=code, headers=HEADERS)
        if session is not None and flash is not None:
            self.sessions.write(response, session.without_flash(), secure=_https(request))
        return response

    def redirect(
        self, request: Request, session: Session, target: str, kind: str, message: str
    ) -> Response:
        response = RedirectResponse(target, status_code=303, headers=HEADERS)
        self.sessions.write(response, session.with_flash(kind, message), secure=_https(request))
        return response

    def refuse(self, request: Request, code: int, message: str) -> Response:
        return self.render(request, None, "error.html", code, title="Refused", message=message)

    def error_page(
        self, request: Request, session: Session
    ) -> Callable[[CarbonhookError, int], Response]:
        """How receiver/app.py answers our errors on a page: the error page, signed in."""

        def page(exc: CarbonhookError, status: int) -> Response:
            title = ERROR_TITLES.get(status, "Refused")
            message = "Something went wrong; the log says more." if status == 500 else str(exc)
            return self.render(request, session, "error.html", status, title=title, message=message)

        return page

    def view(self, handler: View) -> Callable[[Request], Awaitable[Response]]:
        """A page for signed-in admins; anyone else is sent to sign in."""

        async def endpoint(request: Request) -> Response:
            session = self.sessions.read(request.cookies.get(COOKIE))
            if session is None or not session.signed_in:
                target = "/admin/login" + query_string({"next": here(request)})
                return RedirectResponse(target, status_code=303, headers=HEADERS)
            request.state.error_page = self.error_page(request, session)
            return await handler(request, session)

        return endpoint

    def action(self, handler: Action) -> Callable[[Request], Awaitable[Response]]:
        """A POST from a signed-in admin's form, with the session's CSRF token."""

        async def endpoint(request: Request) -> Response:
            session = self.sessions.read(request.cookies.get(COOKIE))
            if session is None or not session.signed_in:
                return self.refuse(request, 403, "Sign in first.")
            async with request.form() as form:
                fields = {k: v for k, v in form.items() if isinstance(v, str)}
            if not session.csrf_matches(fields.get("csrf")):
                return self.refuse(request, 403, "The form's CSRF token is missing or wrong.")
            back = safe_next(fields.get("next"))
            request.state.error_page = self.error_page(request, session)
            try:
                return await handler(request, session, fields)
            except (Conflict, BadRequest) as exc:
                # A refused decision is shown on the page the admin came from.
                return self.redirect(request, session, back, "error", str(exc))

        return endpoint

    # -- signing in --------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        session = self.sessions.read(request.cookies.get(COOKIE))
        target = safe_next(request.query_params.get("next"))
        if session is not None and session.signed_in:
            return RedirectResponse(target, status_code=303, headers=HEADERS)
        if session is not None:  # keep its CSRF token: another tab may hold the form
            return self.render(request, session, "login.html", next=target, error=None)
        fresh = self.sessions.new(admin=None)
        response = self.render(request, fresh, "login.html", next=target, error=None)
        self.sessions.write(response, fresh, secure=_https(request))
        return response

    async def login(self, request: Request) -> Response:
        session = self.sessions.read(request.cookies.get(COOKIE))
        async with request.form() as form:
            given, csrf, target = form.get("token"), form.get("csrf"), form.get("next")
        if session is None or not session.csrf_matches(csrf):
            return self.refuse(request, 403, "The sign-in form expired; reload it and try again.")
        target = safe_next(target if isinstance(target, str) else None)
        address = client_address(request)
        wait_s = self.lockout.wait_s(address)
        if wait_s:
            error = f"Too many wrong tokens from {address}: try again in {math.ceil(wait_s)} s."
            response = self.render(request, session, "login.html", 429, next=target, error=error)
            response.headers.update(retry_after(wait_s))
            return response
        name = admin_named(given if isinstance(given, str) else None, self.tokens)
        if name is None:
            self.lockout.wrong(address)
            error = "That is not an admin's token."
            return self.render(request, session, "login.html", 403, next=target, error=error)
        self.lockout.right(address)
        response = RedirectResponse(target, status_code=303, headers=HEADERS)
        self.sessions.write(response, self.sessions.new(admin=name), secure=_https(request))
        return response

    async def logout(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        signed_out = self.sessions.new(admin=None)
        return self.redirect(request, signed_out, "/admin/login", "ok", "Signed out.")


def _https(request: Request) -> bool:
    return request.url.scheme == "https"
