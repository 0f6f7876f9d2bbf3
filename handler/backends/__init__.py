"""Retrieval and web-search backends, and where their indexes live."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from handler.config import BUNDLED_CORPUS, HandlerConfig

log = logging.getLogger("handler.backends")


class Retriever(Protocol):
    """A local retriever: ranked hits ``{"document": {"id", "contents"}, "score"}`` per query."""

    name: str

    def __len__(self) -> int: ...

    def search(self, queries: list[str], topk: int) -> list[list[dict[str, Any]]]: ...

    def info(self) -> dict[str, Any]: ...


def resolve_paths(cfg: HandlerConfig) -> HandlerConfig:
    """Fill in the corpus (bundled sample if none) and the index directory (next to the corpus)."""
    if cfg.backend == "none":
        return cfg
    if not cfg.corpus and not (cfg.index_dir and (Path(cfg.index_dir) / "meta.json").is_file()):
        cfg.corpus = str(BUNDLED_CORPUS)
    if not cfg.index_dir:
        corpus = Path(cfg.corpus)
        base = (
            corpus.parent
            if corpus.parent != BUNDLED_CORPUS.parent
            else Path.home() / ".cache" / "igpo-handler"
        )
        cfg.index_dir = str(base / f"{corpus.stem}.{cfg.backend}-index")
    return cfg


def prepare_index(
    cfg: HandlerConfig, show_progress: bool = True, rebuild: bool = False, verify: bool = True
) -> HandlerConfig:
    """Build the index for ``cfg.corpus`` unless an up-to-date, intact one is already in ``cfg.index_dir``
    (``rebuild``: build anyway). Locked, so servers started together build it once; a damaged index
    raises ``IndexDamaged`` naming the file and the rebuild command (``verify=False`` leaves that check
    to the caller, which opens the index next anyway)."""
    cfg = resolve_paths(cfg)
    if cfg.backend == "bm25":
        from handler.backends.bm25 import ensure_bm25_index as ensure

        settings: Any = cfg.bm25
    elif cfg.backend == "dense":
        from handler.backends.dense import ensure_dense_index as ensure

        settings = cfg.dense
    else:
        return cfg
    ensure(
        cfg.index_dir,
        cfg.corpus or None,
        settings,
        show_progress=show_progress,
        rebuild=rebuild,
        verify=verify,
    )
    return cfg


def load_retriever(cfg: HandlerConfig) -> Retriever | None:
    """Load (building first if needed) the configured local backend; None for ``backend: none``."""
    if cfg.backend == "none":
        return None
    cfg = prepare_index(cfg, show_progress=False, verify=False)  # the retriever checks every file it opens
    if cfg.backend == "bm25":
        from handler.backends.bm25 import Bm25Retriever

        return Bm25Retriever(cfg.index_dir)
    from handler.backends.dense import DenseRetriever

    return DenseRetriever(cfg.index_dir, cfg.dense)
