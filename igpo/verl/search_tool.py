"""verl ``BaseTool`` for the three search tools, over the search handler's client.

One class, :class:`SearchTool`, serves ``search`` (local corpus, the handler's ``/retrieve``),
``web_search`` and ``browse_webpage`` (the paper's tools, the handler's ``/tools/*``); which one is set
by ``config.name`` (or the name in ``tool_schema``). The schema shown to verl defaults to the one in
:data:`igpo.prompts.TOOL_SCHEMAS`, the same text the system prompt shows the model, so the YAML need
not repeat it (a ``tool_schema`` in the YAML must name one of the three tools).

``execute`` never raises on a handler failure: :class:`handler.client.HandlerClient` turns timeouts,
refused connections and HTTP errors into a short readable text, and the tool returns that text with
``metrics["error"] = True`` (the agent loop counts it as a tool error). Arguments are checked against
the tool's schema first; bad arguments also give a readable text and ``metrics["error"] = True``.

Config keys (``configs/tools/search_tool.yaml``)::

    type: native                # verl's tool type
    name: search                # search | web_search | browse_webpage
    handler_urls: [http://127.0.0.1:8000]   # list, or one string with comma-separated URLs
    topk: 3                     # passages per query (search only)
    timeout_s: 30               # per HTTP request
    max_retries: 2              # bounded retries over the URLs (round-robin)
    backoff_s: 0.5              # exponential backoff base
    max_connections: 32         # connection pool per event loop
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any

from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

from handler.client import HandlerClient
from igpo.prompts import TOOL_SCHEMAS, openai_tool
from igpo.rollout import call_handler_tool

CONFIG_KEYS = {
    "type",
    "name",
    "handler_urls",
    "topk",
    "timeout_s",
    "max_retries",
    "backoff_s",
    "max_connections",
}


def _urls(value: Any) -> list[str]:
    """``handler_urls`` as a list: a list of strings, or one string with comma-separated URLs."""
    if isinstance(value, str):
        urls = [u.strip() for u in value.split(",")]
    elif isinstance(value, (list, tuple)):
        urls = [str(u).strip() for u in value]
    else:
        raise ValueError(
            f"search tool config: handler_urls must be a list of URLs or a string, got {value!r}"
        )
    urls = [u for u in urls if u]
    if not urls:
        raise ValueError(f"search tool config: handler_urls is empty ({value!r})")
    for u in urls:
        if not u.startswith(("http://", "https://")):
            raise ValueError(
                f"search tool config: handler_urls entry {u!r} must start with http:// or https://"
            )
    return urls


def _number(config: dict[str, Any], key: str, default: float, kind: type, minimum: float) -> Any:
    value = config.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and value != int(value))
    ):
        raise ValueError(
            f"search tool config: {key} must be a{'n integer' if kind is int else ' number'}, got {value!r}"
        )
    if value < minimum:
        raise ValueError(f"search tool config: {key} must be >= {minimum}, got {value!r}")
    return kind(value)


class SearchTool(BaseTool):
    """``search`` / ``web_search`` / ``browse_webpage`` through the search handler (see module doc)."""

    def __init__(self, config: dict[str, Any], tool_schema: OpenAIFunctionToolSchema | None = None):
        config = dict(config or {})
        unknown = sorted(set(config) - CONFIG_KEYS)
        if unknown:
            raise ValueError(f"search tool config: unknown key(s) {unknown}; known: {sorted(CONFIG_KEYS)}")
        name = config.get("name") or (tool_schema.function.name if tool_schema is not None else "search")
        if name not in TOOL_SCHEMAS:
            raise ValueError(f"search tool config: name must be one of {sorted(TOOL_SCHEMAS)}, got {name!r}")
        if tool_schema is None:
            tool_schema = OpenAIFunctionToolSchema.model_validate(openai_tool(name))
        elif tool_schema.function.name != name:
            raise ValueError(
                f"search tool config: name {name!r} differs from tool_schema.function.name "
                f"{tool_schema.function.name!r}"
            )
        self.urls = _urls(config.get("handler_urls", "http://127.0.0.1:8000"))
        self.topk = _number(config, "topk", 3, int, 1)
        self.timeout_s = _number(config, "timeout_s", 30.0, float, 0.001)
        self.max_retries = _number(config, "max_retries", 2, int, 0)
        self.backoff_s = _number(config, "backoff_s", 0.5, float, 0.0)
        self.max_connections = _number(config, "max_connections", 32, int, 1)
        super().__init__(config, tool_schema)
        # httpx connection pools belong to one event loop: one client per loop that uses the tool.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, HandlerClient] = (
            weakref.WeakKeyDictionary()
        )

    def client(self) -> HandlerClient:
        """The handler client of the running event loop (created on first use)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = HandlerClient(
                self.urls,
                timeout_s=self.timeout_s,
                max_retries=self.max_retries,
                backoff_s=self.backoff_s,
                topk=self.topk,
                max_connections=self.max_connections,
            )
            self._clients[loop] = client
        return client

    async def execute(
        self, instance_id: str, parameters: dict[str, Any], **kwargs: Any
    ) -> tuple[ToolResponse, float, dict[str, Any]]:
        """Run the call; returns ``(ToolResponse(text), 0.0, metrics)`` and never raises on failure.

        ``metrics``: ``error`` (bool), ``error_reason`` (the start of the error text), ``latency_s``,
        ``tool``, and for searches ``num_queries``. The dispatch is :func:`igpo.rollout.call_handler_tool`,
        shared with the engine-agnostic loop.
        """
        t0 = time.perf_counter()
        metrics: dict[str, Any] = {"tool": self.name}
        if "query" in (parameters or {}) and isinstance(parameters["query"], list):
            metrics["num_queries"] = len(parameters["query"])
        # A malformed call gets a text, not a handler request; handler failures come back as text too.
        text, is_error = await call_handler_tool(self.client(), self.name, parameters, self.topk)
        metrics.update(error=is_error, error_reason=text[:300] if is_error else "")
        metrics["latency_s"] = time.perf_counter() - t0
        return ToolResponse(text=text), 0.0, metrics

    async def aclose(self) -> None:
        """Close the client of the running event loop (tests and clean shutdowns)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
