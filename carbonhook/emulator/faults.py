"""Injected failures: what a fault is, answers held until released, and a dropped answer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from carbonhook.emulator.errors import ConnectionDropped

FAULT_MODES = frozenset({"status", "drop", "hold"})
HOLD_LIMIT_S = 600.0


@dataclass
class Fault:
    """An injected failure for the next `times` calls to `endpoint` ("*" matches all)."""

    endpoint: str
    mode: str = "status"
    status: int = 500
    retry_after: float | None = None
    times: int = 1


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
