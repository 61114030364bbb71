"""The impact report over HTTP: its query read from parameters, its CSV answer, and the
dashboard's Report page with its CSV download (carbonhook/impact_report.py makes the report)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from carbonhook.impact_report import (
    GROUPINGS,
    ImpactReport,
    ReportQuery,
    csv_filename,
    report_query,
    to_csv,
)
from receiver.params import query_string
from receiver.sessions import Session

if TYPE_CHECKING:
    from receiver.admin import AdminOperations  # which routes to these helpers


def query_of(params: Mapping[str, str], today: date) -> ReportQuery:
    """The report a request asks for (`from`, `to`, `by`); a `BadRequest` says what is wrong."""
    return report_query(params.get("from"), params.get("to"), params.get("by"), today=today)


def csv_response(report: ImpactReport, headers: Mapping[str, str] | None = None) -> Response:
    """The standing impacts as a CSV download."""
    disposition = f'attachment; filename="{csv_filename(report.query)}"'
    return Response(
        to_csv(report),
        media_type="text/csv",
        headers={**(headers or {}), "Content-Disposition": disposition},
    )


Render = Callable[..., Response]


class ReportPages:
    """The Report page and its CSV download, for signed-in admins (GET only: they change
    nothing, so no CSRF token is asked)."""

    def __init__(
        self,
        admin: AdminOperations,
        render: Render,
        today: Callable[[], date],
        headers: Mapping[str, str],
    ) -> None:
        self.admin = admin
        self.render = render
        self.today = today
        self.headers = headers

    async def page(self, request: Request, session: Session) -> Response:
        query = query_of(request.query_params, self.today())
        report = await run_in_threadpool(self.admin.impact_report, query)
        kept = {"from": query.start.isoformat(), "to": query.end.isoformat(), "by": query.by}
        return self.render(
            request,
            session,
            "report.html",
            report=report,
            groupings=GROUPINGS,
            download="/admin/report.csv" + query_string(kept),
        )

    async def download(self, request: Request, session: Session) -> Response:
        query = query_of(request.query_params, self.today())
        report = await run_in_threadpool(self.admin.impact_report, query)
        return csv_response(report, self.headers)
