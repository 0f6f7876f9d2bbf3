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


def prepare_index(cfg: HandlerConfig, show_progress: bool = True) -> HandlerConfig:
    """Build the index for ``cfg.corpus`` unless an up-to-date one is already in ``cfg.index_dir``."""
    cfg = resolve_paths(cfg)
    if cfg.backend == "bm25":
        from handler.backends.bm25 import build_index, index_is_current

        if index_is_current(cfg.index_dir, cfg.corpus or None, cfg.bm25):
            log.info("reusing BM25 index %s", cfg.index_dir)
        elif not cfg.corpus:
            raise FileNotFoundError(
                f"no usable BM25 index in {cfg.index_dir!r} and no corpus given to build one"
            )
        elif not Path(cfg.corpus).is_file():  # checked before the build is announced
            raise FileNotFoundError(f"corpus {cfg.corpus!r} does not exist (or is not a file)")
        else:
            log.info("building BM25 index of %s into %s", cfg.corpus, cfg.index_dir)
            build_index(cfg.corpus, cfg.index_dir, cfg.bm25, show_progress=show_progress)
    elif cfg.backend == "dense":
        from handler.backends.dense import build_dense_index, dense_index_is_current

        if not dense_index_is_current(cfg.index_dir, cfg.corpus or None, cfg.dense):
            if not cfg.corpus:
                raise FileNotFoundError(f"no usable dense index in {cfg.index_dir!r} and no corpus given")
            build_dense_index(cfg.corpus, cfg.index_dir, cfg.dense, show_progress=show_progress)
    return cfg


def load_retriever(cfg: HandlerConfig) -> Retriever | None:
    """Load (building first if needed) the configured local backend; None for ``backend: none``."""
    if cfg.backend == "none":
        return None
    cfg = prepare_index(cfg, show_progress=False)
    if cfg.backend == "bm25":
        from handler.backends.bm25 import Bm25Retriever

        return Bm25Retriever(cfg.index_dir)
    from handler.backends.dense import DenseRetriever

    return DenseRetriever(cfg.index_dir, cfg.dense)
