"""Statements run on the driver's connection (carbonhook/database.py: DriverStatement)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import bindparam, exc, insert, select, update

from carbonhook.database import DriverStatement, create_sync_engine
from carbonhook.schema import Event, Spend
from tests.support import query

WHEN = datetime(2026, 11, 30, 9, 30, tzinfo=UTC)


def add_event(engine, status: str = "queued") -> int:
    with engine.begin() as conn:
        return conn.execute(
            insert(Event)
            .values(
                type="crp.generated",
                subject_id="crp_1",
                event_ts=WHEN,
                received_at=WHEN,
                body=b"{}",
                status=status,
                attempts=0,
                available_at=WHEN,
                updated_at=WHEN,
            )
            .returning(Event.id)
        ).scalar_one()


CLAIM = DriverStatement(
    lambda _: update(Event)
    .where(Event.id == bindparam("event_id"), Event.status == "queued")
    .values(status="processing", lease_until=bindparam("until"), attempts=Event.attempts + 1)
    .returning(Event.id, Event.body, Event.lease_until, Event.received_at)
)


def test_values_go_in_and_come_out_through_the_column_types(db_url: str):
    engine = create_sync_engine(db_url, pool_size=1)
    event_id = add_event(engine)
    until = WHEN.astimezone(timezone(timedelta(hours=2))) + timedelta(minutes=5)

    result = CLAIM.run(engine, {"event_id": event_id, "until": until})

    assert result.rowcount == 1
    assert result.rows == [(event_id, b"{}", WHEN + timedelta(minutes=5), WHEN)]
    assert result.rows[0][2].tzinfo is UTC  # aware again, as UTCDateTime gives it
    # Stored as naive UTC, the way every other statement stores it.
    assert query(db_url, "SELECT lease_until FROM events")[0][0] in (
        datetime(2026, 11, 30, 9, 35),
        "2026-11-30 09:35:00.000000",
    )
    engine.dispose()


def test_a_statement_that_matches_nothing_says_so(db_url: str):
    engine = create_sync_engine(db_url, pool_size=1)
    event_id = add_event(engine, status="succeeded")
    result = CLAIM.run(engine, {"event_id": event_id, "until": WHEN})
    assert (result.rows, result.rowcount, result.first()) == ([], 0, None)
    engine.dispose()


def test_a_missing_parameter_is_refused_by_name_before_anything_is_sent(db_url: str):
    engine = create_sync_engine(db_url, pool_size=1)
    event_id = add_event(engine)

    with pytest.raises(exc.InvalidRequestError, match="'until'"):
        CLAIM.run(engine, {"event_id": event_id})

    assert query(db_url, "SELECT status, attempts FROM events") == [("queued", 0)]
    engine.dispose()


def test_it_commits_by_itself_and_leaves_the_connection_transactional(db_url: str):
    engine = create_sync_engine(db_url, pool_size=1)  # one connection: the same one again
    event_id = add_event(engine)
    CLAIM.run(engine, {"event_id": event_id, "until": WHEN})
    assert query(db_url, "SELECT status FROM events") == [("processing",)]

    # The connection went back to the pool as it came: a transaction still rolls back.
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(update(Event).values(status="failed"))
        raise RuntimeError("undo")
    assert query(db_url, "SELECT status FROM events") == [("processing",)]
    engine.dispose()


def test_an_error_is_sqlalchemys_and_the_connection_is_not_reused(db_url: str):
    engine = create_sync_engine(db_url, pool_size=1)
    duplicate = DriverStatement(lambda _: insert(Spend).values(window="day:x", lbs=1))
    duplicate.run(engine, {})
    with pytest.raises(exc.IntegrityError):
        duplicate.run(engine, {})

    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(update(Spend).values(lbs=2))
        raise RuntimeError("undo")
    assert query(db_url, "SELECT lbs FROM spend") == [(1,)]
    engine.dispose()


def test_after_the_server_drops_the_connection_the_next_statement_reconnects(pg_url: str):
    import psycopg

    engine = create_sync_engine(pg_url, pool_size=1)
    read = DriverStatement(lambda _: select(Spend.lbs))
    read.run(engine, {})
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    with pytest.raises(exc.OperationalError) as raised:
        read.run(engine, {})
    assert raised.value.connection_invalidated
    assert read.run(engine, {}).rows == []
    engine.dispose()


def test_an_in_list_to_expand_is_refused_when_compiled(sqlite_url: str):
    engine = create_sync_engine(sqlite_url)
    statement = DriverStatement(lambda _: select(Event.id).where(Event.status.in_(("a", "b"))))
    with pytest.raises(ValueError, match="cannot expand IN"):
        statement.run(engine, {})

