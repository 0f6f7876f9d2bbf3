"""Errors the service turns into explicit HTTP answers (never an empty success)."""

from __future__ import annotations


class HandlerError(Exception):
    """Base class: ``status`` is the HTTP status, ``kind`` a short label used in metrics."""

    status = 500
    kind = "internal"

    def __init__(self, message: str, *, status: int | None = None, kind: str | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if kind is not None:
            self.kind = kind


class BadInput(HandlerError):
    """The request is wrong; the message names the field and the value."""

    status = 422
    kind = "bad_input"


class Forbidden(HandlerError):
    """The request asks for something refused by policy (e.g. a URL on a private network)."""

    status = 403
    kind = "forbidden"


class BackendFailure(HandlerError):
    """An upstream backend (search API, reader LLM, index) failed after bounded retries."""

    status = 502
    kind = "backend_error"


class BackendTimeout(HandlerError):
    """An upstream backend did not answer in time."""

    status = 504
    kind = "backend_timeout"


class Unavailable(HandlerError):
    """The feature is not configured (e.g. no web search key)."""

    status = 503
    kind = "unavailable"
