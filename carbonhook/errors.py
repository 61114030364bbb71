"""carbonhook's errors: one small hierarchy, carrying the data callers need.

Every error the service raises on purpose derives from `CarbonhookError`. Those an HTTP client
can cause carry the answer they become (`http_status`, `code`); the receiver turns them into
responses in one place. An error with no `http_status` is ours, not the client's: a 500.
"""

from __future__ import annotations

from typing import ClassVar


class CarbonhookError(Exception):
    """Base of every error carbonhook raises on purpose."""

    http_status: ClassVar[int | None] = None
    code: ClassVar[str] = "internal"
    # Said to the client instead of the message, where the message is for the operator.
    public_message: ClassVar[str | None] = None


# -- start-up and the command line ----------------------------------------------------------


class SettingsError(CarbonhookError):
    """A setting is missing or malformed; the message names the variable."""


class RulesError(CarbonhookError):
    """The rules file cannot be read or is not valid; the message says where."""


class UsageError(CarbonhookError):
    """Bad arguments to a command: one line on stderr, exit 2."""


# -- what HTTP clients send -----------------------------------------------------------------


class SignatureError(CarbonhookError):
    """The delivery's signature is missing or does not match any configured secret."""

    http_status = 401
    code = "invalid_signature"


class InvalidDelivery(CarbonhookError):
    """The body is signed but is not a delivery we can store; the message says why."""

    http_status = 400
    code = "invalid_delivery"


class BodyTooLarge(CarbonhookError):
    """A request body is larger than the service reads."""

    http_status = 413
    code = "too_large"


class BodyTimeout(CarbonhookError):
    """A request body did not arrive within the time the service waits for one."""

    http_status = 408
    code = "timeout"


class UnsupportedMediaType(CarbonhookError):
    """A request body of a kind the route does not read (multipart on the admin surfaces)."""

    http_status = 415
    code = "unsupported_media_type"


class StoreUnavailable(CarbonhookError):
    """The event store cannot be reached; the sender should retry."""

    http_status = 503
    code = "unavailable"
    public_message = "event store unavailable, retry later"


class BadRequest(CarbonhookError):
    """An admin's request names something malformed (a status, a date, a page)."""

    http_status = 400
    code = "bad_request"


class NotFound(CarbonhookError):
    """An event or capture the caller named does not exist."""

    http_status = 404
    code = "not_found"


class Conflict(CarbonhookError):
    """The object is not in a state that allows the requested change."""

    http_status = 409
    code = "conflict"


# -- rules applied to an event --------------------------------------------------------------


class PlanError(CarbonhookError):
    """A rule cannot be applied to this event (a placeholder or an amount has no value)."""


# -- outbound API calls ---------------------------------------------------------------------


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


class NotVisibleYet(RetryableError):
    """A 404 for what an event names (its CRP, its site's emissions) soon after the event: it
    may not be visible through the API yet. Tried again until a grace window has passed."""


class StillSettling(RetryableError):
    """A capture's outcome is not known yet (its record may still appear): look again later.
    Waiting is not failing: it does not use up the event's retries."""


class AmbiguousError(RetryableError):
    """The request may have taken effect (timeout after sending, dropped connection, 5xx)."""


class RateLimited(RetryableError):
    """A call not performed for the API's rate limit: the shared budget had no request left in
    time (nothing was sent), or the API answered 429 (it did nothing). Waiting is not failing:
    it does not use up the event's retries."""


class RateBudgetUnavailable(CarbonhookError):
    """An API's shared rate budget cannot be read or written (its Redis or database is down)."""
