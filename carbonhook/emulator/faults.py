"""Injected failures: what a fault is, answers held until released, and broken connections.

The modes, for the call a fault hits:
- `status`: answer `status` (with `Retry-After` if given) and do nothing.
- `drop`: do the work, start the answer, then abort the connection mid-response.
- `hold`: do the work, then hold the answer until `/_emulator/release` (or 10 minutes).
- `late_finish`: read the request, then wait `delay_s` (or until released) and only then do
  the work, even if the caller has given up and gone: a create lands after the caller's timeout.
- `reset_before`: reset the connection before the body is read; nothing is done.
- `reset_after`: do the work, then reset the connection with no HTTP answer at all.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from carbonhook.emulator.errors import ConnectionDropped, ConnectionReset
from carbonhook.emulator.formats import is_int, is_number
from carbonhook.emulator.profile import DEFAULT_LATE_FINISH_S
from carbonhook.emulator.records import IMPACT_KINDS

# Endpoint names, as faults and the call log know them ("*" matches every endpoint).
IMPACT_ENDPOINTS = (*IMPACT_KINDS, "records", "customer_records", "cancel_impact")
CARBONPASS_ENDPOINTS = ("company", "emissions", "crp", "bills")
FAULT_ENDPOINTS = frozenset({*IMPACT_ENDPOINTS, *CARBONPASS_ENDPOINTS, "*"})

FAULT_MODES = frozenset({"status", "drop", "hold", "late_finish", "reset_before", "reset_after"})
HOLD_LIMIT_S = 600.0
# How a create call fails at random (profile.random_failure_rate): it may or may not be made.
RANDOM_FAILURE_MODES = ("status", "reset_after", "late_finish")
# SO_LINGER on, 0 s: closing the socket sends a TCP RST instead of a FIN.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


@dataclass
class Fault:
    """An injected failure for the next `times` calls to `endpoint` ("*" matches all)."""

    endpoint: str
    mode: str = "status"
    status: int = 500
    retry_after: float | None = None
    times: int = 1
    delay_s: float = DEFAULT_LATE_FINISH_S  # how long a late_finish waits


def checked_fault(
    endpoint: str,
    *,
    mode: str = "status",
    status: int | None = None,
    retry_after: float | None = None,
    times: int = 1,
    delay_s: float = DEFAULT_LATE_FINISH_S,
) -> Fault:
    """A fault from what a test asked for; ValueError naming what is malformed."""
    if endpoint not in FAULT_ENDPOINTS or mode not in FAULT_MODES:
        raise ValueError(
            f"endpoint must be in {sorted(FAULT_ENDPOINTS)}, mode in {sorted(FAULT_MODES)}"
        )
    if status is not None and (not is_int(status) or not 100 <= status <= 599):
        raise ValueError("status must be an HTTP status code")
    if retry_after is not None and (not is_number(retry_after) or retry_after < 0):
        raise ValueError("retry_after must be a non-negative number")
    if not is_int(times) or times < 1:
        raise ValueError("times must be a positive integer")
    if not is_number(delay_s) or not 0 <= delay_s <= HOLD_LIMIT_S:
        raise ValueError(f"delay_s must be a number from 0 to {HOLD_LIMIT_S:g}")
    return Fault(endpoint, mode, status or 500, retry_after, times, float(delay_s))


class Gate:
    """Requests waiting until released, or until their time limit; released from any thread."""

    def __init__(self) -> None:
        self._waiting: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def wait(self, limit_s: float) -> None:
        """Wait until `release()` is called, or `limit_s` at most."""
        loop, event = asyncio.get_running_loop(), asyncio.Event()
        self._waiting.append((loop, event))
        try:
            await asyncio.wait_for(event.wait(), limit_s)
        except TimeoutError:
            pass
        finally:
            self._waiting.remove((loop, event))

    def __len__(self) -> int:
        return len(self._waiting)

    def release(self) -> int:
        """Let every waiting request go; returns how many were waiting."""
        waiting = list(self._waiting)  # the loop's thread may be removing entries meanwhile
        for loop, event in waiting:
            loop.call_soon_threadsafe(event.set)
        return len(waiting)


class DroppedResponse(Response):
    """Starts `answer` (status, headers, Content-Length), then aborts before the body."""

    def __init__(self, answer: Response) -> None:
        super().__init__(status_code=answer.status_code)
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.answer.status_code}
        await send({**start, "headers": self.answer.raw_headers})
        raise ConnectionDropped("fault injected: connection dropped mid-response")


class ResetResponse(Response):
    """Resets the connection: the client gets a transport error and no HTTP answer at all."""

    def __init__(self) -> None:
        super().__init__(status_code=500)  # never sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = _transport_of(receive)
        if transport is None:
            raise ConnectionReset("fault injected: connection reset")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        transport.abort()
        # Return only once the server has seen the connection go: it then sends nothing (an
        # app that returns unanswered on a live connection would get a 500 sent for it).
        async with asyncio.timeout(5):
            while (await receive())["type"] != "http.disconnect":
                pass


@runtime_checkable
class _Transport(Protocol):
    """What a reset needs of a transport (uvloop's are not `asyncio.BaseTransport`s)."""

    def abort(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


def _transport_of(receive: Receive) -> _Transport | None:
    """The connection's transport, where the server is uvicorn; None elsewhere."""
    # ASGI has no message that closes a connection unanswered. uvicorn's `receive` is a method
    # of its request cycle, which holds the transport (under asyncio's loop and uvloop alike).
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    return transport if isinstance(transport, _Transport) else None
