"""The event store's tables. Alembic migrations are the only source of the real schema;
these models must match them (a test compares the two)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Id = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python, naive UTC in the database (same on SQLite and PostgreSQL)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw SQLite text
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def sqlite_event_ts(moment: datetime) -> str:
    """An event's timestamp as SQLite stores it, where a redelivery's identity is matched on
    its text: naive UTC as sqlite3's default datetime adapter wrote it (`isoformat(" ")`, no
    fraction when it is 0). It must never change; written out here because Python 3.12
    deprecates that adapter. (SQLAlchemy's own SQLite format always writes the fraction.)"""
    if moment.tzinfo is None:
        raise ValueError("naive datetime given as an event's timestamp")
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ")


class Base(DeclarativeBase):
    pass


_KEPT_BODY = text("body_sha256 IS NOT NULL")


class Event(Base):
    """One delivery, stored once; the row is also the outbox for the queue.

    A signed delivery that did not parse is kept too (status `invalid`, the reason in
    `last_error`), once per distinct body: `body_sha256` is set for those alone, `type` is
    empty, `subject_id` is that hash and `event_ts` the time it came, until a replay parses it.
    """

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("type", "subject_id", "event_ts", name="uq_events_identity"),
        Index("ix_events_status_received", "status", "received_at"),
        Index("ix_events_received", "received_at"),
        Index("ix_events_status_available", "status", "available_at"),
        Index(
            "uq_events_body_sha256",
            "body_sha256",
            unique=True,
            postgresql_where=_KEPT_BODY,
            sqlite_where=_KEPT_BODY,
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(String(100))
    subject_id: Mapped[str] = mapped_column(String(255))
    event_ts: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    body: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempt_token: Mapped[str | None] = mapped_column(String(32))
    available_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    body_sha256: Mapped[str | None] = mapped_column(String(64))
    # When the event first waited for a rule's `wait_until`, by the database's clock.
    waiting_since: Mapped[datetime | None] = mapped_column(UTCDateTime())


class EventAttempt(Base):
    """One try at processing an event: when, how it ended, why."""

    __tablename__ = "event_attempts"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id"), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    http_status: Mapped[int | None] = mapped_column(Integer)


class Replay(Base):
    """An admin's replay of an event: when, who (None before named admins), through which
    interface, why."""

    __tablename__ = "replays"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    admin: Mapped[str | None] = mapped_column(String(64))
    via: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    previous_status: Mapped[str] = mapped_column(String(16))


class Capture(Base):
    """The ledger: one planned impact, written before the API is called."""

    __tablename__ = "captures"
    __table_args__ = (
        UniqueConstraint("rule", "subject_id", "part", name="uq_captures_rule_subject_part"),
        UniqueConstraint("user_id", "time_utc", name="uq_captures_impact"),
        Index("ix_captures_status_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id"), index=True)
    rule: Mapped[str] = mapped_column(String(100))
    subject_id: Mapped[str] = mapped_column(String(255))
    part: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(32))
    amount: Mapped[int] = mapped_column(BigInteger)
    customer_email: Mapped[str | None] = mapped_column(String(320))
    customer_name: Mapped[str | None] = mapped_column(String(200))
    notify: Mapped[bool] = mapped_column(Boolean, default=True)
    approved: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    attempted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    user_id: Mapped[str | None] = mapped_column(String(100))
    time_utc: Mapped[str | None] = mapped_column(String(40))
    customer_id: Mapped[str | None] = mapped_column(String(100))
    error: Mapped[str | None] = mapped_column(Text)
    http_status: Mapped[int | None] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(Text)
    rules_hash: Mapped[str | None] = mapped_column(String(64))
    site_id: Mapped[str | None] = mapped_column(String(255))
    period: Mapped[str | None] = mapped_column(String(32))
    basis_tco2e: Mapped[float | None] = mapped_column(Float)
    spend_day: Mapped[str | None] = mapped_column(String(10))
    attempt_token: Mapped[str | None] = mapped_column(String(32))
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    audit_note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Decision(Base):
    """An admin's decision on a capture (approve, reject, resolve) and what the row became:
    when, who, through which interface, why. Written in the decision's own transaction."""

    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    capture_id: Mapped[int] = mapped_column(ForeignKey("captures.id"), index=True)
    decision: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    admin: Mapped[str] = mapped_column(String(64))
    via: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)


class Spend(Base):
    """Pounds reserved per limit window (`day:2026-11-25`, `month:2026-11`); updated atomically."""

    __tablename__ = "spend"

    window: Mapped[str] = mapped_column(String(20), primary_key=True)
    lbs: Mapped[int] = mapped_column(BigInteger, default=0)


class DeltaMark(Base):
    """How much of a site's emissions a delta rule has offset in a period."""

    __tablename__ = "delta_marks"

    rule: Mapped[str] = mapped_column(String(100), primary_key=True)
    site_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    period: Mapped[str] = mapped_column(String(32), primary_key=True)
    offset_tco2e: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Reversal(Base):
    """An impact found standing twice for one capture, and its reversal at 1ClickImpact."""

    __tablename__ = "reversals"
    __table_args__ = (UniqueConstraint("user_id", "time_utc", name="uq_reversals_impact"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    capture_id: Mapped[int] = mapped_column(ForeignKey("captures.id"), index=True)
    user_id: Mapped[str] = mapped_column(String(100))
    time_utc: Mapped[str] = mapped_column(String(40))
    reason: Mapped[str] = mapped_column(String(200))
    found_at: Mapped[datetime] = mapped_column(UTCDateTime())
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error: Mapped[str | None] = mapped_column(Text)


class Deployment(Base):
    """This deployment's id, made once by the migrations: part of every capture's tag."""

    __tablename__ = "deployment"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Notification(Base):
    """A message to operators about one change (the outbox): written in the change's own
    transaction, once per `dedupe_key`; the sweeper sends it (carbonhook/outbox.py).

    `fields` is JSON of ids, names and amounts only: never a body, a secret or a token.
    `delivered` is JSON of the destinations (hashes of their address) that took it."""

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("dedupe_key", name="uq_notifications_dedupe_key"),
        Index("ix_notifications_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    dedupe_key: Mapped[str] = mapped_column(String(200))
    fields: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    claim_token: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)


class RateBudget(Base):
    """One API's request budget, shared by every worker when there is no Redis: a token
    bucket kept as its theoretical arrival time, and the pause a 429 set (epoch microseconds)."""

    __tablename__ = "rate_budgets"

    api: Mapped[str] = mapped_column(String(32), primary_key=True)
    tat_us: Mapped[int] = mapped_column(BigInteger, default=0)
    paused_until_us: Mapped[int] = mapped_column(BigInteger, default=0)
    strikes: Mapped[int] = mapped_column(Integer, default=0)
    struck_at_us: Mapped[int] = mapped_column(BigInteger, default=0)
