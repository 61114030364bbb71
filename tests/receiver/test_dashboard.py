"""The admin dashboard: its session and CSRF rules, its pages over real HTTP, the overview's SQL
on both databases, and an admin's walk through it in headless Chromium (screenshots of every
page land in test-artifacts/screenshots/, the overview also in docs/dashboard.png when CARBONHOOK_UPDATE_DOCS=1)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, insert

from carbonhook.reports import DayTotal, overview
from carbonhook.schema import Capture, Event, Spend, utcnow
from receiver.dashboard import dashboard_routes
from receiver.events import parse_delivery
from receiver.lockout import WRONG_TOKENS, Lockout
from receiver.pages import RulesInfo, chart_bars, share
from receiver.params import event_filter, safe_next
from receiver.sessions import COOKIE, Sessions
from tests.support import (
    ROOT,
    RunningEmulator,
    make_body,
    query,
    service_missing,
    settings_for_test,
    store_delivery,
)

TOKEN = "dashboard-token-0123456789"  # the admin named `admin`
ALICE = "alice-dashboard-token-0123456789"
BOB = "bob-dashboard-token-0123456789"
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
RULES = """\
[limits]
max_lbs_per_day = 1000
max_lbs_per_month = 25000

[[rule]]
name = "offset-published-crps"
on = "crp.generated"
when = { status = "published" }
capture_lbs = 500
customer_email = "esg@example.com"
customer_name = "Example Ltd"
"""


# -- rows written the way the workers would leave them ----------------------------------------


def add_event(
    engine: Engine,
    subject: str,
    status: str,
    *,
    at: datetime | None = None,
    error: str | None = None,
    event_type: str = "crp.generated",
) -> int:
    at = at or utcnow()
    with engine.begin() as conn:
        return int(
            conn.execute(
                insert(Event)
                .values(
                    type=event_type,
                    subject_id=subject,
                    event_ts=at,
                    received_at=at,
                    body=make_body(event_type, subject, at.strftime("%Y-%m-%dT%H:%M:%SZ")),
                    status=status,
                    attempts=1 if status != "pending" else 0,
                    last_error=error,
                    available_at=at,
                    updated_at=at,
                )
                .returning(Event.id)
            ).scalar_one()
        )


def add_capture(
    engine: Engine,
    event_id: int,
    subject: str,
    status: str,
    amount: int,
    *,
    day: date | None = None,
    action: str = "capture_carbon",
    rule: str = "offset-published-crps",
    error: str | None = None,
) -> int:
    now = utcnow()
    with engine.begin() as conn:
        return int(
            conn.execute(
                insert(Capture)
                .values(
                    event_id=event_id,
                    rule=rule,
                    subject_id=subject,
                    part=0,
                    action=action,
                    amount=amount,
                    notify=True,
                    approved=False,
                    status=status,
                    attempts=1,
                    spend_day=day.isoformat() if day else None,
                    error=error,
                    created_at=now,
                    updated_at=now,
                )
                .returning(Capture.id)
            ).scalar_one()
        )


def add_spend(engine: Engine, window: str, lbs: int) -> None:
    with engine.begin() as conn:
        conn.execute(insert(Spend).values(window=window, lbs=lbs))


# -- pure parts -------------------------------------------------------------------------------


def test_bars_scale_to_the_busiest_day_and_keep_empty_days():
    days = [
        DayTotal(date(2026, 3, 1), 0),
        DayTotal(date(2026, 3, 2), 50),
        DayTotal(date(2026, 3, 3), 100),
    ]
    bars = chart_bars(days)
    assert [b.height for b in bars] == [0, 48, 96]
    assert [b.y for b in bars] == [100, 52, 4]
    assert [b.x for b in bars] == [1.5, 11.5, 21.5]
    assert chart_bars([DayTotal(date(2026, 3, 1), 0)])[0].height == 0


def test_share_is_a_percentage_of_the_limit_or_none_without_one():
    assert share(250, 1000) == 25
    assert share(1500, 1000) == 150
    assert share(10, None) is None


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("/admin/events?status=failed", "/admin/events?status=failed"),
        ("/admin", "/admin"),
        ("https://evil.example/admin", "/admin"),
        ("//evil.example/admin", "/admin"),
        ("/\\evil.example", "/admin"),
        ("/admin\r\nSet-Cookie: x=1", "/admin"),
        ("/healthz", "/admin"),
        (None, "/admin"),
    ],
)
def test_redirects_after_a_form_stay_on_the_dashboard(given: str | None, kept: str):
    assert safe_next(given) == kept


def test_the_date_filters_are_whole_utc_days():
    filt = event_filter(
        {"status": "failed", "type": " crp.generated ", "from": "2026-03-01", "to": "2026-03-02"}
    )
    assert filt.status == "failed" and filt.type == "crp.generated"
    assert filt.since == datetime(2026, 3, 1, tzinfo=UTC)
    assert filt.until == datetime(2026, 3, 3, tzinfo=UTC)


def cookie_for(sessions: Sessions, session: Any) -> str:
    from starlette.responses import Response

    response = Response()
    sessions.write(response, session, secure=False)
    return response.headers["set-cookie"].split(";")[0].split("=", 1)[1]


def test_a_session_names_its_admin_is_signed_with_a_key_from_their_token_and_expires():
    now = [1_000_000.0]
    sessions = Sessions({"alice": ALICE}, lifetime_s=60, clock=lambda: now[0])
    session = sessions.new(admin="alice").with_flash("ok", "done")
    assert session.signed_in and session.admin == "alice"
    cookie = cookie_for(sessions, session)
    assert sessions.read(cookie) == session
    assert Sessions({"alice": "another-token-0123456789"}, clock=lambda: now[0]).read(cookie) is None
    assert sessions.read(cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")) is None
    assert sessions.read("not a cookie") is None
    assert ALICE not in cookie
    now[0] += 61
    assert sessions.read(cookie) is None


def test_a_session_is_refused_once_its_admin_is_removed_or_their_token_changes():
    both = Sessions({"alice": ALICE, "bob": BOB})
    alices, bobs = both.new(admin="alice"), both.new(admin="bob")
    alice_cookie, bob_cookie = cookie_for(both, alices), cookie_for(both, bobs)
    without_alice = Sessions({"bob": BOB})
    assert without_alice.read(alice_cookie) is None
    assert without_alice.read(bob_cookie) == bobs  # the others stay signed in
    rotated = Sessions({"alice": ALICE + "-rotated", "bob": BOB})
    assert rotated.read(alice_cookie) is None and rotated.read(bob_cookie) == bobs
    signed_out = both.new(admin=None)
    assert both.read(cookie_for(both, signed_out)) == signed_out and not signed_out.signed_in


def test_a_session_cannot_be_relabelled_as_another_admin():
    import base64

    sessions = Sessions({"alice": ALICE, "bob": BOB})
    alice_cookie = cookie_for(sessions, sessions.new(admin="alice"))
    name, _, signed = alice_cookie.partition("~")
    assert base64.urlsafe_b64decode(name + "==").decode() == "alice"
    as_bob = base64.urlsafe_b64encode(b"bob").decode().rstrip("=") + "~" + signed
    assert sessions.read(as_bob) is None
    assert sessions.read(signed) is None  # nor passed off as a session before signing in
    assert sessions.read("!!!~" + signed) is None


# -- the overview's SQL, on SQLite and PostgreSQL ------------------------------------------------


def test_the_overview_reads_spend_captured_pounds_per_day_and_the_latest_failures(db_url: str):
    from carbonhook.database import create_sync_engine

    engine = create_sync_engine(db_url, pool_size=1)
    try:
        today = date(2026, 3, 15)
        first = today - timedelta(days=29)
        event = add_event(engine, "crp_today", "succeeded")
        rows = [
            ("crp_a", "captured", 100, today, "capture_carbon"),
            ("crp_b", "captured", 50, today, "capture_carbon"),
            ("crp_c", "captured", 30, first, "capture_carbon"),
            ("crp_d", "captured", 999, first - timedelta(days=1), "capture_carbon"),
            ("crp_e", "failed", 700, today, "capture_carbon"),
            ("crp_f", "captured", 5, today, "plant_tree"),
            ("crp_g", "unknown", 40, today - timedelta(days=3), "capture_carbon"),
            ("crp_h", "held", 500, None, "capture_carbon"),
        ]
        for subject, status, amount, day, action in rows:
            add_capture(engine, event, subject, status, amount, day=day, action=action)
        add_spend(engine, "day:2026-03-15", 190)
        add_spend(engine, "day:2026-03-14", 1)
        add_spend(engine, "month:2026-03", 4321)
        base = datetime(2026, 3, 10, tzinfo=UTC)
        old = add_event(engine, "crp_old", "failed", at=base, error="404 old")
        newest = add_event(
            engine, "crp_new", "failed", at=base + timedelta(hours=2), error="400 new"
        )
        middle = add_event(
            engine, "crp_mid", "failed", at=base + timedelta(hours=1), error="500 mid"
        )

        figures = overview(engine, today=today, failures=2)

        assert (figures.spent_today, figures.spent_month) == (190, 4321)
        assert len(figures.lbs_per_day) == 30
        assert figures.lbs_per_day[0] == DayTotal(first, 30)
        assert figures.lbs_per_day[-1] == DayTotal(today, 150)
        assert sum(d.lbs for d in figures.lbs_per_day) == 180
        assert figures.captures_by_status == {"captured": 5, "failed": 1, "unknown": 1, "held": 1}
        assert [f["id"] for f in figures.latest_failures] == [newest, middle]
        assert figures.latest_failures[0]["last_error"] == "400 new"
        assert old not in [f["id"] for f in figures.latest_failures]
        for n, event_type in enumerate(["bill.calculated", "bill.calculated", "company.updated"]):
            add_event(engine, f"x_{n}", "ignored", event_type=event_type)
        ignored = overview(engine, today=today, ignored_types=1).ignored_by_type
        assert ignored == [("bill.calculated", 2)]
        assert overview(engine, today=today).ignored_by_type == [("bill.calculated", 2), ("company.updated", 1)]
        empty = overview(engine, today=date(2027, 1, 1))
        assert (empty.spent_today, empty.spent_month) == (0, 0)
        assert all(d.lbs == 0 for d in empty.lbs_per_day)
    finally:
        engine.dispose()


# -- the pages over real HTTP ---------------------------------------------------------------


class Site:
    """The receiver with the admin API and the dashboard on a real uvicorn."""

    def __init__(
        self,
        db: str,
        *,
        rules: RulesInfo | None = None,
        page_size: int = 25,
        emulator: RunningEmulator | None = None,
        tokens: dict[str, str] | None = None,
        emissions: Any = None,
    ) -> None:
        from carbonhook.admin import Admin
        from carbonhook.cli.bootstrap import build_receiver_app
        from carbonhook.cli.lifecycle import start_server
        from carbonhook.database import create_sync_engine
        from carbonhook.ledger import Ledger
        from carbonhook.queue import make_broker
        from carbonhook.store import EventStore

        self.db = db
        self.engine = create_sync_engine(db, pool_size=2)
        self.enqueued: list[int] = []
        self.admin = Admin(EventStore(self.engine), Ledger(self.engine), self.enqueued.extend, parse=parse_delivery, emissions=emissions)
        lockout = Lockout()
        self.tokens = tokens or {"admin": TOKEN}
        routes = dashboard_routes(
            self.admin, tokens=self.tokens, rules_info=lambda: rules, lockout=lockout, page_size=page_size
        )
        named = {name: token for name, token in self.tokens.items() if name != "admin"}
        settings = settings_for_test(db, emulator, admin_token=self.tokens.get("admin"), admin_tokens=named or None)
        app = build_receiver_app(settings, broker=make_broker("memory://"), admin=self.admin, routes=routes, lockout=lockout)
        self.server = start_server(app, "127.0.0.1", 0, lifespan="on")
        self.base = f"http://127.0.0.1:{self.server.port}"
        self.http = httpx.Client(base_url=self.base, timeout=10)

    def close(self) -> None:
        self.http.close()
        self.server.stop()
        self.engine.dispose()

    def sign_in(self, token: str = TOKEN) -> str:
        """Sign in through the form; returns the session's CSRF token."""
        login = self.http.get("/admin/login")
        answer = self.http.post(
            "/admin/login", data={"token": token, "csrf": csrf_in(login.text), "next": "/admin"}
        )
        assert answer.status_code == 303, answer.text
        return csrf_in(self.http.get("/admin").text)

    def status(self, event_id: int) -> str:
        return str(query(self.db, f"SELECT status FROM events WHERE id = {event_id}")[0][0])


def csrf_in(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def flash_in(html: str) -> str:
    found = re.search(r'<p class="flash (\w+)" role="status">([^<]*)</p>', html)
    return f"{found.group(1)}: {found.group(2)}" if found else ""


RULES_INFO = RulesInfo(
    path="/etc/carbonhook/rules.toml",
    sha256="0" * 64,
    text=RULES,
    max_lbs_per_day=1000,
    max_lbs_per_month=25000,
)


@pytest.fixture
def site(sqlite_url: str) -> Iterator[Site]:
    s = Site(sqlite_url, rules=RULES_INFO, page_size=2)
    yield s
    s.close()


def test_pages_send_a_visitor_without_a_session_to_sign_in(site: Site):
    for path in (
        "/admin",
        "/admin/events?status=failed",
        "/admin/events/1",
        "/admin/captures",
        "/admin/rules",
    ):
        answer = site.http.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/admin/login?next=%2Fadmin")
    assert (
        site.http.get("/admin/events?status=failed").headers["location"]
        == "/admin/login?next=%2Fadmin%2Fevents%3Fstatus%3Dfailed"
    )
    assert site.http.get("/admin/static/dashboard.css").status_code == 200


def test_signing_in_sets_a_signed_http_only_same_site_cookie_for_twelve_hours(site: Site):
    login = site.http.get("/admin/login")
    assert login.status_code == 200 and 'type="password"' in login.text
    assert login.headers["content-security-policy"].startswith("default-src 'none'")
    answer = site.http.post(
        "/admin/login", data={"token": TOKEN, "csrf": csrf_in(login.text), "next": "/admin/rules"}
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/admin/rules"
    cookie = answer.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "max-age", "samesite"} <= attributes
    assert "secure" not in attributes  # plain http here; see the https test
    assert "SameSite=lax" in cookie and "Path=/admin" in cookie and "Max-Age=43200" in cookie
    assert TOKEN not in cookie
    rules = site.http.get("/admin/rules")
    assert (
        rules.status_code == 200
        and RULES_INFO.path in rules.text
        and RULES_INFO.sha256 in rules.text
    )


def test_a_sign_in_behind_https_sets_a_secure_cookie(site: Site):
    https = {"X-Forwarded-Proto": "https"}  # uvicorn trusts it from 127.0.0.1
    login = site.http.get("/admin/login", headers=https)
    assert "Secure" in login.headers["set-cookie"]
    cookie = login.headers["set-cookie"].split(";")[0]  # httpx keeps a Secure cookie off plain http
    data = {"token": TOKEN, "csrf": csrf_in(login.text)}
    answer = httpx.post(
        f"{site.base}/admin/login", data=data, headers={**https, "Cookie": cookie}, timeout=10
    )
    assert answer.status_code == 303 and "Secure" in answer.headers["set-cookie"]


def test_a_wrong_token_or_a_sign_in_without_the_forms_csrf_is_refused(site: Site):
    login = site.http.get("/admin/login")
    wrong = site.http.post("/admin/login", data={"token": TOKEN + "x", "csrf": csrf_in(login.text)})
    assert wrong.status_code == 403 and "not an admin&#39;s token" in wrong.text
    assert site.http.get("/admin").status_code == 303
    forged = site.http.post("/admin/login", data={"token": TOKEN, "csrf": "forged"})
    assert forged.status_code == 403
    site.http.cookies.clear()
    assert site.http.post("/admin/login", data={"token": TOKEN, "csrf": "x"}).status_code == 403
    assert site.http.get("/admin").status_code == 303


def test_after_too_many_wrong_tokens_sign_in_waits_even_with_the_right_one(site: Site):
    csrf = csrf_in(site.http.get("/admin/login").text)
    for _ in range(WRONG_TOKENS - 1):
        assert site.http.post("/admin/login", data={"token": "guess", "csrf": csrf}).status_code == 403
    # The last allowed guess is made on the admin API: wrong tokens count the same on both.
    assert site.http.get("/admin/api/events", headers={"Authorization": "Bearer guess"}).status_code == 401
    locked = site.http.post("/admin/login", data={"token": TOKEN, "csrf": csrf})
    assert locked.status_code == 429 and "Too many wrong tokens" in locked.text
    assert 0 < int(locked.headers["Retry-After"]) <= 300
    assert site.http.get("/admin").status_code == 303  # not signed in
    assert site.http.get("/admin/api/events", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 429


def test_a_post_without_a_session_or_with_a_wrong_csrf_token_is_refused_and_changes_nothing(
    site: Site,
):
    failed = add_event(site.engine, "crp_failed1", "failed", error="400 refused")
    anonymous = httpx.post(
        f"{site.base}/admin/events/{failed}/replay", data={"csrf": "anything"}, timeout=10
    )
    assert anonymous.status_code == 403 and "Sign in first" in anonymous.text
    csrf = site.sign_in()
    for data in ({}, {"csrf": ""}, {"csrf": csrf[:-1]}, {"csrf": "x" * len(csrf)}):
        answer = site.http.post(f"/admin/events/{failed}/replay", data=data)
        assert answer.status_code == 403, data
        assert "CSRF" in answer.text
    bulk = site.http.post("/admin/events/replay-failed", data={"csrf": "wrong"})
    assert bulk.status_code == 403
    old = Sessions({"admin": "an-old-token-0123456789"})
    other = old.new(admin="admin")
    stale = cookie_for(old, other)
    rotated = httpx.post(
        f"{site.base}/admin/events/{failed}/replay",
        data={"csrf": other.csrf},
        headers={"Cookie": f"{COOKIE}={stale}"},
        timeout=10,
    )
    assert rotated.status_code == 403
    assert site.status(failed) == "failed" and site.enqueued == []
    assert query(site.db, "SELECT count(*) FROM replays") == [(0,)]


def test_replaying_from_the_event_page_queues_it_and_records_who_and_why(site: Site):
    failed = add_event(site.engine, "crp_failed1", "failed", error="capture_carbon: HTTP 400")
    csrf = site.sign_in()
    page = site.http.get(f"/admin/events/{failed}")
    assert page.status_code == 200
    assert (
        "capture_carbon: HTTP 400" in page.text
        and f'action="/admin/events/{failed}/replay"' in page.text
    )
    answer = site.http.post(
        f"/admin/events/{failed}/replay",
        data={"csrf": csrf, "reason": "fixed the <rules>", "next": f"/admin/events/{failed}"},
    )
    assert answer.status_code == 303 and answer.headers["location"] == f"/admin/events/{failed}"
    assert site.status(failed) == "queued" and site.enqueued == [failed]
    assert query(site.db, "SELECT admin, via, reason, previous_status FROM replays") == [
        ("admin", "dashboard", "fixed the <rules>", "failed")
    ]
    after = site.http.get(f"/admin/events/{failed}")
    assert flash_in(after.text) == f"ok: Event {failed} queued for replay (it was failed)."
    assert "fixed the &lt;rules&gt;" in after.text  # escaped
    assert flash_in(site.http.get(f"/admin/events/{failed}").text) == ""  # shown once
    again = site.http.post(
        f"/admin/events/{failed}/replay", data={"csrf": csrf, "next": f"/admin/events/{failed}"}
    )
    assert again.status_code == 303
    assert "only failed/succeeded/held/ignored/waiting can be replayed" in flash_in(
        site.http.get(f"/admin/events/{failed}").text
    )


def test_replay_all_failed_asks_first_and_replays_only_failed_events(site: Site):
    failed = [add_event(site.engine, f"crp_f{n}", "failed", error="boom") for n in range(3)]
    done = add_event(site.engine, "crp_done", "succeeded")
    csrf = site.sign_in()
    confirm = site.http.get("/admin/events/replay-failed")
    assert confirm.status_code == 200 and "Replay 3 failed events?" in confirm.text
    answer = site.http.post(
        "/admin/events/replay-failed", data={"csrf": csrf, "reason": "outage over"}
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/admin/events"
    assert sorted(site.enqueued) == failed
    assert [site.status(e) for e in failed] == ["queued"] * 3 and site.status(done) == "succeeded"
    assert flash_in(site.http.get("/admin/events").text) == "ok: 3 failed events queued for replay."
    assert "No failed events" in site.http.get("/admin/events/replay-failed").text


def test_the_overview_shows_ignored_types_and_their_events_are_replayed_by_type(site: Site):
    calculated = [add_event(site.engine, f"bill_i{n}", "ignored", event_type="bill.calculated") for n in range(2)]
    other = add_event(site.engine, "comp_i", "ignored", event_type="company & co.updated")
    csrf = site.sign_in()
    page = site.http.get("/admin").text
    assert 'href="/admin/events?status=ignored&amp;type=bill.calculated">bill.calculated</a>' in page
    assert 'href="/admin/events/replay-ignored?type=company%20%26%20co.updated"' in page
    listing = site.http.get("/admin/events?status=ignored").text
    assert 'href="/admin/events/replay-ignored"' in listing
    confirm = site.http.get("/admin/events/replay-ignored?type=bill.calculated")
    assert confirm.status_code == 200 and "Replay 2 ignored events?" in confirm.text
    assert "by the rules in force" in confirm.text
    answer = site.http.post(
        "/admin/events/replay-ignored", data={"csrf": csrf, "type": "bill.calculated", "reason": "rule added"}
    )
    assert answer.status_code == 303
    assert sorted(site.enqueued) == calculated and site.status(other) == "ignored"
    assert flash_in(site.http.get("/admin/events").text) == "ok: 2 ignored events queued for replay."
    assert site.http.get("/admin/events/replay-held").status_code == 404
    page = site.http.get(f"/admin/events/{other}").text
    assert f'action="/admin/events/{other}/replay"' in page


def test_an_invalid_event_shows_why_and_its_replay_parses_it_again(site: Site):
    from tests.support import keep_invalid

    still = keep_invalid(site.db, b'{"event": "crp.generated", "timestamp": "<soon>"}', "field 'timestamp' is not ISO-8601: '<soon>'")[0]
    later = keep_invalid(site.db, make_body(subject="crp_later"), "an earlier parser refused it")[0]
    csrf = site.sign_in()
    listing = site.http.get("/admin/events?status=invalid").text
    assert listing.count("(not parsed)") == 2 and 'href="/admin/events/replay-invalid"' in listing
    page = site.http.get(f"/admin/events/{still}").text
    assert "Why it did not parse" in page and "is not ISO-8601: &#39;&lt;soon&gt;&#39;" in page
    assert "&lt;soon&gt;" in page and f'action="/admin/events/{still}/replay"' in page
    site.http.post(f"/admin/events/{still}/replay", data={"csrf": csrf, "next": f"/admin/events/{still}"})
    assert f"error: event {still} still does not parse" in flash_in(site.http.get(f"/admin/events/{still}").text)
    assert site.status(still) == "invalid"
    confirm = site.http.get("/admin/events/replay-invalid")
    assert "Replay 2 invalid events?" in confirm.text and "parsed again" in confirm.text
    site.http.post("/admin/events/replay-invalid", data={"csrf": csrf})
    assert flash_in(site.http.get("/admin/events").text) == "ok: 1 invalid event queued for replay."
    assert site.enqueued == [later] and site.status(later) == "queued" and site.status(still) == "invalid"


def test_a_waiting_event_is_counted_listed_badged_and_can_be_replayed_to_check_now(site: Site):
    from sqlalchemy import update

    waiting = add_event(site.engine, "crp_draft", "waiting")
    note = "waiting for rule 'published' (crp.status is 'draft', wanted 'published')"
    with site.engine.begin() as conn:
        conn.execute(update(Event).where(Event.id == waiting).values(note=note))
    add_event(site.engine, "crp_done", "succeeded")
    csrf = site.sign_in()
    overview = site.http.get("/admin").text
    assert re.search(r'class="tile t-waiting" href="/admin/events\?status=waiting">\s*<span class="tile-count">1</span>', overview)
    listing = site.http.get("/admin/events?status=waiting").text
    assert '<option value="waiting"' in listing and '<span class="pill s-waiting">waiting</span>' in listing
    assert f'href="/admin/events/{waiting}"' in listing and "crp_done" not in listing
    assert "crp.status is &#39;draft&#39;" in listing
    page = site.http.get(f"/admin/events/{waiting}").text
    assert f'action="/admin/events/{waiting}/replay"' in page
    site.http.post(f"/admin/events/{waiting}/replay", data={"csrf": csrf, "next": f"/admin/events/{waiting}"})
    assert site.enqueued == [waiting] and site.status(waiting) == "queued"


def test_the_events_list_filters_and_pages(site: Site):
    day = datetime(2026, 3, 10, 12, tzinfo=UTC)
    ids = [
        add_event(site.engine, f"crp_e{n}", "failed", at=day + timedelta(days=n)) for n in range(3)
    ]
    bill = add_event(site.engine, "bill_1", "succeeded", event_type="bill.confirmed", at=day)
    site.sign_in()

    def listed(path: str) -> list[int]:
        page = site.http.get(path)
        assert page.status_code == 200, page.text
        return [
            int(i)
            for i in re.findall(r'<td data-label="ID"><a href="/admin/events/(\d+)"', page.text)
        ]

    assert listed("/admin/events") == [bill, ids[2]]
    first = site.http.get("/admin/events?status=failed").text
    older = re.search(r'href="([^"]+)" rel="next"', first)
    assert older and listed(older.group(1).replace("&amp;", "&")) == [ids[0]]
    assert listed("/admin/events?type=bill.confirmed") == [bill]
    assert listed("/admin/events?from=2026-03-11&to=2026-03-11") == [ids[1]]
    assert listed("/admin/events?status=failed&to=2026-03-10") == [ids[0]]
    assert site.http.get("/admin/events?status=nonsense").status_code == 400
    assert site.http.get("/admin/events?from=yesterday").status_code == 400
    assert site.http.get("/admin/events/99999").status_code == 404


def test_held_captures_are_approved_or_rejected_and_unknown_ones_resolved(site: Site):
    held_event = add_event(site.engine, "crp_held", "held")
    unknown_event = add_event(site.engine, "crp_unknown", "failed")
    approve = add_capture(site.engine, held_event, "crp_held", "held", 500)
    reject = add_capture(site.engine, held_event, "crp_held2", "held", 500)
    resolve = add_capture(
        site.engine, unknown_event, "crp_unknown", "unknown", 500, day=date.today()
    )
    csrf = site.sign_in()
    page = site.http.get("/admin/captures?status=held")
    assert (
        f'action="/admin/captures/{approve}/approve"' in page.text
        and f'action="/admin/captures/{reject}/reject"' in page.text
    )
    assert "/resolve" not in page.text
    assert (
        f'action="/admin/captures/{resolve}/resolve"'
        in site.http.get("/admin/captures?status=unknown").text
    )

    def post(capture: int, decision: str, **extra: str) -> str:
        answer = site.http.post(
            f"/admin/captures/{capture}/{decision}",
            data={"csrf": csrf, "next": "/admin/captures", **extra},
        )
        assert answer.status_code == 303
        return flash_in(site.http.get(answer.headers["location"]).text)

    assert (
        post(approve, "approve")
        == f"ok: Capture {approve} approved; event {held_event} queued to finish."
    )
    assert post(reject, "reject").startswith(f"ok: Capture {reject} rejected")
    assert post(resolve, "resolve", captured="yes").startswith(
        f"ok: Capture {resolve} resolved as captured"
    )
    assert post(approve, "approve").startswith("error: capture")  # no longer held
    assert post(resolve, "resolve").startswith("error: choose")
    rows = query(site.db, "SELECT id, status, approved FROM captures ORDER BY id")
    assert [(r[0], r[1], bool(r[2])) for r in rows] == [
        (approve, "pending", True),
        (reject, "rejected", False),
        (resolve, "captured", False),
    ]
    assert held_event in site.enqueued and unknown_event in site.enqueued
    assert site.http.post("/admin/captures/9999/approve", data={"csrf": csrf}).status_code == 404
    assert site.http.get("/admin/captures?status=nonsense").status_code == 400


def test_the_json_api_still_answers_beside_the_pages(site: Site):
    add_event(site.engine, "crp_api", "failed")
    answer = site.http.get("/admin/api/events", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200 and answer.json()["events"][0]["subject_id"] == "crp_api"
    assert site.http.get("/admin/api/events").status_code == 401


def test_signing_out_ends_the_session(site: Site):
    csrf = site.sign_in()
    answer = site.http.post("/admin/logout", data={"csrf": csrf})
    assert answer.status_code == 303 and answer.headers["location"] == "/admin/login"
    assert "Signed out." in site.http.get("/admin/login").text
    assert site.http.get("/admin").status_code == 303


def test_each_admin_signs_in_with_their_own_token_and_the_pages_record_and_show_who(
    sqlite_url: str,
):
    s = Site(sqlite_url, rules=RULES_INFO, tokens={"admin": TOKEN, "alice": ALICE, "bob": BOB})
    try:
        failed = add_event(s.engine, "crp_failed1", "failed", error="capture_carbon: HTTP 400")
        held_event = add_event(s.engine, "crp_held", "held")
        held = add_capture(s.engine, held_event, "crp_held", "held", 500)
        csrf = s.sign_in(ALICE)
        overview = s.http.get("/admin").text
        assert re.search(r'Signed in as <strong id="signed-in-as">alice</strong>', overview)
        s.http.post(f"/admin/events/{failed}/replay", data={"csrf": csrf, "reason": "fixed"})
        s.http.post(
            f"/admin/captures/{held}/approve",
            data={"csrf": csrf, "reason": "the board agreed", "next": "/admin/captures"},
        )
        assert query(s.db, "SELECT event_id, admin, via, reason FROM replays ORDER BY id") == [
            (failed, "alice", "dashboard", "fixed"),
            (held_event, "alice", "dashboard", f"capture {held} approved: the board agreed"),
        ]
        assert query(s.db, "SELECT capture_id, decision, admin, via, reason FROM decisions") == [
            (held, "approve", "alice", "dashboard", "the board agreed")
        ]
        event_page = s.http.get(f"/admin/events/{failed}").text
        assert '<td data-label="By">alice</td>' in event_page
        captures = s.http.get("/admin/captures").text
        assert re.search(
            r'Approved by <strong class="decided-by">alice</strong> via dashboard, [0-9: -]+ UTC: the board agreed',
            captures,
        )
        # Bob signs in on the same browser: from then on, what is done is his.
        s.http.post("/admin/logout", data={"csrf": csrf})
        csrf = s.sign_in(BOB)
        assert 'id="signed-in-as">bob<' in s.http.get("/admin").text
        add_event(s.engine, "crp_failed2", "failed")
        s.http.post("/admin/events/replay-failed", data={"csrf": csrf, "reason": "outage over"})
        assert query(s.db, "SELECT admin, reason FROM replays ORDER BY id DESC LIMIT 1") == [
            ("bob", "outage over")
        ]
    finally:
        s.close()


def test_a_removed_admins_session_is_refused_at_once_and_the_others_stay_signed_in(
    sqlite_url: str,
):
    before = Site(sqlite_url, tokens={"alice": ALICE, "bob": BOB})
    try:
        failed = add_event(before.engine, "crp_failed1", "failed", error="boom")
        alice_csrf = before.sign_in(ALICE)
        alice = before.http.cookies[COOKIE]
        before.http.cookies.clear()
        bob_csrf = before.sign_in(BOB)
        bob = before.http.cookies[COOKIE]
    finally:
        before.close()
    # The receiver starts again with alice removed from CARBONHOOK_ADMIN_TOKENS.
    after = Site(sqlite_url, tokens={"bob": BOB})
    try:
        after.http.cookies.clear()
        as_alice = {"Cookie": f"{COOKIE}={alice}"}
        page = after.http.get("/admin", headers=as_alice)
        assert page.status_code == 303 and page.headers["location"].startswith("/admin/login")
        replay = after.http.post(
            f"/admin/events/{failed}/replay", data={"csrf": alice_csrf}, headers=as_alice
        )
        assert replay.status_code == 403 and "Sign in first" in replay.text
        assert after.status(failed) == "failed"
        assert query(after.db, "SELECT count(*) FROM replays") == [(0,)]
        as_bob = {"Cookie": f"{COOKIE}={bob}"}
        assert 'id="signed-in-as">bob<' in after.http.get("/admin", headers=as_bob).text
        login = after.http.get("/admin/login")
        refused = after.http.post("/admin/login", data={"token": ALICE, "csrf": csrf_in(login.text)})
        assert refused.status_code == 403
        done = after.http.post(
            f"/admin/events/{failed}/replay", data={"csrf": bob_csrf}, headers=as_bob
        )
        assert done.status_code == 303 and after.status(failed) == "queued"
    finally:
        after.close()
    # alice is back with a new token: her old session stays refused.
    rotated = Site(sqlite_url, tokens={"alice": ALICE + "-rotated", "bob": BOB})
    try:
        assert rotated.http.get("/admin", headers={"Cookie": f"{COOKIE}={alice}"}).status_code == 303
    finally:
        rotated.close()


def test_without_a_rules_file_the_pages_say_so(sqlite_url: str):
    s = Site(sqlite_url, rules=None)
    try:
        s.sign_in()
        assert "No rules file is loaded." in s.http.get("/admin/rules").text
        assert "no limit" in s.http.get("/admin").text
    finally:
        s.close()


# -- an admin in headless Chromium ------------------------------------------------------------

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium() -> Iterator[Any]:
    from playwright.sync_api import Error, sync_playwright

    if not CHROMIUM.exists():
        service_missing("Chromium", FileNotFoundError(f"{CHROMIUM} (apt-get install chromium)"))
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        except Error as exc:
            service_missing("Chromium", exc)
        yield browser
        browser.close()


def deliver(db: str, subject: str) -> int:
    """Store a delivery from another thread: Playwright's sync API owns this thread's loop."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(store_delivery, db, make_body(subject=subject)).result()


def seed_history(engine: Engine, today: date) -> None:
    """A month of captures, two old failures and an unknown capture, so every page has content."""
    month = 0
    for back in range(1, 30):
        day = today - timedelta(days=back)
        lbs = (back * 137) % 900
        if back % 6 == 0 or lbs < 120:
            continue
        at = datetime(day.year, day.month, day.day, 9, tzinfo=UTC)
        event = add_event(engine, f"crp_hist{back:02d}", "succeeded", at=at)
        add_capture(engine, event, f"crp_hist{back:02d}", "captured", lbs, day=day)
        add_spend(engine, f"day:{day.isoformat()}", lbs)
        month += lbs if day.month == today.month else 0
    add_spend(engine, f"month:{today.isoformat()[:7]}", month)
    two_days_ago = datetime.combine(today - timedelta(days=2), datetime.min.time(), tzinfo=UTC)
    add_event(
        engine,
        "crp_gone42",
        "failed",
        at=two_days_ago,
        error="CarbonPass GET /crp/crp_gone42: HTTP 404 Not Found",
    )
    add_event(
        engine,
        "bill_x9Kq",
        "failed",
        at=two_days_ago + timedelta(hours=3),
        event_type="bill.confirmed",
        error="rules: emissions for site site_7 are missing",
    )
    unknown = add_event(
        engine,
        "crp_lost7",
        "failed",
        at=two_days_ago + timedelta(hours=5),
        error="capture 9: read timed out; reconciling",
    )
    error = "POST /v1/capture_carbon: read timed out after 10s"
    add_capture(
        engine, unknown, "crp_lost7", "unknown", 500, day=today - timedelta(days=2), error=error
    )


def test_an_admin_signs_in_replays_a_failed_event_and_approves_a_held_capture(
    chromium: Any, sqlite_url: str, emulator: RunningEmulator, tmp_path: Path
):
    from dramatiq.brokers.stub import StubBroker

    from carbonhook.cli.bootstrap import build_worker
    from workers.rules import RulesHolder, load_rules

    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(RULES)
    ruleset = load_rules(rules_file)
    info = RulesInfo(str(rules_file), ruleset.sha256, RULES, 1000, 25000)
    settings = settings_for_test(sqlite_url, emulator, rules_file=rules_file)
    worker = build_worker(settings, broker=StubBroker(), rules=RulesHolder(rules_file, ruleset))
    processor = worker.processor
    processor.enqueue = lambda event_id, delay=0: None
    site = Site(sqlite_url, rules=info, emulator=emulator, tokens={"admin": TOKEN, "alice": ALICE})
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    desktop = chromium.new_context(viewport={"width": 1280, "height": 860})
    phone = chromium.new_context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    desktop.set_default_timeout(5000)
    phone.set_default_timeout(5000)
    try:
        seed_history(site.engine, utcnow().date())
        emulator.control("faults", {"endpoint": "capture_carbon", "status": 400, "times": 1})
        failed = deliver(sqlite_url, "crp_7fQ2pLx")
        assert processor.process(failed) == "failed"
        done = deliver(sqlite_url, "crp_3mB8wRt")
        assert processor.process(done) == "succeeded"
        page = desktop.new_page()

        def shoot(name: str, *, full: bool = True) -> None:
            page.screenshot(path=str(SCREENSHOTS / f"{name}-desktop.png"), full_page=full)
            small = phone.new_page()
            small.goto(page.url)
            small.screenshot(path=str(SCREENSHOTS / f"{name}-phone.png"), full_page=full)
            small.close()

        # Sign in.
        page.goto(f"{site.base}/admin")
        assert page.url.startswith(f"{site.base}/admin/login")
        shoot("login")
        page.fill("#token", "not the token")
        page.click("button:has-text('Sign in')")
        assert page.locator("[role=alert]").inner_text() == "That is not an admin's token."
        page.fill("#token", ALICE)
        page.click("button:has-text('Sign in')")
        assert page.url == f"{site.base}/admin"
        assert page.locator("#signed-in-as").inner_text() == "alice"
        phone.add_cookies(desktop.cookies())
        assert page.locator(".tile.t-failed .tile-count").inner_text() == "4"
        assert page.locator("#failures ~ .table-scroll").inner_text().count("crp_7fQ2pLx") == 1
        shoot("overview")
        if os.environ.get("CARBONHOOK_UPDATE_DOCS"):  # the README's picture, refreshed on request
            page.screenshot(path=str(ROOT / "docs" / "dashboard.png"), full_page=True)

        # Requests without the session, or with a wrong CSRF token, are refused.
        outsider = chromium.new_context()
        refused = outsider.request.post(
            f"{site.base}/admin/events/{failed}/replay", form={"csrf": "guess"}
        )
        assert refused.status == 403
        outsider.close()
        forged = desktop.request.post(
            f"{site.base}/admin/events/{failed}/replay", form={"csrf": "guess"}
        )
        assert forged.status == 403
        assert site.status(failed) == "failed"

        # See the failed event, open it, replay it.
        page.click("nav >> text=Events")
        page.select_option("select[name=status]", "failed")
        page.click("button:has-text('Filter')")
        assert "status=failed" in page.url
        row = page.locator("tr", has_text="crp_7fQ2pLx")
        assert row.locator(".pill").inner_text() == "failed"
        shoot("events")
        row.locator(f"a[href='/admin/events/{failed}']").click()
        assert page.locator("h1 .pill").inner_text() == "failed"
        assert "400" in page.locator(".facts").inner_text()
        shoot("event-failed")
        page.fill("#reason", "1ClickImpact refused it; fixed the customer email")
        page.click("button:has-text('Replay')")
        assert (
            page.locator(".flash.ok").inner_text()
            == f"Event {failed} queued for replay (it was failed)."
        )
        assert page.locator("h1 .pill").inner_text() == "queued"
        assert site.enqueued == [failed]
        replays = page.locator("tr", has_text="1ClickImpact refused it")
        assert replays.locator("td[data-label=By]").inner_text() == "alice"
        assert query(sqlite_url, "SELECT admin, via FROM replays") == [("alice", "dashboard")]
        assert processor.process(failed) == "succeeded"
        page.reload()
        assert page.locator("h1 .pill").inner_text() == "succeeded"
        assert (
            page.locator("tr", has_text="1ClickImpact refused it").locator(".pill").inner_text()
            == "failed"
        )
        shoot("event")

        # Today's limit is 1000 lbs and 1000 are spent: the next capture is held.
        held = deliver(sqlite_url, "crp_9hT4kZe")
        assert processor.process(held) == "held"
        page.click("nav >> text=Captures")
        page.click(".chips >> text=held")
        capture = page.locator("tr", has_text="crp_9hT4kZe")
        assert capture.locator(".pill").inner_text() == "held"
        page.click(".chips >> text=all")
        shoot("captures")
        page.click(".chips >> text=held")
        capture = page.locator("tr", has_text="crp_9hT4kZe")
        capture.locator("input[name=reason]").fill("agreed with finance")
        capture.locator("button:has-text('Approve')").click()
        assert page.locator(".flash.ok").inner_text().startswith("Capture ")
        assert processor.process(held) == "succeeded"
        page.goto(f"{site.base}/admin/captures")
        capture = page.locator("tr", has_text="crp_9hT4kZe")
        assert capture.locator(".pill").inner_text() == "captured"
        assert capture.locator(".decided-by").inner_text() == "alice"
        assert "Approved by alice via dashboard" in capture.locator(".decided").inner_text()
        assert query(sqlite_url, "SELECT decision, admin, via, reason FROM decisions") == [
            ("approve", "alice", "dashboard", "agreed with finance")
        ]
        assert len(emulator.impacts) == 3

        # The rules in force.
        page.click("nav >> text=Rules")
        assert ruleset.sha256 in page.locator(".facts").inner_text()
        shoot("rules")

        # Bulk replay, after a confirmation.
        page.goto(f"{site.base}/admin/events")
        page.click("text=Replay all failed…")
        assert page.locator("h1").inner_text() == "Replay 3 failed events?"
        shoot("replay-failed")
        page.click("button:has-text('Replay 3 events')")
        assert page.locator(".flash.ok").inner_text() == "3 failed events queued for replay."
        assert query(sqlite_url, "SELECT count(*) FROM events WHERE status = 'failed'") == [(0,)]
        page.goto(f"{site.base}/admin")
        shoot("overview-after")
    finally:
        desktop.close()
        phone.close()
        site.close()
        worker.close()
