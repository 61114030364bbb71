"""The admin dashboard under /admin: server-rendered pages over the admin operations.

Signing in with an admin's token (CARBONHOOK_ADMIN_TOKEN, CARBONHOOK_ADMIN_TOKENS) sets a signed
session cookie naming that admin (receiver/sessions.py), the one every replay and decision made
from the pages records; every POST must carry the session's CSRF token. Pages only read and
call `AdminOperations`; the overview's figures come from carbonhook/reports.py, and the Report
page is receiver/report_views.py. How the pages look is receiver/pages.py; what their query
strings mean is receiver/params.py.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from carbonhook import reports
from carbonhook.errors import BadRequest, CarbonhookError, Conflict, NotFound
from carbonhook.event_types import BILL_CONFIRMED, CRP_GENERATED, EMISSIONS_CATCH_UP
from carbonhook.schema import utcnow
from carbonhook.statuses import REPLAYABLE_EVENTS, CaptureStatus, EventStatus
from receiver.admin import AdminOperations, admin_named, text
from receiver.lockout import Lockout, client_address, retry_after
from receiver.pages import RulesInfo, chart_bars, environment, pretty_json, share
from receiver.params import event_filter, here, page_cursor, query_string, safe_next
from receiver.report_views import ReportPages
from receiver.sessions import COOKIE, Session, Sessions

VIA = "dashboard"
# The statuses whose events the pages replay all at once (each behind a confirmation).
BULK_REPLAYS = (EventStatus.FAILED, EventStatus.IGNORED, EventStatus.INVALID)
# An `invalid` event's replay parses its body again (carbonhook/admin.py).
CAN_REPLAY = (*REPLAYABLE_EVENTS, EventStatus.INVALID)
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


class Dashboard:
    """The pages; each handler reads or calls one thing and renders or redirects."""

    def __init__(
        self,
        admin: AdminOperations,
        sessions: Sessions,
        tokens: Mapping[str, str],
        rules_info: Callable[[], RulesInfo | None],
        page_size: int,
        lockout: Lockout,
    ) -> None:
        self.admin = admin
        self.sessions = sessions
        self.tokens = tokens
        self.lockout = lockout
        self.rules_info = rules_info
        self.page_size = page_size
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

    # -- pages -------------------------------------------------------------------------

    async def overview(self, request: Request, session: Session) -> Response:
        today = utcnow().date()

        def read() -> tuple[dict[str, int], reports.Overview, RulesInfo | None]:
            counts = self.admin.store.count_by_status()
            return counts, reports.overview(self.admin.store.engine, today=today), self.rules_info()

        counts, figures, rules = await run_in_threadpool(read)
        day_limit = rules.max_lbs_per_day if rules else None
        month_limit = rules.max_lbs_per_month if rules else None
        return self.render(
            request,
            session,
            "overview.html",
            statuses=tuple(EventStatus),
            capture_statuses=tuple(CaptureStatus),
            counts=counts,
            figures=figures,
            today=today,
            limits=[
                ("Today", figures.spent_today, day_limit, share(figures.spent_today, day_limit)),
                (
                    today.strftime("%B %Y"),
                    figures.spent_month,
                    month_limit,
                    share(figures.spent_month, month_limit),
                ),
            ],
            bars=chart_bars(figures.lbs_per_day),
            chart_total=sum(d.lbs for d in figures.lbs_per_day),
            chart_max=max((d.lbs for d in figures.lbs_per_day), default=0),
        )

    async def events(self, request: Request, session: Session) -> Response:
        params = request.query_params
        filt = event_filter(params)
        cursor = page_cursor(params.get("before"))
        rows = await run_in_threadpool(
            lambda: self.admin.store.list_events(filt, limit=self.page_size + 1, before_id=cursor)
        )
        kept = {k: params.get(k) for k in ("status", "type", "from", "to")}
        older = None
        if len(rows) > self.page_size:
            rows = rows[: self.page_size]
            older = "/admin/events" + query_string({**kept, "before": rows[-1]["id"]})
        return self.render(
            request,
            session,
            "events.html",
            rows=rows,
            statuses=tuple(EventStatus),
            types=(CRP_GENERATED, BILL_CONFIRMED, EMISSIONS_CATCH_UP),
            params=kept,
            paged=cursor is not None,
            newest="/admin/events" + query_string(kept),
            older=older,
            replay_all=[
                (status, f"/admin/events/replay-{status}" + query_string({**kept, "status": None}))
                for status in BULK_REPLAYS
                if status == EventStatus.FAILED or params.get("status") == status
            ],
        )

    async def event(self, request: Request, session: Session) -> Response:
        event_id = request.path_params["id"]
        detail = await run_in_threadpool(self.admin.store.get_event, event_id)
        return self.render(
            request,
            session,
            "event.html",
            event=detail,
            payload=pretty_json(detail["body"]),
            replayable=detail["status"] in CAN_REPLAY,
            can_replay=CAN_REPLAY,
        )

    async def replay(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        event_id = request.path_params["id"]
        reason, who = _reason(form), _who(session)
        previous = await run_in_threadpool(
            lambda: self.admin.replay(event_id, admin=who, via=VIA, reason=reason)
        )
        message = f"Event {event_id} queued for replay (it was {previous})."
        return self.redirect(request, session, f"/admin/events/{event_id}", "ok", message)

    async def confirm_replay_all(self, request: Request, session: Session) -> Response:
        status = _bulk_status(request)
        filt = event_filter({**request.query_params, "status": status})
        ids = await run_in_threadpool(self.admin.store.matching_ids, filt)
        params = {k: request.query_params.get(k) or "" for k in ("type", "from", "to")}
        return self.render(
            request,
            session,
            "replay_all.html",
            status=status,
            count=len(ids),
            ids=ids[:20],
            params=params,
        )

    async def replay_all(
        self, request: Request, session: Session, form: dict[str, str]
    ) -> Response:
        status = _bulk_status(request)
        filt = event_filter({**form, "status": status})
        reason, who = _reason(form), _who(session)
        ids = await run_in_threadpool(
            lambda: list(self.admin.replay_matching(filt, admin=who, via=VIA, reason=reason))
        )
        noun = "event" if len(ids) == 1 else "events"
        message = f"{len(ids)} {status} {noun} queued for replay."
        return self.redirect(request, session, "/admin/events", "ok", message)

    async def captures(self, request: Request, session: Session) -> Response:
        status = request.query_params.get("status") or None
        if status is not None and status not in tuple(CaptureStatus):
            raise BadRequest(f"unknown capture status {status!r}")
        cursor = page_cursor(request.query_params.get("before"))
        rows = await run_in_threadpool(
            lambda: self.admin.list_captures(
                status=status, limit=self.page_size + 1, before_id=cursor
            )
        )
        older = None
        if len(rows) > self.page_size:
            rows = rows[: self.page_size]
            older = "/admin/captures" + query_string({"status": status, "before": rows[-1]["id"]})
        return self.render(
            request,
            session,
            "captures.html",
            rows=rows,
            statuses=tuple(CaptureStatus),
            status=status or "",
            paged=cursor is not None,
            newest="/admin/captures" + query_string({"status": status}),
            older=older,
        )

    async def decide(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        capture_id = request.path_params["id"]
        decision = request.path_params["decision"]
        back = safe_next(form.get("next"), "/admin/captures")
        reason, who = _reason(form), _who(session)
        if decision == "approve":
            row = await run_in_threadpool(
                lambda: self.admin.approve(capture_id, admin=who, via=VIA, reason=reason)
            )
            done = "approved"
        elif decision == "reject":
            row = await run_in_threadpool(
                lambda: self.admin.reject(capture_id, admin=who, via=VIA, reason=reason)
            )
            done = "rejected"
        elif decision == "resolve" and form.get("captured") in ("yes", "no"):
            captured = form["captured"] == "yes"
            row = await run_in_threadpool(
                lambda: self.admin.resolve(
                    capture_id, captured=captured, admin=who, via=VIA, reason=reason
                )
            )
            done = "resolved as " + ("captured" if captured else "not captured")
        else:
            raise BadRequest("choose approve, reject, or resolve with captured yes or no")
        message = f"Capture {capture_id} {done}; event {row.event_id} queued to finish."
        return self.redirect(request, session, back, "ok", message)

    async def rules(self, request: Request, session: Session) -> Response:
        info = await run_in_threadpool(self.rules_info)
        stale = False
        if info is not None:
            stale = hashlib.sha256(info.text.encode()).hexdigest() != info.sha256
        return self.render(request, session, "rules.html", info=info, stale=stale)


def _https(request: Request) -> bool:
    return request.url.scheme == "https"


def _who(session: Session) -> str:
    """The signed-in admin a page's form acts as (`action` lets no one else through)."""
    assert session.admin is not None
    return session.admin


def _reason(form: dict[str, str]) -> str | None:
    """A form's reason, as the API takes one (a `BadRequest` is shown on the page)."""
    return text(form.get("reason", "").strip(), "reason")


def _bulk_status(request: Request) -> str:
    """The status a bulk replay's path names (`/admin/events/replay-failed`, …)."""
    status = str(request.path_params["status"])
    if status not in BULK_REPLAYS:
        raise NotFound(f"no bulk replay of {status!r} events")
    return status


def dashboard_routes(
    admin: AdminOperations,
    *,
    tokens: Mapping[str, str],
    rules_info: Callable[[], RulesInfo | None],
    lockout: Lockout,
    page_size: int = 25,
) -> list[BaseRoute]:
    """The /admin pages (next to, never over, the /admin/api routes) for the admins in
    `tokens` (name → token); `lockout` counts wrong tokens, shared with the admin API."""
    d = Dashboard(admin, Sessions(tokens), tokens, rules_info, page_size, lockout)
    report = ReportPages(admin, d.render, lambda: utcnow().date(), HEADERS)
    return [
        Route("/admin", d.view(d.overview), methods=["GET"]),
        Route("/admin/login", d.login_form, methods=["GET"]),
        Route("/admin/login", d.login, methods=["POST"]),
        Route("/admin/logout", d.action(d.logout), methods=["POST"]),
        Route("/admin/events", d.view(d.events), methods=["GET"]),
        Route("/admin/events/replay-{status}", d.view(d.confirm_replay_all), methods=["GET"]),
        Route("/admin/events/replay-{status}", d.action(d.replay_all), methods=["POST"]),
        Route("/admin/events/{id:int}", d.view(d.event), methods=["GET"]),
        Route("/admin/events/{id:int}/replay", d.action(d.replay), methods=["POST"]),
        Route("/admin/captures", d.view(d.captures), methods=["GET"]),
        Route("/admin/captures/{id:int}/{decision:str}", d.action(d.decide), methods=["POST"]),
        Route("/admin/rules", d.view(d.rules), methods=["GET"]),
        Route("/admin/report", d.view(report.page), methods=["GET"]),
        Route("/admin/report.csv", d.view(report.download), methods=["GET"]),
        Mount("/admin/static", StaticFiles(packages=[("receiver", "static")]), name="admin-static"),
    ]
