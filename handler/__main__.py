"""Command line: ``python -m handler serve`` and ``python -m handler index``.

python -m handler serve                                   # bundled sample corpus, 127.0.0.1:8000
python -m handler serve --corpus wiki18.jsonl --port 8000 # builds (or reuses) the BM25 index
python -m handler index wiki18.jsonl --out indexes/wiki18 # build only (reused if current), progress bar
python -m handler index wiki18.jsonl --out indexes/wiki18 --rebuild  # delete and rebuild
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from handler.config import ConfigError, load_config, validate

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "handler.yaml"


def _config(args: argparse.Namespace, overrides: dict[str, object]):
    path = args.config
    if path is None and DEFAULT_CONFIG.is_file():
        path = str(DEFAULT_CONFIG)
    return load_config(path, overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    """Prepare the index in this process, then run uvicorn (with N workers if configured)."""
    import uvicorn

    from handler.backends import prepare_index

    cfg = _config(
        args,
        {
            "corpus": args.corpus,
            "index_dir": args.index_dir,
            "backend": args.backend,
            "host": args.host,
            "port": args.port,
            "workers": args.workers,
            "cache.path": args.cache,
            "cache.enabled": False if args.no_cache else None,
            "log_level": args.log_level,
        },
    )
    if args.allowed_host:  # added to the config file's list
        cfg.allowed_hosts = [*cfg.allowed_hosts, *args.allowed_host]
        validate(cfg)
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from handler.redact import install_log_redaction, watch_config

    watch_config(cfg)
    install_log_redaction()
    cfg = prepare_index(cfg, show_progress=sys.stderr.isatty())
    if cfg.cache.enabled:  # a bad cache file is fixed (or refused with a message) before workers start
        from handler.app import default_cache_path
        from handler.cache import Cache

        Cache(default_cache_path(cfg), cfg.cache.ttl_s).close()
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("handler").warning(
            "binding %s: the handler is reachable from other machines; requests whose Host header "
            "is not loopback, the bind address%s or in allowed_hosts (%s) get 421",
            cfg.host,
            " (any IP address)" if cfg.host in ("0.0.0.0", "::") else "",
            ", ".join(cfg.allowed_hosts) or "none; add names with --allowed-host",
        )
    os.environ["HANDLER_CONFIG_JSON"] = json.dumps(cfg.to_dict())
    from handler.serving import PROTOCOL

    uvicorn.run(
        "handler.app:app_from_env",
        factory=True,
        host=cfg.host,
        port=cfg.port,
        workers=cfg.workers,
        log_level=cfg.log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=cfg.limits.keep_alive_s,  # idle keep-alive connections
        http=PROTOCOL,  # closes connections whose request head is not complete in limits.header_timeout_s
    )
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """Build a persistent index of a corpus, or reuse the one in ``--out`` if it is current and intact."""
    cfg = _config(args, {"backend": args.backend})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if cfg.backend == "bm25":
        from handler.backends.bm25 import ensure_bm25_index

        meta = ensure_bm25_index(args.out, args.corpus, cfg.bm25, show_progress=True, rebuild=args.rebuild)
    elif cfg.backend == "dense":
        from handler.backends.dense import ensure_dense_index

        meta = ensure_dense_index(args.out, args.corpus, cfg.dense, show_progress=True, rebuild=args.rebuild)
    else:
        raise ConfigError(f"backend {cfg.backend!r} has no index")
    reused = meta is None
    if meta is None:
        from handler.index_files import read_meta

        meta = read_meta(args.out) or {}
    summary = {k: meta[k] for k in ("n_docs", "build_seconds") if k in meta}
    print(json.dumps({"index_dir": args.out, **summary, "reused": reused}))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m handler", description="IGPO search-handler service")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="start the service (127.0.0.1 unless --host says otherwise)")
    s.add_argument("--config", help=f"YAML config (default: {DEFAULT_CONFIG} if present)")
    s.add_argument("--corpus", help="JSON-lines corpus (default: the bundled sample corpus)")
    s.add_argument("--index-dir", help="index directory (default: next to the corpus)")
    s.add_argument("--backend", choices=["bm25", "dense", "none"])
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="accept this Host header name besides loopback and the bind address (repeatable; '*' = any)",
    )
    s.add_argument("--workers", type=int, help="uvicorn worker processes (they share the mmapped index)")
    s.add_argument("--cache", help="SQLite cache file")
    s.add_argument("--no-cache", action="store_true", help="disable the answer cache")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    s.set_defaults(fn=cmd_serve)
    i = sub.add_parser("index", help="build a persistent index of a corpus")
    i.add_argument("corpus", help="JSON-lines corpus")
    i.add_argument("--out", required=True, help="index directory to write")
    i.add_argument("--config", help="YAML config (tokenizer, BM25 and dense settings)")
    i.add_argument("--backend", choices=["bm25", "dense"], default="bm25")
    i.add_argument(
        "--rebuild",
        action="store_true",
        help="delete and rebuild the index even if it looks current (the fix for a damaged index)",
    )
    i.set_defaults(fn=cmd_index)
    args = p.parse_args(argv)
    try:
        return int(args.fn(args))
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
