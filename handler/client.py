"""Agent-side client for the handler: async httpx, pooled connections, timeouts, bounded retries,
round-robin over several server URLs.

The text methods (``search_text``, ``web_search``, ``browse_webpage``) never raise on a handler
failure: they return a :class:`ToolResult` (a ``str``) whose text tells the model what went wrong and
whose ``ok`` flag lets the caller count tool errors, so training never stops because search did.
``retrieve`` returns structured hits and raises :class:`HandlerError` on failure.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx

log = logging.getLogger("handler.client")
T = TypeVar("T")


class HandlerError(Exception):
    """A handler call failed after the bounded retries; ``status`` is the HTTP status (0 = unreachable)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.message = message
        self.status = status


class ToolResult(str):
    """Tool-response text with ``ok`` (False when the call failed) and ``error`` (short reason)."""

    ok: bool
    error: str

    def __new__(cls, text: str, ok: bool = True, error: str = "") -> ToolResult:
        obj = super().__new__(cls, text)
        obj.ok = ok
        obj.error = error
        return obj

    @property
    def text(self) -> str:
        return str.__str__(self)


def format_hits(queries: list[str], hits: list[list[dict[str, Any]]]) -> str:
    """Retrieve hits as readable text: ``Doc 1 (Title: ...) text`` per hit, grouped by query."""
    blocks = []
    for q, qhits in zip(queries, hits, strict=True):
        lines = [f'Results for "{q}":'] if len(queries) > 1 else []
        if not qhits:
            lines.append("No results.")
        for n, h in enumerate(qhits, 1):
            doc = h.get("document", h)
            contents = str(doc.get("contents", ""))
            title, sep, text = contents.partition("\n")
            if not sep:
                title, text = "", title
            title = title.strip().strip('"')
            lines.append(f"Doc {n}(Title: {title}) {text.strip()}" if title else f"Doc {n} {text.strip()}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


class HandlerClient:
    """Async client for one or more handler servers (balanced round-robin, failover on errors)."""

    def __init__(
        self,
        urls: list[str] | str,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        backoff_s: float = 0.5,
        topk: int = 3,
        max_connections: int = 32,
    ):
        self.urls = [u.rstrip("/") for u in ([urls] if isinstance(urls, str) else urls)]
        if not self.urls:
            raise ValueError("HandlerClient needs at least one server URL")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.topk = topk
        self._rr = itertools.cycle(range(len(self.urls)))
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._client: httpx.AsyncClient | None = None
        self.errors = 0  # failed calls, for the caller's metrics

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s, limits=self._limits, trust_env=False)
        return self._client

    async def _post(self, path: str, payload: dict[str, Any]) -> Any:
        """POST with bounded retries over the servers; 4xx is not retried (the request itself is wrong)."""
        last = ""
        status = 0
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(self.backoff_s * (2 ** (attempt - 1)))
            url = self.urls[next(self._rr)] + path
            try:
                resp = await self._http().post(url, json=payload)
            except httpx.TimeoutException:
                last, status = f"no answer from {url} within {self.timeout_s:g}s", 0
                continue
            except httpx.HTTPError as e:
                last, status = f"handler unreachable at {url} ({type(e).__name__})", 0
                continue
            if resp.is_success:
                try:
                    return resp.json()
                except ValueError:
                    last, status = f"handler at {url} answered with invalid JSON", resp.status_code
                    continue
            status = resp.status_code
            try:
                detail = str(resp.json().get("detail", ""))[:300]
            except (ValueError, AttributeError):
                detail = resp.text[:300]
            last = f"HTTP {status}: {detail}"
            if 400 <= status < 500 and status not in (408, 429):
                break
        self.errors += 1
        raise HandlerError(last, status)

    async def retrieve(self, queries: list[str], topk: int | None = None) -> list[list[dict[str, Any]]]:
        """Ranked hits ``{"document": {"id", "contents"}, "score"}`` per query; raises HandlerError."""
        data = await self._post(
            "/retrieve", {"queries": list(queries), "topk": topk or self.topk, "return_scores": True}
        )
        result = data.get("result") if isinstance(data, dict) else None
        if not isinstance(result, list) or len(result) != len(queries):
            self.errors += 1
            raise HandlerError("handler answered /retrieve without one result list per query")
        return result

    async def search_text(self, queries: list[str] | str, topk: int | None = None) -> ToolResult:
        """Retrieve and format as text for ``<tool_response>``; failures become a short readable text."""
        qs = [queries] if isinstance(queries, str) else list(queries)
        try:
            hits = await self.retrieve(qs, topk)
        except HandlerError as e:
            return _failure("Search", e)
        return ToolResult(format_hits(qs, hits))

    async def web_search(self, queries: list[str] | str) -> ToolResult:
        """The paper's ``web_search`` tool through the handler."""
        qs = [queries] if isinstance(queries, str) else list(queries)
        try:
            data = await self._post("/tools/web_search", {"query": qs})
            return ToolResult(str(data["result"]))
        except HandlerError as e:
            return _failure("Web search", e)
        except (KeyError, TypeError):
            self.errors += 1
            return _failure("Web search", HandlerError("handler answered without 'result'"))

    async def browse_webpage(self, urls: list[str] | str, question: str) -> ToolResult:
        """The paper's ``browse_webpage`` tool through the handler."""
        us = [urls] if isinstance(urls, str) else list(urls)
        try:
            data = await self._post("/tools/browse_webpage", {"url_list": us, "question": question})
            return ToolResult(str(data["result"]))
        except HandlerError as e:
            return _failure("Browsing", e)
        except (KeyError, TypeError):
            self.errors += 1
            return _failure("Browsing", HandlerError("handler answered without 'result'"))

    async def health(self) -> dict[str, Any]:
        """``GET /health`` of the next server in rotation; raises HandlerError."""
        url = self.urls[next(self._rr)] + "/health"
        try:
            resp = await self._http().get(url)
            resp.raise_for_status()
            return resp.json()
        except httpx.HTTPError as e:
            raise HandlerError(f"handler unreachable at {url} ({type(e).__name__})") from None

    async def aclose(self) -> None:
        """Close pooled connections."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> HandlerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _failure(what: str, e: HandlerError) -> ToolResult:
    if e.status and 400 <= e.status < 500:
        text = f"{what} failed: the request was rejected ({e.message}). Fix the tool call and try again."
    else:
        text = f"{what} failed: {e.message}. Try again or answer with what you know."
    log.warning("%s failed: %s", what, e.message)
    return ToolResult(text, ok=False, error=e.message)


class SyncHandlerClient:
    """Blocking wrapper for sync code: runs a HandlerClient on a private event loop in a thread."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="handler-client")
        self._thread.start()
        self.client = HandlerClient(*args, **kwargs)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def retrieve(self, queries: list[str], topk: int | None = None) -> list[list[dict[str, Any]]]:
        return self._run(self.client.retrieve(queries, topk))

    def search_text(self, queries: list[str] | str, topk: int | None = None) -> ToolResult:
        return self._run(self.client.search_text(queries, topk))

    def web_search(self, queries: list[str] | str) -> ToolResult:
        return self._run(self.client.web_search(queries))

    def browse_webpage(self, urls: list[str] | str, question: str) -> ToolResult:
        return self._run(self.client.browse_webpage(urls, question))

    def close(self) -> None:
        """Close connections and stop the loop thread."""
        self._run(self.client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
