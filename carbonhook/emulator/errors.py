"""How an emulated API refuses a request, and how a fault breaks a connection."""

from __future__ import annotations

from carbonhook.errors import CarbonhookError


class InvalidRequest(CarbonhookError, ValueError):
    """A request the emulated API refuses, with the status and message to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ConnectionDropped(CarbonhookError):
    """Raised mid-response (fault mode "drop") so the server aborts the connection."""


class ConnectionReset(ConnectionDropped):
    """Raised (fault modes "reset_before", "reset_after") where no connection can be reset."""
