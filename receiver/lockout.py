"""Wrong admin tokens, counted per client address: after too many, that address waits.

The token guards replays and approvals past the spend limits, so guessing it must be slow. A
request from a locked-out address is refused before its token is looked at: a guess made then
tells nothing. Behind a proxy, the address is the one uvicorn reads from the proxy's headers
(`--forwarded-allow-ips`); otherwise every client shares the proxy's address, and wrong tokens
lock the admin out too, while they keep coming. Each receiver process counts on its own.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from starlette.requests import HTTPConnection

WRONG_TOKENS = 10  # per address and window
WINDOW_S = 300.0
ADDRESSES = 10_000  # remembered at most; the longest quiet is forgotten first


class Lockout:
    """After `limit` wrong tokens from one address within `window_s`, that address waits until
    the oldest of them is `window_s` old. Used from the event loop only, so without a lock."""

    def __init__(
        self,
        *,
        limit: int = WRONG_TOKENS,
        window_s: float = WINDOW_S,
        max_addresses: int = ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_addresses = max_addresses
        self.clock = clock
        self._wrong: OrderedDict[str, deque[float]] = OrderedDict()

    def wait_s(self, address: str) -> float:
        """Seconds until `address` may present a token again; 0 when it may now."""
        times = self._wrong.get(address)
        if times is None or len(times) < self.limit:
            return 0.0
        return max(0.0, times[0] + self.window_s - self.clock())

    def wrong(self, address: str) -> None:
        """`address` presented a wrong token."""
        times = self._wrong.pop(address, None) or deque(maxlen=self.limit)
        times.append(self.clock())
        self._wrong[address] = times  # most recent last
        while len(self._wrong) > self.max_addresses:
            self._wrong.popitem(last=False)

    def right(self, address: str) -> None:
        """`address` presented the token: its wrong ones are forgotten."""
        self._wrong.pop(address, None)


def client_address(request: HTTPConnection) -> str:
    """The address a request came from, or one shared bucket when the server does not say."""
    return request.client.host if request.client else "unknown"


def retry_after(wait_s: float) -> dict[str, str]:
    """The `Retry-After` header for an address that must wait `wait_s`."""
    return {"Retry-After": str(math.ceil(wait_s))}
