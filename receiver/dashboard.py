"""The admin dashboard under /admin: server-rendered pages over the admin operations.

Signing in with an admin's token (CARBONHOOK_ADMIN_TOKEN, CARBONHOOK_ADMIN_TOKENS) sets a signed
session cookie naming that admin (receiver/sessions.py), the one every replay and decision made
from the pages records; every POST must carry the session's CSRF token (both in
receiver/page_frame.py). Pages only read and call `AdminOperations`; the overview's figures come
from carbonhook/reports.py, and the Report page is receiver/report_views.py. How the pages look is receiver/pages.py; what their query
strings mean is receiver/params.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from carbonhook import reports
from carbonhook.errors import BadRequest, NotFound
from carbonhook.event_types import BILL_CONFIRMED, CRP_GENERATED, EMISSIONS_CATCH_UP
from carbonhook.schema import utcnow
from carbonhook.statuses import REPLAYABLE_EVENTS, CaptureStatus, EventStatus
from receiver.admin import AdminOperations, text
from receiver.lockout import Lockout
from receiver.page_frame import HEADERS, PageFrame
from receiver.pages import RulesInfo, chart_bars, pretty_json, share
from receiver.params import event_filter, page_cursor, query_string, safe_next
from receiver.report_views import ReportPages
from receiver.sessions import Session, Sessions

VIA = "dashboard"
# The statuses whose events the pages replay all at once (each behind a confirmation).
BULK_REPLAYS = (EventStatus.FAILED, EventStatus.IGNORED, EventStatus.INVALID)
# An `invalid` event's replay parses its body again (carbonhook/admin.py).
CAN_REPLAY = (*REPLAYABLE_EVENTS, EventStatus.INVALID)


class Dashboard(PageFrame):
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
        super().__init__(sessions, tokens, lockout)
        self.admin = admin
        self.rules_info = rules_info
        self.page_size = page_size

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
