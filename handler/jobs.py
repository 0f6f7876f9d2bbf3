"""A cap on the jobs an executor holds: running or waiting, counted until each really ends."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any


class JobSlots:
    """At most ``limit`` jobs of one executor running or waiting for a thread.

    A slot is taken at submission and given back when the job ends (done, failed or cancelled before
    it started), not when the request that asked for it gives up: a thread still busy with a job whose
    request timed out keeps its slot, so a few slow jobs cannot grow a hidden queue behind the cap."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0
        self._lock = threading.Lock()

    def _release(self, _: Future | None = None) -> None:
        with self._lock:
            self.count -= 1

    def submit(self, executor: Executor, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future | None:
        """``executor.submit(fn, ...)``, or None (nothing submitted) when all ``limit`` slots are taken."""
        with self._lock:
            if self.count >= self.limit:
                return None
            self.count += 1
        try:
            fut = executor.submit(fn, *args, **kwargs)
        except BaseException:
            self._release()
            raise
        fut.add_done_callback(self._release)
        return fut
