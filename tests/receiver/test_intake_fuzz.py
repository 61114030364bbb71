"""Property-based tests of the running intake over real HTTP, and of the CLI's refusals.

Whatever arrives (any body, header, encoding, length or content type): never a 5xx, and never a
row without a valid signature. A validly signed body is stored (2xx) or refused (400), never 5xx.
The intake runs once per module on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, text

from carbonhook.database import sync_url
from receiver.signature import HEADER, sign
from tests.support import (
    CP_KEY,
    IMPACT_KEY,
    ROOT,
    SECRET,
    TABLES,
    free_port,
    make_body,
    query,
    settings_for_test,
    store_delivery,
)

LIMIT = 16 * 1024  # CARBONHOOK_MAX_BODY_BYTES of the intake under test
PROCESSED = ("crp.generated", "bill.confirmed")


class RunningIntake:
    def __init__(self, base: str, db: str) -> None:
        self.base = base
        self.db = db
        # A fresh connection each request: the server closes one after a 500, and a reused one
        # would turn the next example's answer into a connection reset.
        self.client = httpx.Client(base_url=base, timeout=15, limits=httpx.Limits(max_keepalive_connections=0))
        self.engine: Engine = create_engine(sync_url(db))

    def post(self, body: bytes, headers: dict[str, Any], *, chunked: bool = False) -> httpx.Response:
        content: Any = iter([body]) if chunked else body
        return self.client.post("/webhooks/carbonpass", content=content, headers=headers)

    def rows(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM events")).scalar_one())

    def has_event(self, event_id: int) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(text("SELECT 1 FROM events WHERE id = :id"), {"id": event_id})
            return found.first() is not None

    def kept_reason(self, body: bytes) -> str | None:
        """The reason stored with `body` kept as an invalid event (None if it is not kept)."""
        sha256 = hashlib.sha256(body).hexdigest()
        with self.engine.connect() as conn:
            found = conn.execute(
                text("SELECT last_error FROM events WHERE body_sha256 = :sha AND status = 'invalid'"), {"sha": sha256}
            )
            row = found.first()
            return None if row is None else str(row[0])

    def close(self) -> None:
        self.client.close()
        self.engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def intake(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningIntake]:
    """The receiver on a loopback port (memory broker), its database empty."""
    from carbonhook.cli.bootstrap import build_receiver_app
    from carbonhook.cli.lifecycle import start_server
    from carbonhook.migrate import upgrade
    from carbonhook.queue import make_broker

    if request.param == "sqlite":
        db = f"sqlite:///{tmp_path_factory.mktemp('fuzz')}/carbonhook.db"
        upgrade(db)
    else:
        db = str(request.getfixturevalue("pg_database"))
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    settings = settings_for_test(db, max_body_bytes=LIMIT)
    server = start_server(build_receiver_app(settings, broker=make_broker("memory://")), "127.0.0.1", 0, lifespan="on")
    running = RunningIntake(f"http://127.0.0.1:{server.port}", db)
    yield running
    running.close()
    server.stop()


def signature(body: bytes, secret: str = SECRET) -> str:
    return sign(body, secret=secret.encode())


# -- strategies ------------------------------------------------------------------------------

# What a header value may carry on the wire (visible ASCII, spaces, tabs, obs-text).
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=120
).map(lambda value: value.strip().encode("latin-1"))
hex_strings = st.text(alphabet="0123456789abcdefABCDEF", max_size=160)
content_types = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-16",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=xyz",
            "application/octet-stream",
        ]
    ),
    header_values,
)
extra_headers = st.dictionaries(
    st.sampled_from(["Content-Encoding", "Accept", "User-Agent", "X-Forwarded-For", "X-Request-Id", "Accept-Charset"]),
    header_values,
    max_size=3,
)
# Any character, lone surrogates included (JSON can carry them as \ud800 escapes), and a few
# strings that break things often enough to be worth trying every run.
TRICKY_TEXT = ["", " ", "\x00", "a\x00b", "\ud800", "\udfff", "\ufeff", "\u2028", "é", "\U0001d11e", "9" * 400]
any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=80) | st.sampled_from(TRICKY_TEXT)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=12,
)
offsets = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59))
)
timestamps = st.one_of(
    st.datetimes(timezones=st.none() | offsets).map(lambda moment: moment.isoformat()),
    st.sampled_from(
        [
            "2026-04-06T14:35:48Z",
            "2026-04-06",
            "2026-04-06T14:35:48.123456+05:30",
            "20260406T143548Z",
            "0001-01-01T00:00:00+00:01",  # the first minute of year 1, one minute east of UTC
            "9999-12-31T23:59:59-00:01",
        ]
    ),
    any_text,
    json_values,
)
subject_ids = st.one_of(
    st.from_regex(r"(crp|bill)_[A-Za-z0-9_-]{1,64}", fullmatch=True),
    any_text,
    st.text(max_size=300),
    json_values,
)
deliveries = st.one_of(
    st.fixed_dictionaries(
        {
            "event": st.sampled_from([*PROCESSED, "company.updated"]) | any_text | json_values,
            "timestamp": timestamps,
            "data": st.fixed_dictionaries({"id": subject_ids}, optional={"siteId": any_text, "status": any_text})
            | json_values,
        },
        optional={"extra": json_values},
    ),
    json_values,
)
ENCODINGS = ("utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1", "cp1252")


@st.composite
def encoded(draw: st.DrawFn, values: st.SearchStrategy[Any] = deliveries) -> bytes:
    """A JSON document in some encoding (ASCII-escaped or not), or bytes that only look like one."""
    document = json.dumps(draw(values), ensure_ascii=draw(st.booleans()))
    encoding = draw(st.sampled_from(ENCODINGS))
    try:
        body = document.encode(encoding, errors="surrogatepass")
    except UnicodeEncodeError:
        body = document.encode(encoding, errors="replace")
    return body[: LIMIT]


bodies = st.one_of(st.binary(max_size=2048), encoded())


# -- unsigned, wrongly signed, altered -------------------------------------------------------


@given(
    body=bodies,
    sig=st.one_of(st.none(), header_values, hex_strings, hex_strings.map(lambda h: "sha256=" + h)),
    content_type=content_types,
    extra=extra_headers,
    chunked=st.booleans(),
)
def test_a_request_without_a_valid_signature_is_401_and_stores_nothing(
    intake: RunningIntake, body: bytes, sig: bytes | str | None, content_type: bytes | str | None, extra: dict[str, bytes], chunked: bool
):
    headers: dict[str, Any] = dict(extra)
    if sig is not None:
        headers[HEADER] = sig
    if content_type is not None:
        headers["Content-Type"] = content_type
    before = intake.rows()
    response = intake.post(body, headers, chunked=chunked)
    assert response.status_code == 401, (response.status_code, response.text)
    assert response.json()["error"] == "invalid_signature"
    assert intake.rows() == before


@given(body=encoded(), cut=st.integers(0, 63), extra=hex_strings.filter(bool), secret=st.text(min_size=1, max_size=20))
def test_a_signature_of_the_wrong_length_form_or_secret_is_401_and_stores_nothing(
    intake: RunningIntake, body: bytes, cut: int, extra: str, secret: str
):
    good = signature(body)
    wrong = [
        good[:cut],
        good + extra,
        "sha256=" + good[:cut],
        good[:cut] + "g" + good[cut + 1 :],  # one character that is not hex
        good[: cut % 63 + 1] + " " + good[cut % 63 + 1 :],  # a space inside (around it is allowed)
        good + good,
    ]
    if secret != SECRET:
        wrong.append(signature(body, secret))
    before = intake.rows()
    for sig in wrong:
        response = intake.post(body, {HEADER: sig, "Content-Type": "application/json"})
        assert response.status_code == 401, (sig, response.status_code, response.text)
    assert intake.rows() == before


@given(body=encoded().filter(bool), data=st.data())
def test_a_body_changed_after_signing_is_401_and_stores_nothing(intake: RunningIntake, body: bytes, data: st.DataObject):
    sig = signature(body)
    at = data.draw(st.integers(0, len(body) - 1))
    flipped = bytearray(body)
    flipped[at] ^= data.draw(st.integers(1, 255))
    changed = [body[:at], body + data.draw(st.binary(min_size=1, max_size=50)), bytes(flipped)]
    before = intake.rows()
    for variant in changed:
        response = intake.post(variant, {HEADER: sig, "Content-Type": "application/json"})
        assert response.status_code == 401, (variant, response.status_code, response.text)
    assert intake.rows() == before


@given(size=st.integers(LIMIT + 1, 4 * LIMIT), signed=st.booleans(), chunked=st.booleans())
def test_an_oversized_body_is_413_and_stores_nothing(intake: RunningIntake, size: int, signed: bool, chunked: bool):
    body = make_body(padding="x" * size)
    headers = {HEADER: signature(body)} if signed else {}
    before = intake.rows()
    response = intake.post(body, headers, chunked=chunked)
    assert response.status_code == 413, (response.status_code, response.text)
    assert intake.rows() == before


# -- validly signed ---------------------------------------------------------------------------


def check_signed(intake: RunningIntake, body: bytes, content_type: Any = "application/json", chunked: bool = False) -> None:
    """A validly signed body is stored (202, or 200 for a duplicate) or refused with 400."""
    headers: dict[str, Any] = {HEADER: signature(body)}
    if content_type is not None:
        headers["Content-Type"] = content_type
    before = intake.rows()
    response = intake.post(body, headers, chunked=chunked)
    assert response.status_code in (200, 202, 400), (body[:300], response.status_code, response.text[:300])
    if response.status_code == 400:
        # Signed but unparseable: kept `invalid`, once per distinct body, the reason with it.
        assert response.json()["error"] == "invalid_delivery"
        assert intake.kept_reason(body) == response.json()["message"]
        assert intake.rows() in (before, before + 1)
        assert intake.post(body, headers, chunked=chunked).status_code == 400
        assert intake.rows() in (before, before + 1)
    else:
        assert intake.has_event(int(response.json()["id"]))
        assert intake.rows() == before + (response.status_code == 202)


@given(body=bodies, content_type=content_types, chunked=st.booleans())
def test_a_validly_signed_body_is_2xx_or_400_never_5xx(
    intake: RunningIntake, body: bytes, content_type: bytes | str | None, chunked: bool
):
    check_signed(intake, body, content_type, chunked)


@given(
    event=st.sampled_from(PROCESSED),
    moment=st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2100, 1, 1), timezones=st.none() | offsets),
    subject=st.from_regex(r"(crp|bill)_[A-Za-z0-9_-]{1,64}", fullmatch=True),
)
def test_a_well_formed_signed_delivery_is_stored_once(intake: RunningIntake, event: str, moment: Any, subject: str):
    body = json.dumps({"event": event, "timestamp": moment.isoformat(), "data": {"id": subject}}).encode()
    first = intake.post(body, {HEADER: signature(body)})
    assert first.status_code in (200, 202), (body, first.status_code, first.text)
    again = intake.post(body, {HEADER: signature(body)})
    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])


EDGE_CASES = {
    # datetime.fromisoformat accepts these, but converting them to UTC leaves datetime's range.
    "timestamp_below_datetime_range": make_body(ts="0001-01-01T00:00:00+14:00"),
    "timestamp_above_datetime_range": make_body(ts="9999-12-31T23:59:59-14:00"),
    # json.loads gives up with RecursionError and ValueError, not JSONDecodeError.
    "deeply_nested": b'{"event": "crp.generated", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "integer_over_4300_digits": b'{"event": "crp.generated", "n": ' + b"7" * 5000 + b"}",
    # JSON escapes that decode to strings a database cannot store as text.
    "lone_surrogate_in_id": b'{"event": "crp.generated", "timestamp": "2026-04-06T14:35:48Z", "data": {"id": "crp_\\ud800"}}',
    # Raw bytes that are not UTF-8 but that json.loads decodes with surrogatepass.
    "utf8_encoded_surrogate_in_id": b'{"event": "crp.generated", "timestamp": "2026-04-06T14:35:48Z", "data": {"id": "crp_\xed\xa0\x80"}}',
    "nul_in_id": b'{"event": "crp.generated", "timestamp": "2026-04-06T14:35:48Z", "data": {"id": "crp_a\\u0000b"}}',
    "nul_in_event_type": b'{"event": "crp.\\u0000", "timestamp": "2026-04-06T14:35:48Z", "data": {"id": "crp_nul"}}',
}


@pytest.mark.parametrize("body", list(EDGE_CASES.values()), ids=list(EDGE_CASES))
def test_a_signed_body_at_the_edges_of_json_datetime_and_text_is_2xx_or_400(intake: RunningIntake, body: bytes):
    check_signed(intake, body)


# -- broken framing, on a raw socket ----------------------------------------------------------


def raw_request(intake: RunningIntake, head: bytes, body: bytes, *, close_early: bool = False) -> bytes:
    host, port = intake.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + body)
        if close_early:
            return b""
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def head(length: bytes, sig: str) -> bytes:
    return (
        b"POST /webhooks/carbonpass HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + b"Content-Length: " + length + b"\r\n" + HEADER.encode() + b": " + sig.encode() + b"\r\nConnection: close\r\n\r\n"
    )


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_a_body_cut_off_by_a_closed_connection_stores_nothing(intake: RunningIntake):
    body = make_body(subject="crp_cutoff")
    before = intake.rows()
    raw_request(intake, head(str(len(body)).encode(), signature(body)), body[: len(body) // 2], close_early=True)
    assert intake.client.get("/healthz").status_code == 200
    assert intake.rows() == before


@pytest.mark.parametrize(
    ("length", "expected"),
    [(b"99999999999999999999", {400, 413}), (b"-1", {400}), (b"12abc", {400}), (str(LIMIT + 1).encode(), {413})],
)
def test_a_lying_or_malformed_content_length_is_4xx_and_stores_nothing(intake: RunningIntake, length: bytes, expected: set[int]):
    body = make_body(subject="crp_lying")
    before = intake.rows()
    answer = raw_request(intake, head(length, signature(body)), body)
    assert status_of(answer) in expected, answer[:300]
    assert intake.rows() == before


def test_a_content_length_shorter_than_the_body_is_judged_on_what_it_declares(intake: RunningIntake):
    body = make_body(subject="crp_short")
    before = intake.rows()
    answer = raw_request(intake, head(str(len(body) - 5).encode(), signature(body)), body)
    assert status_of(answer) == 401, answer[:300]
    assert intake.rows() == before


# -- the CLI refuses bad input in one line and changes nothing --------------------------------

BAD_RULES = '[[rule]]\nname = "no-amount"\non = "crp.generated"\n'


@pytest.fixture
def seeded(sqlite_url: str, tmp_path: Path) -> dict[str, str]:
    """A database with a failed and a pending event, and the settings that point at it."""
    failed = store_delivery(sqlite_url, make_body(subject="crp_failed"))
    store_delivery(sqlite_url, make_body(subject="crp_pending"))
    engine = create_engine(sync_url(sqlite_url))
    with engine.begin() as conn:
        conn.execute(text("UPDATE events SET status = 'failed', last_error = 'boom' WHERE id = :id"), {"id": failed})
    engine.dispose()
    good_rules = tmp_path / "rules.toml"
    good_rules.write_text('[[rule]]\nname = "flat"\non = "crp.generated"\ncapture_lbs = 5\n')
    (tmp_path / "bad.toml").write_text(BAD_RULES)
    return {
        "CARBONHOOK_DATABASE_URL": sqlite_url,
        "CARBONHOOK_BROKER_URL": "memory://",
        "CARBONHOOK_WEBHOOK_SECRETS": SECRET,
        "CARBONHOOK_CARBONPASS_API_KEY": CP_KEY,
        "CARBONHOOK_IMPACT_API_KEY": IMPACT_KEY,
        "CARBONHOOK_RULES_FILE": str(good_rules),
    }


def snapshot(db: str) -> list[Any]:
    return [
        query(db, "SELECT * FROM events ORDER BY id"),
        query(db, "SELECT * FROM replays ORDER BY id"),
        query(db, "SELECT * FROM captures ORDER BY id"),
    ]


def carbonhook(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "carbonhook", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def bad_rules(env: dict[str, str]) -> dict[str, str]:
    return {"CARBONHOOK_RULES_FILE": str(Path(env["CARBONHOOK_RULES_FILE"]).with_name("bad.toml"))}


CLI_REFUSALS = {
    "rules_check_with_a_bad_rules_file": (["rules", "check"], bad_rules, "no-amount"),
    "worker_with_a_bad_rules_file": (
        ["worker"],
        lambda env: {**bad_rules(env), "CARBONHOOK_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"},
        "no-amount",
    ),
    "run_with_a_bad_rules_file": (["run", "--port", "0"], bad_rules, "no-amount"),
    "replay_with_a_malformed_setting": (
        ["events", "replay", "--status", "failed"],
        lambda env: {"CARBONHOOK_HTTP_TIMEOUT_S": "abc"},
        "CARBONHOOK_HTTP_TIMEOUT_S",
    ),
    "run_with_a_malformed_setting": (
        ["run", "--port", "0"],
        lambda env: {"CARBONHOOK_HTTP_TIMEOUT_S": "abc"},
        "CARBONHOOK_HTTP_TIMEOUT_S",
    ),
    "replay_with_an_unknown_status": (["events", "replay", "--status", "nope"], lambda env: {}, "nope"),
    "list_with_an_unknown_status": (["events", "list", "--status", "nope"], lambda env: {}, "nope"),
}


@pytest.mark.parametrize(("args", "change", "named"), list(CLI_REFUSALS.values()), ids=list(CLI_REFUSALS))
def test_the_cli_refuses_bad_input_in_one_line_and_changes_nothing(seeded: dict[str, str], args: list[str], change: Any, named: str):
    db = seeded["CARBONHOOK_DATABASE_URL"]
    before = snapshot(db)
    done = carbonhook(args, {**seeded, **change(seeded)})
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("carbonhook: error: "), done.stderr
    assert named in lines[0]
    assert snapshot(db) == before
