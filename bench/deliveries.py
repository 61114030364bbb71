"""Signed deliveries for the load generators, written ahead of time (wrk's Lua has no HMAC)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from receiver.signature import sign

EVENT = "crp.generated"


def delivery(subject_id: str, timestamp: datetime) -> bytes:
    """A `crp.generated` body as CarbonPass sends it."""
    stamp = timestamp.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    payload = {
        "event": EVENT,
        "timestamp": stamp,
        "data": {"id": subject_id, "status": "published"},
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def signed_line(body: bytes, secret: bytes) -> str:
    """One line of a requests file: `<hex signature> <body>`."""
    return f"{sign(body, secret=secret)} {body.decode()}\n"


def write_new(path: Path, count: int, *, tag: str, secret: bytes) -> Path:
    """`count` deliveries that are all new: each has its own data.id (`crp_<tag>_<n>`)."""
    now = datetime.now(UTC).replace(microsecond=0)
    with path.open("w") as out:
        for n in range(count):
            out.write(signed_line(delivery(f"crp_{tag}_{n}", now), secret))
    return path


def write_duplicate(path: Path, *, tag: str, secret: bytes) -> tuple[Path, bytes]:
    """One delivery, to be sent again and again; returns the file and the body (store it first)."""
    body = delivery(f"crp_{tag}_dup", datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1))
    path.write_text(signed_line(body, secret))
    return path, body


def read_lines(path: Path) -> list[tuple[str, bytes]]:
    """(signature, body) pairs of a requests file."""
    pairs = []
    for line in path.read_text().splitlines():
        signature, _, body = line.partition(" ")
        pairs.append((signature, body.encode()))
    return pairs
