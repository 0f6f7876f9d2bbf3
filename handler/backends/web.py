"""Web search through Serper (Google) or Azure Bing, with the result text the agent reads."""

from __future__ import annotations

from typing import Any

import httpx

from handler.config import WebConfig, secret
from handler.errors import BackendFailure, Unavailable
from handler.http import request_with_retry


class WebSearch:
    """Async client for one web search engine; the API key is read from the environment per call."""

    def __init__(self, cfg: WebConfig, client: httpx.AsyncClient):
        self.cfg = cfg
        self.client = client

    @property
    def engine(self) -> str:
        return self.cfg.engine

    def _key(self) -> str:
        env = self.cfg.serper_key_env if self.cfg.engine == "serper" else self.cfg.bing_key_env
        return secret(env)

    def configured(self) -> bool:
        """Whether an API key is present (the key itself is never exposed)."""
        return bool(self._key())

    async def search(self, query: str, num: int) -> list[dict[str, str]]:
        """Hits ``{"title", "url", "snippet"}`` for one query."""
        key = self._key()
        if not key:
            env = self.cfg.serper_key_env if self.cfg.engine == "serper" else self.cfg.bing_key_env
            raise Unavailable(f"web search is not configured: set the environment variable {env}")
        common = dict(
            timeout_s=self.cfg.timeout_s, max_retries=self.cfg.max_retries, backoff_s=self.cfg.backoff_s
        )
        if self.cfg.engine == "serper":
            resp = await request_with_retry(
                self.client,
                "POST",
                self.cfg.serper_url,
                what="serper web search",
                headers={"X-API-KEY": key, "Content-Type": "application/json"},
                json={"q": query, "num": num},
                **common,
            )
            items = _json(resp, "serper").get("organic") or []
            hits = [
                {
                    "title": str(i.get("title", "")),
                    "url": str(i.get("link", "")),
                    "snippet": str(i.get("snippet", "")),
                }
                for i in items
                if isinstance(i, dict)
            ]
        else:
            resp = await request_with_retry(
                self.client,
                "GET",
                self.cfg.bing_url,
                what="bing web search",
                headers={"Ocp-Apim-Subscription-Key": key},
                params={"q": query, "count": num, "textDecorations": "false", "textFormat": "Raw"},
                **common,
            )
            items = ((_json(resp, "bing").get("webPages") or {}).get("value")) or []
            hits = [
                {
                    "title": str(i.get("name", "")),
                    "url": str(i.get("url", "")),
                    "snippet": str(i.get("snippet", "")),
                }
                for i in items
                if isinstance(i, dict)
            ]
        return hits[:num]


def _json(resp: httpx.Response, what: str) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        raise BackendFailure(f"{what} answered with non-JSON content") from None
    if not isinstance(data, dict):
        raise BackendFailure(f"{what} answered with unexpected JSON ({type(data).__name__})")
    return data


def format_web_results(results: list[tuple[str, list[dict[str, str]]]], note: str = "") -> str:
    """Readable text for ``<tool_response>``: per query, numbered hits with title, URL and snippet."""
    parts = []
    for query, hits in results:
        lines = [f'Search results for "{query}":']
        if not hits:
            lines.append("(no results)")
        for n, h in enumerate(hits, 1):
            lines.append(f"[{n}] {h['title']}\nURL: {h['url']}\n{h['snippet']}")
        parts.append("\n".join(lines))
    text = "\n\n".join(parts)
    return f"{text}\n\n{note}" if note else text
