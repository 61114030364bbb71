"""carbonhook's errors: one small hierarchy, carrying the data callers need."""

from __future__ import annotations


class CarbonhookError(Exception):
    """Base of every error carbonhook raises on purpose."""


class SignatureError(CarbonhookError):
    """The delivery's signature is missing or does not match any configured secret."""


class InvalidDelivery(CarbonhookError):
    """The body is signed but is not a delivery we can store; the message says why."""


class StoreUnavailable(CarbonhookError):
    """The event store cannot be reached; the sender should retry."""


class NotFound(CarbonhookError):
    """An event or capture the caller named does not exist."""


class Conflict(CarbonhookError):
    """The object is not in a state that allows the requested change."""


class ApiError(CarbonhookError):
    """An outbound API call failed."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PermanentError(ApiError):
    """A definite refusal that will not change on retry (400, 401, 403, 404, bad id)."""


class RetryableError(ApiError):
    """A definite failure that may pass later (429, 5xx before sending, connect errors)."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class AmbiguousError(RetryableError):
    """The request may have taken effect (timeout after sending, dropped connection, 5xx)."""
