"""The soak's deliveries, and a sender that retries each one until a receiver answers 2xx, as
CarbonPass does (any receiver: they stand behind one address in production)."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx

from receiver.signature import HEADER, sign

CRP_GENERATED, BILL_CONFIRMED = "crp.generated", "bill.confirmed"
# Of the distinct deliveries: this share are bills, this share a second event (a later
# timestamp) for a CRP already sent; and this many more sends repeat a delivery exactly.
BILL_SHARE = 0.25
SECOND_EVENT_SHARE = 0.1
RESEND_SHARE = 0.15


@dataclass(frozen=True)
class Delivery:
    """One distinct delivery: its identity is (event, subject, timestamp), as the intake's."""

    event: str
    subject: str
    timestamp: str

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.event, self.subject, self.timestamp)

    def body(self) -> bytes:
        data: dict[str, str] = {"id": self.subject}
        if self.event == BILL_CONFIRMED:
            data |= {"siteId": "site_3rZ1", "type": "electricity"}
        else:
            data |= {"status": "published"}
        payload = {"event": self.event, "timestamp": self.timestamp, "data": data}
        return json.dumps(payload, separators=(",", ":")).encode()


def plan_deliveries(count: int, rng: random.Random) -> tuple[list[Delivery], list[Delivery]]:
    """`count` distinct deliveries, and the order to send them in (with exact re-sends)."""
    start = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    distinct: list[Delivery] = []
    crps: list[str] = []
    for n in range(count):
        stamp = (start + timedelta(seconds=n)).isoformat().replace("+00:00", "Z")
        roll = rng.random()
        if roll < BILL_SHARE:
            distinct.append(Delivery(BILL_CONFIRMED, f"bill_soak{n:05d}", stamp))
        elif crps and roll < BILL_SHARE + SECOND_EVENT_SHARE:
            distinct.append(Delivery(CRP_GENERATED, rng.choice(crps), stamp))
        else:
            crps.append(f"crp_soak{n:05d}")
            distinct.append(Delivery(CRP_GENERATED, crps[-1], stamp))
    sends = distinct + rng.sample(distinct, int(count * RESEND_SHARE))
    rng.shuffle(sends)
    return distinct, sends


@dataclass
class Outcome:
    """What became of one send: every answer or error until a 2xx, and that 2xx."""

    delivery: Delivery
    tries: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    status: int | None = None  # the 2xx at last
    event_id: int | None = None


class Sender:
    """Sends `sends` over `duration_s` from a few threads; each send is retried (backoff 0.2 s
    doubling to 2 s) until a 2xx, or until `give_up_at` (monotonic)."""

    def __init__(
        self,
        sends: Sequence[Delivery],
        receivers: Callable[[], list[str]],
        secret: bytes,
        *,
        duration_s: float,
        threads: int = 6,
    ) -> None:
        self.sends = list(sends)
        self.receivers = receivers
        self.secret = secret
        self.duration_s = duration_s
        self.outcomes: list[Outcome] = [Outcome(d) for d in self.sends]
        self.give_up_at = float("inf")
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), name=f"soak-sender-{n}", daemon=True)
            for n in range(threads)
        ]
        self._started = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def done(self) -> bool:
        return not any(thread.is_alive() for thread in self._threads)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return self.done()

    def answered(self) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status is not None)

    def unanswered(self) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status is None)

    def _due(self, n: int) -> float:
        """When send `n` is due: spread evenly over the duration."""
        return self._started + self.duration_s * n / max(1, len(self.sends))

    def _run(self, serial: int) -> None:
        rng = random.Random(serial)
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                with self._lock:
                    n, self._next = self._next, self._next + 1
                if n >= len(self.sends):
                    return
                wait = self._due(n) - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    return
                self._deliver(client, self.outcomes[n], rng)

    def _deliver(self, client: httpx.Client, outcome: Outcome, rng: random.Random) -> None:
        body = outcome.delivery.body()
        headers = {HEADER: sign(body, secret=self.secret), "Content-Type": "application/json"}
        backoff = 0.2
        while not self._stop.is_set() and time.monotonic() < self.give_up_at:
            base = rng.choice(self.receivers())
            outcome.tries += 1
            try:
                answer = client.post(f"{base}/webhooks/carbonpass", content=body, headers=headers)
            except httpx.HTTPError as exc:
                outcome.failures[type(exc).__name__] += 1
            else:
                if 200 <= answer.status_code < 300:
                    outcome.status = answer.status_code
                    outcome.event_id = int(answer.json()["id"])
                    return
                outcome.failures[str(answer.status_code)] += 1
            self._stop.wait(backoff)
            backoff = min(2.0, backoff * 2)
