"""The FastAPI application: Search-R1 ``/retrieve``, the paper's two web tools, ``/health``, ``/metrics``.

Every failure is an explicit HTTP error with a JSON body ``{"error": kind, "detail": message}``:
4xx for bad input (the message names the field and the value), 502/504 for backend failures.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import ipaddress
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError

from handler.backends.web import WebSearch, format_web_results
from handler.cache import Cache, cache_key, normalize_query
from handler.config import HandlerConfig, load_config
from handler.errors import BackendFailure, BackendTimeout, BadInput, Forbidden, HandlerError, Unavailable
from handler.hostcheck import HostCheck, host_name
from handler.jobs import JobSlots
from handler.reader import Reader
from handler.redact import install_log_redaction, redact, watch_config
from handler.schema import (
    BrowseResponse,
    HealthResponse,
    RetrieveResponse,
    WebSearchResponse,
    error_responses,
    request_body,
    request_models,
)

log = logging.getLogger("handler")

ENDPOINTS = {"/retrieve", "/tools/web_search", "/tools/browse_webpage", "/health", "/metrics"}


# ----------------------------------------------------------------------------- request models
class RetrieveRequest(BaseModel):
    """Search-R1 protocol plus the common variants (``query``, ``top_k``, ``k``)."""

    model_config = ConfigDict(extra="ignore")
    queries: list[StrictStr] | None = None
    query: StrictStr | None = None
    topk: StrictInt | None = None
    top_k: StrictInt | None = None
    k: StrictInt | None = None
    return_scores: StrictBool = False


class WebSearchRequest(BaseModel):
    """The paper's ``web_search`` tool: a list of queries (a single string is accepted too)."""

    model_config = ConfigDict(extra="ignore")
    query: list[StrictStr] | StrictStr


class BrowseRequest(BaseModel):
    """The paper's ``browse_webpage`` tool."""

    model_config = ConfigDict(extra="ignore")
    url_list: list[StrictStr]
    question: StrictStr = ""


# ----------------------------------------------------------------------------- metrics
class Metrics:
    """Prometheus metrics in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "handler_requests_total", "HTTP requests", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "handler_request_latency_seconds",
            "Request latency",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.errors = Counter(
            "handler_errors_total", "Errors by kind", ["endpoint", "kind"], registry=self.registry
        )
        self.queries = Counter(
            "handler_queries_total", "Queries answered", ["endpoint"], registry=self.registry
        )
        self.cache_hits = Counter(
            "handler_cache_hits_total", "Cache hits", ["backend"], registry=self.registry
        )
        self.cache_misses = Counter(
            "handler_cache_misses_total", "Cache misses", ["backend"], registry=self.registry
        )
        self.clipped = Counter(
            "handler_queries_clipped_total",
            "/retrieve queries searched on their first limits.max_query_tokens words / max_query_chars chars",
            registry=self.registry,
        )


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "queries", 2)`` -> ``queries[2]``."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[str]", "function-after", "union"):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def _describe(errs: Any) -> str:
    """One readable line naming each bad field and the value it had."""
    parts = []
    for e in list(errs)[:5]:
        field = _field(e.get("loc", ()))
        if e.get("type") == "missing":
            parts.append(f"field '{field}' is required")
        else:
            try:
                got = json.dumps(e.get("input"), default=str)
            except (ValueError, RecursionError):  # a structure nested too deeply to print
                got = f"a {type(e.get('input')).__name__}"
            got = got if len(got) <= 80 else got[:77] + "..."
            parts.append(f"field '{field}': {e.get('msg')} (got {got})")
    return "; ".join(parts)


M = TypeVar("M", bound=BaseModel)


def clip_query(q: str, max_tokens: int, max_chars: int) -> str:
    """The part of a /retrieve query that is searched: its first ``max_chars`` characters, then its first
    ``max_tokens`` whitespace-separated words. Returns ``q`` itself (same object) when nothing is cut."""
    if len(q) > max_chars:
        q = q[:max_chars]
    if len(q) >= 2 * max_tokens:  # shorter strings cannot hold more than max_tokens words
        words = q.split()
        if len(words) > max_tokens:
            return " ".join(words[:max_tokens])
    return q


def is_json_type(ctype: str | None) -> bool:
    """Whether a Content-Type header says JSON (``application/json``, parameters such as charset allowed)."""
    return ctype is not None and ctype.split(";", 1)[0].strip().lower() == "application/json"


async def parse_body(request: Request, model: type[M], max_bytes: int) -> M:
    """Parse a JSON body: 415 unless the content type is ``application/json``, 400 for malformed JSON,
    422 naming bad fields, 413 when the (possibly chunked) body grows past ``max_bytes``.

    The content type is required because a web page can POST ``text/plain`` to any address without
    the browser asking first; ``application/json`` makes the browser ask (CORS preflight), and the
    handler never says yes."""
    ctype = request.headers.get("content-type")
    if not is_json_type(ctype):
        got = "no Content-Type header" if ctype is None else f"header Content-Type: {ctype[:80]!r}"
        raise HandlerError(
            f"{got}; send the body as JSON with Content-Type: application/json "
            "(requests.post(url, json=...) and httpx.post(url, json=...) do)",
            status=415,
            kind="unsupported_media_type",
        )
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > max_bytes:
            raise HandlerError(
                f"request body exceeds the limit of {max_bytes} bytes", status=413, kind="too_large"
            )
    raw = bytes(buf)
    if not raw.strip():
        raise HandlerError("empty request body: send a JSON object", status=400, kind="bad_json")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise HandlerError("malformed JSON body: nested too deeply", status=400, kind="bad_json") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer past the digit limit
        raise HandlerError(f"malformed JSON body: {str(e)[:200]}", status=400, kind="bad_json") from None
    if not isinstance(data, dict):
        raise BadInput(f"the body must be a JSON object, got {type(data).__name__}")
    if b"\\u" in raw:  # only a JSON \\u escape can put a lone surrogate into the parsed text
        data = _clean_strings(data)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise BadInput(_describe(e.errors())) from None
    except RecursionError:
        raise HandlerError("malformed JSON body: nested too deeply", status=400, kind="bad_json") from None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean_strings(data: Any) -> Any:
    """Replace lone surrogates (valid JSON escapes, but not encodable as UTF-8: they would fail the
    answer, the cache and upstream requests) with U+FFFD in every string of a parsed body, in place."""

    def fix(v: Any) -> Any:
        if isinstance(v, str) and not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return _SURROGATE.sub("\ufffd", v)
        return v

    stack: list[Any] = [data]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in list(items):
            if isinstance(v, dict | list):
                stack.append(v)
            else:
                node[k] = fix(v)
        if isinstance(node, dict):
            for k in [k for k in node if isinstance(k, str) and fix(k) is not k]:
                node[fix(k)] = node.pop(k)
    return data


_DIGITS = re.compile(r"[0-9]+")


def _error(status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": kind, "detail": detail},
        status_code=status,
        headers={"x-error-kind": kind, **(headers or {})},
    )


class BodyTimeout(HandlerError):
    """The client sent the request head but not the whole body in time (408; the connection is closed)."""

    status = 408
    kind = "body_timeout"


async def _receive_within(receive: Any, seconds: float) -> Any:
    """``await receive()``, raising TimeoutError after ``seconds``."""
    if sys.version_info >= (3, 11):  # no task per call
        async with asyncio.timeout(max(seconds, 0.0)):
            return await receive()
    return await asyncio.wait_for(receive(), max(seconds, 0.0))


class _Observe:
    """Plain ASGI middleware (Starlette's ``BaseHTTPMiddleware`` costs a task and a memory stream per
    request): refuses a Host header that does not name the handler (421), a declared body over the
    limit (413) and a body that does not arrive within ``limits.body_timeout_s`` (408), answers an
    unhandled error with a JSON 500, and records request count, latency and error kind per endpoint."""

    def __init__(self, app: Any, cfg: HandlerConfig, metrics: Metrics):
        self.app = app
        self.limit = cfg.limits.max_body_bytes
        self.body_timeout = cfg.limits.body_timeout_s
        self.hosts = HostCheck(cfg.host, cfg.allowed_hosts)
        self.metrics = metrics

    def _bad_host(self, host: str) -> JSONResponse:
        name = host_name(host)[:100]
        return _error(
            421,
            "bad_host",
            f"header Host: {host[:100]!r} does not name this handler (accepted: {self.hosts.describe()}); "
            f"if clients reach the handler as {name!r}, add it to allowed_hosts in the config "
            f"or start it with --allowed-host {name}",
        )

    def _timed(self, receive: Any) -> Any:
        """``receive`` with a deadline on the request body (408 when it passes); later messages (the
        client disconnecting) are awaited without one."""
        deadline = time.monotonic() + self.body_timeout
        done = False

        async def timed_receive() -> Any:
            nonlocal done
            if done:
                return await receive()
            try:
                message = await _receive_within(receive, deadline - time.monotonic())
            except (TimeoutError, asyncio.TimeoutError):
                done = True
                raise BodyTimeout(
                    f"the request body did not arrive within limits.body_timeout_s ({self.body_timeout:g}s)"
                ) from None
            if message.get("type") != "http.request" or not message.get("more_body", False):
                done = True
            return message

        return timed_receive

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in ENDPOINTS else "other"
        t0 = time.perf_counter()
        status, kind, started = 500, "", False

        async def observed_send(message: Any) -> None:
            nonlocal status, kind, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"x-error-kind":
                        kind = value.decode("latin-1")
            await send(message)

        length = host = None
        for n, v in scope["headers"]:
            if n == b"content-length":
                length = v.decode("latin-1")
            elif n == b"host":
                host = v.decode("latin-1")
        if not self.hosts.allows(host):
            await self._bad_host(host or "")(scope, receive, observed_send)
        elif length is not None and not _DIGITS.fullmatch(length):
            await _error(400, "bad_request", f"header Content-Length: {length[:40]!r} is not a number")(
                scope, receive, observed_send
            )
        elif length is not None and (len(length) > 18 or int(length) > self.limit):
            await _error(
                413,
                "too_large",
                f"request body of {length[:40]} bytes exceeds the limit of {self.limit} bytes",
            )(scope, receive, observed_send)
        else:
            try:
                await self.app(scope, self._timed(receive), observed_send)
            except Exception:  # a bug: answer 500 and keep serving
                log.exception("unhandled error on %s", path)
                if started:
                    raise
                await _error(500, "internal", "internal error")(scope, receive, observed_send)
        m = self.metrics
        m.requests.labels(path, str(status)).inc()
        m.latency.labels(path).observe(time.perf_counter() - t0)
        if status >= 400:
            m.errors.labels(path, kind or ("client_error" if status < 500 else "server_error")).inc()


# ----------------------------------------------------------------------------- the app
class State:
    """Everything the routes share: config, backend, cache, HTTP client, executor, metrics."""

    def __init__(self, cfg: HandlerConfig, retriever: Any, metrics: Metrics):
        self.cfg = cfg
        self.retriever = retriever
        self.metrics = metrics
        self.started = time.time()
        self.cache: Cache | None = None
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="retrieve")
        # /retrieve batches running or waiting in the executor (threads that outlive their request too)
        self.backend_jobs = JobSlots(cfg.limits.max_backend_jobs)
        self.http: httpx.AsyncClient | None = None
        self.web: WebSearch | None = None
        self.reader: Reader | None = None


def default_cache_path(cfg: HandlerConfig) -> str:
    """Where the cache lives when the config does not say."""
    if cfg.cache.path:
        return cfg.cache.path
    if cfg.index_dir:
        return str(Path(cfg.index_dir) / "cache.sqlite")
    return "handler_cache.sqlite"


def create_app(cfg: HandlerConfig, retriever: Any = None) -> FastAPI:
    """Build the app. ``retriever`` is a loaded backend (or None for web-only service)."""
    metrics = Metrics()
    st = State(cfg, retriever, metrics)
    watch_config(cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if cfg.cache.enabled:
            st.cache = Cache(
                default_cache_path(cfg),
                cfg.cache.ttl_s,
                memory_entries=cfg.cache.memory_entries,
                memory_bytes=int(cfg.cache.memory_mb * 1_000_000),
            )
        st.http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16), trust_env=False
        )
        st.web = WebSearch(cfg.web, st.http)
        st.reader = Reader(cfg.reader, st.http)
        log.info("handler ready: backend=%s docs=%s", cfg.backend, len(retriever) if retriever else 0)
        yield
        await st.reader.aclose()
        await st.http.aclose()
        st.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="IGPO search handler", version="0.1.0", lifespan=lifespan)
    app.state.handler = st

    # -- error handling: every failure is explicit and names what went wrong
    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "bad_input", _describe(exc.errors()))

    @app.exception_handler(HandlerError)
    async def _on_handler_error(request: Request, exc: HandlerError) -> JSONResponse:
        headers = {}
        if exc.status == 408:  # the rest of the body may still come: the connection cannot be reused
            headers["connection"] = "close"
        elif exc.kind == "busy":
            headers["retry-after"] = "1"
        return _error(exc.status, exc.kind, redact(exc.message), headers)

    app.add_middleware(_Observe, cfg=cfg, metrics=metrics)

    # -- helpers
    async def run_backend(fn: Any, *args: Any) -> Any:
        """Run a blocking backend call with the retrieve timeout; a timeout is a 504, a crash a 502.

        At most ``limits.max_backend_jobs`` calls run or wait for a thread; one more is a quick 503.
        On a timeout a waiting call is dropped and a running one is told to stop (backends whose
        search takes ``stop`` check it between queries), so its thread is soon free again."""
        stop = threading.Event()
        kwargs = {"stop": stop} if _takes_stop(getattr(fn, "__func__", fn)) else {}
        cfut = st.backend_jobs.submit(st.executor, fn, *args, **kwargs)
        if cfut is None:
            raise Unavailable(
                f"the {cfg.backend} backend is busy: {cfg.limits.max_backend_jobs} batches are running or "
                "waiting (limits.max_backend_jobs); retry in a moment",
                kind="busy",
            )
        try:
            return await asyncio.wait_for(asyncio.wrap_future(cfut), cfg.retrieve_timeout_s)
        except (TimeoutError, asyncio.TimeoutError):
            stop.set()
            cfut.cancel()  # a call still waiting for a thread never starts
            raise BackendTimeout(
                f"{cfg.backend} backend did not answer within {cfg.retrieve_timeout_s:g}s"
            ) from None
        except HandlerError:
            raise
        except Exception as e:
            log.exception("backend %s failed", cfg.backend)
            raise BackendFailure(f"{cfg.backend} backend failed: {type(e).__name__}: {e}"[:300]) from None

    def cache_get(keys: list[str], ttl: float | None = None) -> dict[str, str]:
        if st.cache is None:
            return {}
        try:
            return st.cache.get_many(keys, ttl)
        except Exception as e:  # the cache only speeds things up: count, log, carry on without it
            st.cache.errors += 1
            metrics.errors.labels("cache", "cache_error").inc()
            log.warning("cache read failed: %s", e)
            return {}

    def cache_put(items: dict[str, str]) -> None:
        if st.cache is None:
            return
        try:
            st.cache.put_many(items)
        except Exception as e:
            st.cache.errors += 1
            metrics.errors.labels("cache", "cache_error").inc()
            log.warning("cache write failed: %s", e)

    def check_queries(queries: list[str], field: str, limit: int, indexed: bool = True) -> None:
        lim = cfg.limits
        if not queries:
            raise BadInput(f"field '{field}' is empty: give at least one query")
        if len(queries) > limit:
            raise BadInput(f"field '{field}' has {len(queries)} queries; at most {limit} per request")
        for i, q in enumerate(queries):
            f = f"{field}[{i}]" if indexed else field
            if not q.strip():
                raise BadInput(f"field '{f}' is an empty query")
            if len(q) > lim.max_query_chars:
                raise BadInput(f"field '{f}' is {len(q)} characters long; at most {lim.max_query_chars}")

    # -- routes (bodies are parsed by hand; ``openapi_extra`` and ``responses`` describe the contract)
    bodies = request_models(cfg.limits)

    @app.post(
        "/retrieve",
        response_model=None,
        openapi_extra=request_body(bodies["retrieve"]),
        responses={
            200: {"model": RetrieveResponse, "description": "Ranked passages per query"},
            **error_responses(400, 408, 413, 415, 421, 422, 502, 503, 504),
        },
    )
    async def retrieve(request: Request) -> Response:
        """Search-R1 ``/retrieve``: ranked passages per query, in order."""
        req = await parse_body(request, RetrieveRequest, cfg.limits.max_body_bytes)
        if req.queries is not None and req.query is not None:
            raise BadInput("give either field 'queries' (a list) or field 'query' (a string), not both")
        if req.queries is None and req.query is None:
            raise BadInput("field 'queries' is required (a list of strings; or 'query' with one string)")
        lim = cfg.limits
        queries = req.queries if req.queries is not None else [req.query or ""]
        given = [(n, v) for n, v in (("topk", req.topk), ("top_k", req.top_k), ("k", req.k)) if v is not None]
        if len({v for _, v in given}) > 1:
            raise BadInput(f"fields {', '.join(n for n, _ in given)} disagree: give one of them")
        name, topk = given[0] if given else ("topk", lim.default_topk)
        if not 1 <= topk <= lim.max_topk:
            raise BadInput(f"field '{name}' is {topk}; it must be between 1 and {lim.max_topk}")
        if len(queries) > lim.max_queries:
            raise BadInput(
                f"field 'queries' has {len(queries)} queries; at most {lim.max_queries} per request"
            )
        if st.retriever is None:
            raise Unavailable("no local retrieval backend is configured (backend: none)")
        if not queries:  # a turn in which no rollout searched (Search-R1 sends it anyway)
            return Response('{"result":[]}', media_type="application/json")

        # Per-query problems never fail the batch: a blank query has no hits, a long one is clipped.
        texts_in = [clip_query(q, lim.max_query_tokens, lim.max_query_chars) for q in queries]
        clipped = sum(1 for q, t in zip(queries, texts_in, strict=True) if t is not q)
        if clipped:
            metrics.clipped.inc(clipped)
        backend = cfg.backend
        tag = getattr(st.retriever, "cache_tag", backend)
        # "" stands for a blank query (real keys always hold a separator character)
        keys = [cache_key(tag, t, topk) if t.strip() else "" for t in texts_in]
        asked = [k for k in keys if k]
        found = cache_get(asked)
        missing: dict[str, str] = {}
        for t, key in zip(texts_in, keys, strict=True):
            if key and key not in found and key not in missing:
                missing[key] = t
        n_miss = sum(1 for k in asked if k not in found)
        metrics.cache_hits.labels(backend).inc(len(asked) - n_miss)
        metrics.cache_misses.labels(backend).inc(n_miss)
        if missing:
            miss_keys = list(missing)
            texts = [normalize_query(missing[k]) for k in miss_keys]
            search_json = getattr(st.retriever, "search_json", None)
            if search_json is not None:  # the backend serializes its hits itself (no dicts in between)
                fresh = dict(zip(miss_keys, await run_backend(search_json, texts, topk), strict=True))
            else:
                results = await run_backend(st.retriever.search, texts, topk)
                fresh = {
                    k: json.dumps(hits, ensure_ascii=False)
                    for k, hits in zip(miss_keys, results, strict=True)
                }
            found.update(fresh)
            await asyncio.get_running_loop().run_in_executor(st.executor, cache_put, fresh)
        if len(asked) < len(keys):
            found[""] = "[]"
        metrics.queries.labels("/retrieve").inc(len(queries))
        if req.return_scores:
            body = '{"result":[' + ",".join(found[k] for k in keys) + "]}"
        else:
            body = json.dumps(
                {"result": [[h["document"] for h in json.loads(found[k])] for k in keys]}, ensure_ascii=False
            )
        return Response(body, media_type="application/json")

    @app.post(
        "/tools/web_search",
        response_model=None,
        openapi_extra=request_body(bodies["web_search"]),
        responses={
            200: {"model": WebSearchResponse, "description": "Search results as text and as hits"},
            **error_responses(400, 408, 413, 415, 421, 422, 502, 503, 504),
        },
    )
    async def web_search(request: Request) -> dict[str, Any]:
        """The ``web_search`` tool: the first N queries are searched; the reply says if some were not."""
        req = await parse_body(request, WebSearchRequest, cfg.limits.max_body_bytes)
        if not cfg.web_enabled or st.web is None:
            raise Unavailable("web search is disabled in this handler's config (web_enabled: false)")
        lim = cfg.limits
        queries = [req.query] if isinstance(req.query, str) else list(req.query)
        check_queries(queries, "query", lim.max_web_query_list, indexed=not isinstance(req.query, str))
        used = queries[: lim.max_web_queries]
        note = ""
        if len(queries) > len(used):
            note = f"(Only the first {len(used)} of {len(queries)} queries were searched.)"
        num = cfg.web.results_per_query
        backend = f"web:{cfg.web.engine}"
        keys = [cache_key(backend, q, num) for q in used]
        found = cache_get(keys, cfg.cache.web_ttl_s)
        metrics.cache_hits.labels(backend).inc(sum(1 for k in keys if k in found))
        metrics.cache_misses.labels(backend).inc(sum(1 for k in keys if k not in found))
        todo = [(k, q) for k, q in zip(keys, used, strict=True) if k not in found]
        if todo:
            hits = await asyncio.gather(*(st.web.search(q, num) for _, q in todo), return_exceptions=True)
            for h in hits:
                if isinstance(h, BaseException):
                    raise h
            fresh = {k: json.dumps(h) for (k, _), h in zip(todo, hits, strict=True)}
            found.update(fresh)
            cache_put(fresh)
        results = [(q, json.loads(found[k])) for q, k in zip(used, keys, strict=True)]
        metrics.queries.labels("/tools/web_search").inc(len(used))
        return {"result": format_web_results(results, note), "hits": [h for _, h in results], "queries": used}

    @app.post(
        "/tools/browse_webpage",
        response_model=None,
        openapi_extra=request_body(bodies["browse"]),
        responses={
            200: {"model": BrowseResponse, "description": "What each page says about the question"},
            **error_responses(400, 403, 408, 413, 415, 421, 422, 502, 503, 504),
        },
    )
    async def browse_webpage(request: Request) -> dict[str, Any]:
        """The ``browse_webpage`` tool: what each page says about the question."""
        req = await parse_body(request, BrowseRequest, cfg.limits.max_body_bytes)
        if not cfg.web_enabled or st.reader is None:
            raise Unavailable("page reading is disabled in this handler's config (web_enabled: false)")
        lim = cfg.limits
        if not req.url_list:
            raise BadInput("field 'url_list' is empty: give at least one URL")
        if len(req.url_list) > lim.max_urls:
            raise BadInput(
                f"field 'url_list' has {len(req.url_list)} URLs; at most {lim.max_urls} per request"
            )
        for i, u in enumerate(req.url_list):
            if not u.strip():
                raise BadInput(f"field 'url_list[{i}]' is empty")
            if len(u) > lim.max_url_chars:
                raise BadInput(
                    f"field 'url_list[{i}]' is {len(u)} characters long; at most {lim.max_url_chars}"
                )
        if len(req.question) > lim.max_question_chars:
            raise BadInput(
                f"field 'question' is {len(req.question)} characters long; at most {lim.max_question_chars}"
            )
        pages = await st.reader.read([u.strip() for u in req.url_list], req.question)
        if not any(p.ok for p in pages):
            raise BackendFailure(
                "no page could be read: " + "; ".join(f"{p.url[:100]}: {p.error}" for p in pages)
            )
        metrics.queries.labels("/tools/browse_webpage").inc(len(pages))
        return {
            "result": "\n\n".join(p.render() if p.ok else redact(p.render()) for p in pages),
            "pages": [{"url": p.url, "ok": p.ok, "text": p.text, "error": redact(p.error)} for p in pages],
        }

    @app.get(
        "/health",
        response_model=None,
        responses={200: {"model": HealthResponse, "description": "Up"}, **error_responses(403, 421, 422)},
    )
    async def health(
        request: Request,
        verbose: bool = Query(
            False,
            description="Also give the process id and file paths (index, cache); loopback clients only",
        ),
    ) -> dict[str, Any]:
        """Liveness plus facts: backend, corpus size, index age, cache stats, web configuration.
        No file paths or process id unless ``?verbose=1`` comes from a loopback client."""
        if verbose and not _is_loopback(request.client.host if request.client else ""):
            raise Forbidden(
                "query parameter 'verbose' (process id and file paths) is only answered to loopback "
                "clients; ask from the handler's machine, e.g. curl 'http://127.0.0.1:PORT/health?verbose=1'"
            )
        info: dict[str, Any] = {"status": "ok", "backend": cfg.backend, "corpus_size": 0}
        if verbose:
            info["pid"] = os.getpid()
        if st.retriever is not None:
            facts = st.retriever.info()
            info.update(facts if verbose else {k: v for k, v in facts.items() if k not in PATH_FACTS})
        info["uptime_s"] = round(time.time() - st.started, 1)
        cache_stats = st.cache.stats() if st.cache else {"enabled": False}
        if not verbose:
            cache_stats.pop("path", None)
        info["cache"] = cache_stats
        info["web"] = {
            "enabled": cfg.web_enabled,
            "engine": cfg.web.engine,
            "configured": bool(st.web and st.web.configured()),
            "reader_llm": bool(cfg.reader.llm.base_url),
        }
        return info

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"description": "Prometheus text exposition format"}, **error_responses(421)},
    )
    async def prom() -> Response:
        """Prometheus text exposition of this process's metrics."""
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


@functools.lru_cache(maxsize=64)
def _takes_stop(func: Any) -> bool:
    """Whether a backend search function accepts ``stop`` (a threading.Event set on timeout)."""
    try:
        return "stop" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


#: /health facts that name files; only in ``/health?verbose=1`` from a loopback client
PATH_FACTS = frozenset({"index_dir", "corpus", "path", "model_path"})


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def app_from_env() -> FastAPI:
    """uvicorn factory: config JSON in HANDLER_CONFIG_JSON (set by ``python -m handler serve``)."""
    from handler.backends import load_retriever

    raw = os.environ.get("HANDLER_CONFIG_JSON")
    cfg = load_config(None, _flatten(json.loads(raw))) if raw else load_config()
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_redaction()
    return create_app(cfg, load_retriever(cfg))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
