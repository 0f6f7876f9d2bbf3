"""BM25 backend: a persistent bm25s index, loaded memory-mapped, scored with sparse numpy ops.

Index layout (one directory): the bm25s score matrix (CSC, per-token posting lists of precomputed
BM25 term scores), the token vocabulary, a memory-mapped document store and ``meta.json``
(format, corpus fingerprint, tokenizer and BM25 parameters, build time).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from handler.config import Bm25Config
from handler.corpus import DocStore, Tokenizer, iter_corpus

log = logging.getLogger("handler.bm25")

FORMAT = "igpo-bm25-v1"


def corpus_fingerprint(corpus: str | Path) -> dict[str, Any]:
    """Identity of a corpus file (path, size, mtime) used to decide whether an index can be reused."""
    st = os.stat(corpus)
    return {"path": str(Path(corpus).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def build_index(
    corpus: str | Path, out_dir: str | Path, cfg: Bm25Config | None = None, show_progress: bool = True
) -> dict[str, Any]:
    """Tokenize the corpus and write a complete index directory atomically; return its meta."""
    import bm25s
    from tqdm import tqdm

    cfg = cfg or Bm25Config()
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    t0 = time.time()
    tok = Tokenizer(cfg.stemmer, cfg.stopwords)
    vocab: dict[str, int] = {}
    word_ids: dict[str, int] = {}
    ids: list[str] = []
    contents: list[str] = []
    token_ids: list[list[int]] = []
    size = os.path.getsize(corpus)
    with tqdm(total=size, unit="B", unit_scale=True, desc="tokenize", disable=not show_progress) as bar:
        for doc_id, text in iter_corpus(corpus):
            ids.append(doc_id)
            contents.append(text)
            token_ids.append(tok.ids(text, vocab, word_ids))
            bar.update(len(text) + len(doc_id) + 30)
    if not ids:
        raise ValueError(f"corpus {str(corpus)!r} has no documents")
    t_tok = time.time() - t0
    retriever = bm25s.BM25(k1=cfg.k1, b=cfg.b, method=cfg.method)
    retriever.index((token_ids, vocab), show_progress=show_progress)
    del token_ids
    retriever.save(str(tmp), show_progress=False)
    DocStore.write(tmp, ids, contents)
    meta = {
        "format": FORMAT,
        "backend": "bm25",
        "n_docs": len(ids),
        "vocab_size": len(vocab),
        "built_at": time.time(),
        "build_seconds": round(time.time() - t0, 3),
        "tokenize_seconds": round(t_tok, 3),
        "corpus": corpus_fingerprint(corpus),
        "tokenizer": {"stemmer": cfg.stemmer, "stopwords": cfg.stopwords},
        "bm25": {"k1": cfg.k1, "b": cfg.b, "method": cfg.method},
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return meta


def index_is_current(index_dir: str | Path, corpus: str | Path | None, cfg: Bm25Config) -> bool:
    """True if ``index_dir`` holds a complete index built from this corpus with these settings."""
    meta_path = Path(index_dir) / "meta.json"
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        return False
    if meta.get("tokenizer") != {"stemmer": cfg.stemmer, "stopwords": cfg.stopwords}:
        return False
    if meta.get("bm25") != {"k1": cfg.k1, "b": cfg.b, "method": cfg.method}:
        return False
    if corpus is not None:
        fp = corpus_fingerprint(corpus)
        old = meta.get("corpus", {})
        if (old.get("size"), old.get("mtime_ns")) != (fp["size"], fp["mtime_ns"]):
            return False
    return True


class Bm25Retriever:
    """Query-time BM25 over a memory-mapped index directory."""

    name = "bm25"

    # Sparse accumulation (unique + bincount over postings) beats a dense score array when the
    # query's postings are a small fraction of the corpus.
    SPARSE_FRACTION = 0.05

    def __init__(self, index_dir: str | Path):
        d = Path(index_dir)
        meta_path = d / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{str(d)!r} is not a BM25 index (no meta.json); build it with `python -m handler index`")
        self.meta = json.loads(meta_path.read_text())
        self.index_dir = d
        self._data = np.load(d / "data.csc.index.npy", mmap_mode="r")
        self._indices = np.load(d / "indices.csc.index.npy", mmap_mode="r")
        self._indptr = np.asarray(np.load(d / "indptr.csc.index.npy", mmap_mode="r"))
        with open(d / "vocab.index.json", encoding="utf-8") as f:
            self._vocab: dict[str, int] = json.load(f)
        self.docs = DocStore(d)
        self.n_docs = len(self.docs)
        tk = self.meta["tokenizer"]
        self.tokenizer = Tokenizer(tk["stemmer"], tk["stopwords"])
        # Cache entries are tied to this exact index build, so a rebuilt index never serves stale hits.
        self.cache_tag = f"bm25@{self.meta.get('built_at', 0):.6f}"

    def __len__(self) -> int:
        return self.n_docs

    def info(self) -> dict[str, Any]:
        """Facts for /health."""
        return {
            "backend": self.name,
            "corpus_size": self.n_docs,
            "index_dir": str(self.index_dir),
            "index_built_at": self.meta.get("built_at"),
            "index_age_s": round(time.time() - float(self.meta.get("built_at", time.time())), 1),
            "vocab_size": self.meta.get("vocab_size"),
        }

    def _topk(self, token_ids: list[int], weights: list[float], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices and scores of the k best documents (score > 0), best first, ties by doc number."""
        ip = self._indptr
        spans = [(int(ip[t]), int(ip[t + 1])) for t in token_ids]
        total = sum(e - s for s, e in spans)
        if total == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        if len(spans) == 1:
            s, e = spans[0]
            docs = np.asarray(self._indices[s:e])
            scores = np.asarray(self._data[s:e], dtype=np.float32) * np.float32(weights[0])
        elif total < self.SPARSE_FRACTION * self.n_docs:
            all_docs = np.concatenate([self._indices[s:e] for s, e in spans])
            all_scores = np.concatenate(
                [np.asarray(self._data[s:e], dtype=np.float32) * np.float32(w) for (s, e), w in zip(spans, weights, strict=True)]
            )
            docs, inv = np.unique(all_docs, return_inverse=True)
            scores = np.bincount(inv, weights=all_scores, minlength=len(docs)).astype(np.float32)
        else:
            dense = np.zeros(self.n_docs, dtype=np.float32)
            for (s, e), w in zip(spans, weights, strict=True):
                dense[self._indices[s:e]] += np.asarray(self._data[s:e], dtype=np.float32) * np.float32(w)
            docs = np.flatnonzero(dense)
            scores = dense[docs]
        if len(docs) > k:
            part = np.argpartition(-scores, k - 1)[:k]
            docs, scores = docs[part], scores[part]
        order = np.lexsort((docs, -scores))
        return docs[order], scores[order]

    def token_ids(self, query: str) -> tuple[list[int], list[float]]:
        """Vocabulary ids of a query's tokens (unknown tokens dropped) with their repeat counts."""
        counts = Counter(self.tokenizer(query))
        ids, weights = [], []
        for t, c in counts.items():
            i = self._vocab.get(t)
            if i is not None:
                ids.append(i)
                weights.append(float(c))
        return ids, weights

    def search(self, queries: list[str], topk: int) -> list[list[dict[str, Any]]]:
        """Ranked hits per query, in the Search-R1 shape with scores."""
        out = []
        for q in queries:
            ids, w = self.token_ids(q)
            docs, scores = self._topk(ids, w, topk) if ids else (np.empty(0, np.int64), np.empty(0))
            hits = []
            for d, s in zip(docs.tolist(), scores.tolist(), strict=True):
                doc_id, contents = self.docs.get(d)
                hits.append({"document": {"id": doc_id, "contents": contents}, "score": round(float(s), 6)})
            out.append(hits)
        return out
