"""The one error hierarchy. `ponder.proxy.errors` maps it onto the OpenAI error shape."""

from __future__ import annotations

import math


class PonderError(Exception):
    """Base of every error Ponder reports to a client."""

    status_code: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        """Seconds after which the same request may succeed (sent as `Retry-After`)."""
        self.retryable = retryable
        """A transient backend failure (upstream 429/5xx, a connection that failed or broke, a
        garbled answer): the same backend call may succeed if tried again."""

    @property
    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}

    def to_dict(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(PonderError):
    status_code = 400
    type = "invalid_request_error"


class Unsupported(InvalidRequest):
    """A well-formed request asks for something the chosen backend or strategy cannot do."""

    code = "unsupported_parameter"


class UnknownModel(PonderError):
    status_code = 404
    type = "invalid_request_error"
    code = "model_not_found"


class AuthenticationError(PonderError):
    status_code = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(PonderError):
    status_code = 403
    type = "permission_error"
    code = "permission_denied"


class NotFound(PonderError):
    status_code = 404
    type = "invalid_request_error"
    code = "not_found"


class Conflict(PonderError):
    """The change was based on a version of the data that someone else has changed since."""

    status_code = 409
    type = "invalid_request_error"
    code = "version_conflict"


class RateLimited(PonderError):
    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class Overloaded(PonderError):
    """Ponder is at its cap of concurrent requests and its queue is full (or the wait was too
    long). Retry after `Retry-After` seconds."""

    status_code = 503
    type = "server_error"
    code = "server_overloaded"


class LimitsUnavailable(PonderError):
    """Redis, where the replicas share their limits, failed or did not answer in time, and
    `PONDER_LIMITS_ON_REDIS_ERROR=closed`."""

    status_code = 503
    type = "api_error"
    code = "limits_unavailable"


class PayloadTooLarge(PonderError):
    """The request body is larger than the server takes (`PONDER_MAX_BODY_BYTES`)."""

    status_code = 413
    type = "invalid_request_error"
    code = "request_too_large"


class BudgetExceeded(InvalidRequest):
    """The strategy needs more backend calls than the request's budget allows. Not a 429:
    retrying the same request cannot succeed."""

    code = "budget_exceeded"


class DeadlineExceeded(PonderError):
    """The request ran past its deadline; every call in flight was cancelled."""

    status_code = 504
    type = "timeout"
    code = "deadline_exceeded"


class BackendError(PonderError):
    """The backend answered, but with a failure Ponder cannot fix."""

    status_code = 502
    type = "api_error"
    code = "backend_error"


class BackendUnavailable(BackendError):
    status_code = 503
    code = "backend_unavailable"


class UpstreamRateLimited(BackendError, RateLimited):
    """The upstream answered 429 (and kept doing so through Ponder's retries)."""

    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class StoreUnavailable(PonderError):
    """The SPL and memory database cannot be reached."""

    status_code = 503
    type = "api_error"
    code = "database_unavailable"


class BackendTimeout(BackendError):
    status_code = 504
    type = "timeout"
    code = "backend_timeout"


class ClientDisconnected(PonderError):
    """The client went away before the answer; nobody reads this response."""

    status_code = 499
    type = "client_closed_request"
    code = "client_closed_request"


class InternalError(PonderError):
    """Something Ponder did not expect; details go to the log, never to the client."""

    status_code = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str = "Internal server error.") -> None:
        super().__init__(message)
