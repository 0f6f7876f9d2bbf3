"""uvicorn's HTTP protocol with a deadline on the request head.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but waits forever for a request
head: a client that connects and sends nothing, or half a header, holds its connection open. The
protocol classes here close a connection whose next request head is not complete within
``limits.header_timeout_s`` of connecting (or of the previous answer). The body has its own deadline
(``limits.body_timeout_s``, a 408 from the app). The value is read from ``HANDLER_CONFIG_JSON``, which
``python -m handler serve`` sets for every worker process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("handler.serving")

DEFAULT_HEADER_TIMEOUT_S = 10.0
_timeout: float | None = None


def header_timeout_s() -> float:
    """``limits.header_timeout_s`` of the served config (10 s when none is set)."""
    global _timeout
    if _timeout is None:
        try:
            raw = json.loads(os.environ.get("HANDLER_CONFIG_JSON") or "{}")
            _timeout = float(raw.get("limits", {}).get("header_timeout_s", DEFAULT_HEADER_TIMEOUT_S))
        except (ValueError, TypeError, AttributeError):
            _timeout = DEFAULT_HEADER_TIMEOUT_S
    return _timeout


class _HeadDeadline:
    """Mixin for a uvicorn HTTP protocol: close the connection when no new request head has been
    parsed within the deadline. Checked against uvicorn 0.55 (h11 and httptools protocols): both set
    ``self.cycle`` to a new ``RequestResponseCycle`` when a request head is complete, call
    ``on_response_complete`` when an answer is sent (then start a pipelined request, if any) and
    ``connection_lost`` when the connection ends."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_head_deadline(None)

    def on_response_complete(self) -> None:
        finished = getattr(self, "cycle", None)  # a pipelined request may start inside the call below
        super().on_response_complete()  # type: ignore[misc]
        self._arm_head_deadline(finished)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)  # type: ignore[misc]

    def _cancel_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _arm_head_deadline(self, cycle: Any) -> None:
        self._cancel_head_deadline()
        transport = getattr(self, "transport", None)
        if transport is None or transport.is_closing():
            return
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(header_timeout_s(), self._head_deadline_passed, cycle)

    def _head_deadline_passed(self, cycle: Any) -> None:
        self._head_timer = None
        transport = getattr(self, "transport", None)
        current = getattr(self, "cycle", None)
        # A request in progress is never cut off here: httptools sets ``cycle`` to a pipelined request as
        # soon as its head is parsed, so the cycle seen at arming time may be one that is still running
        # (its end re-arms the deadline); its body has a deadline of its own (408 from the app).
        idle = current is None or getattr(current, "response_complete", True)
        if current is cycle and idle and transport is not None and not transport.is_closing():
            log.info("closing a connection that sent no complete request head in %gs", header_timeout_s())
            transport.close()


class HeadDeadlineH11Protocol(_HeadDeadline, H11Protocol):
    """uvicorn's h11 protocol with the request-head deadline."""


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeadDeadlineHttpToolsProtocol(_HeadDeadline, HttpToolsProtocol):
        """uvicorn's httptools protocol with the request-head deadline."""

    PROTOCOL: type = HeadDeadlineHttpToolsProtocol
except ImportError:  # httptools is optional (uvicorn falls back to h11 the same way)
    PROTOCOL = HeadDeadlineH11Protocol
