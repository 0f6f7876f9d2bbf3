"""BM25 backend: a persistent bm25s index, loaded memory-mapped, scored with sparse numpy ops.

Index layout (one directory): the bm25s score matrix (CSC, per-token posting lists of precomputed
BM25 term scores), the token vocabulary, a memory-mapped document store and ``meta.json``
(format, corpus fingerprint, tokenizer and BM25 parameters, build time).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from json.encoder import encode_basestring as _jstr  # C string escaper (ensure_ascii=False)
from pathlib import Path
from typing import Any

import numpy as np

from handler.config import Bm25Config
from handler.corpus import DocStore, Tokenizer, iter_corpus
from handler.errors import BackendTimeout
from handler.index_files import (
    build_atomically,
    build_lock,
    check_offsets,
    damaged,
    ensure_index,
    load_npy,
    read_json,
    read_meta,
)

log = logging.getLogger("handler.bm25")

FORMAT = "igpo-bm25-v1"


def corpus_fingerprint(corpus: str | Path) -> dict[str, Any]:
    """Identity of a corpus file (path, size, mtime) used to decide whether an index can be reused."""
    st = os.stat(corpus)
    return {"path": str(Path(corpus).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def build_index(
    corpus: str | Path, out_dir: str | Path, cfg: Bm25Config | None = None, show_progress: bool = True
) -> dict[str, Any]:
    """Tokenize the corpus and write a complete index directory atomically (under its build lock,
    replacing whatever was there); return its meta."""
    cfg = cfg or Bm25Config()
    _require_corpus(corpus)
    with build_lock(out_dir):
        return build_atomically(out_dir, lambda tmp: _build_into(corpus, tmp, cfg, show_progress))


def ensure_bm25_index(
    index_dir: str | Path,
    corpus: str | Path | None,
    cfg: Bm25Config | None = None,
    show_progress: bool = True,
    rebuild: bool = False,
    verify: bool = True,
) -> dict[str, Any] | None:
    """Reuse the index in ``index_dir`` if it is current for this corpus and settings and intact
    (``verify``: every file opened and checked), else build it (``rebuild``: always). Returns the new
    meta, or None when reused. Locked: concurrent callers build once, the others wait and reuse."""
    cfg = cfg or Bm25Config()
    if corpus:
        _require_corpus(corpus)

    def before_build() -> None:
        if not corpus:
            raise FileNotFoundError(
                f"no usable BM25 index in {str(index_dir)!r} and no corpus given to build one"
            )

    return ensure_index(
        index_dir,
        lambda: index_is_current(index_dir, corpus or None, cfg),
        lambda tmp: _build_into(corpus, tmp, cfg, show_progress),  # type: ignore[arg-type]
        lambda: check_bm25_index(index_dir, corpus or None) if verify else None,
        before_build=before_build,
        rebuild=rebuild,
        what="BM25 index",
    )


def _require_corpus(corpus: str | Path) -> None:
    if not Path(corpus).is_file():
        raise FileNotFoundError(f"corpus {str(corpus)!r} does not exist (or is not a file)")


def _build_into(corpus: str | Path, tmp: Path, cfg: Bm25Config, show_progress: bool) -> dict[str, Any]:
    """Write the index of ``corpus`` into the (empty) folder ``tmp``; return its meta."""
    import bm25s
    from tqdm import tqdm

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
    return meta


def index_is_current(index_dir: str | Path, corpus: str | Path | None, cfg: Bm25Config) -> bool:
    """True if ``index_dir`` holds a complete index built from this corpus with these settings."""
    meta = read_meta(index_dir, corpus)  # IndexDamaged if meta.json is garbage
    if meta is None:
        return False
    if meta.get("format") != FORMAT:
        return False
    if meta.get("tokenizer") != {"stemmer": cfg.stemmer, "stopwords": cfg.stopwords}:
        return False
    if meta.get("bm25") != {"k1": cfg.k1, "b": cfg.b, "method": cfg.method}:
        return False
    if corpus is not None:
        fp = corpus_fingerprint(corpus)
        old = meta.get("corpus")
        old = old if isinstance(old, dict) else {}
        if (old.get("size"), old.get("mtime_ns")) != (fp["size"], fp["mtime_ns"]):
            return False
    return True


def _open_index(d: Path, corpus: str | Path | None = None) -> tuple[Any, ...]:
    """Meta, score matrix (data, indices, indptr as int64), vocabulary and document store of an index
    directory, memory-mapped; ``IndexDamaged`` naming the file if one is garbage, truncated or does not
    fit the others."""
    meta = read_meta(d, corpus)
    if meta is None:
        raise FileNotFoundError(
            f"{str(d)!r} is not a BM25 index (no meta.json); build it with `python -m handler index`"
        )
    if corpus is None and isinstance(meta.get("corpus"), dict):
        corpus = meta["corpus"].get("path")
    tk = meta.get("tokenizer")
    if meta.get("format") != FORMAT or not isinstance(tk, dict) or not {"stemmer", "stopwords"} <= set(tk):
        raise damaged(d / "meta.json", f"is not the meta of a {FORMAT} index", corpus)
    # Plain ndarray views of the memory maps: slicing an np.memmap goes through Python code.
    data = load_npy(d / "data.csc.index.npy", corpus)
    indices = load_npy(d / "indices.csc.index.npy", corpus)
    indptr_path = d / "indptr.csc.index.npy"
    indptr = load_npy(indptr_path, corpus)
    if len(data) != len(indices):
        raise damaged(
            d / "indices.csc.index.npy", f"has {len(indices)} entries for {len(data)} scores", corpus
        )
    check_offsets(indptr_path, indptr, len(data), corpus)
    vocab_path = d / "vocab.index.json"
    vocab = read_json(vocab_path, corpus)
    try:
        # bm25s adds the empty token (never a query token) after the last column
        ids = [i for t, i in vocab.items() if t] if isinstance(vocab, dict) else None
        fits = ids is not None and (not ids or 0 <= min(ids) <= max(ids) < len(indptr) - 1)
    except TypeError:  # ids that are not numbers
        fits = False
    if not fits:
        raise damaged(vocab_path, "does not match the score matrix", corpus)
    docs = DocStore(d, corpus)
    if isinstance(meta.get("n_docs"), int) and len(docs) != meta["n_docs"]:
        raise damaged(
            d / "docs_contents_off.npy",
            f"holds {len(docs)} documents, meta.json says {meta['n_docs']}",
            corpus,
        )
    return meta, data, indices, np.asarray(indptr, dtype=np.int64), vocab, docs


def check_bm25_index(index_dir: str | Path, corpus: str | Path | None = None) -> None:
    """Open every file of an index (headers and sizes only) and raise ``IndexDamaged`` naming a bad one."""
    _open_index(Path(index_dir), corpus)


class _Scratch(threading.local):
    """Per-thread score accumulator (one float per document, kept all-zero between queries)."""

    acc: np.ndarray | None = None


class Bm25Retriever:
    """Query-time BM25 over a memory-mapped index directory.

    Scores are exactly the sums of the index's precomputed per-token BM25 scores (bm25s's scoring);
    ranking is by score, ties by document number. Long posting lists are mostly skipped with a
    MaxScore-style bound (see ``_topk``), which never changes the answer.
    """

    name = "bm25"

    # A term bound is only trusted to prune with this relative slack, so float rounding in the order
    # of summation can never drop a document that could reach (or tie) the k-th score.
    MARGIN = 1e-4

    def __init__(self, index_dir: str | Path):
        d = Path(index_dir)
        self.index_dir = d
        self.meta, self._data, self._indices, self._indptr, self._vocab, self.docs = _open_index(d)
        self.n_docs = len(self.docs)
        tk = self.meta["tokenizer"]
        self.tokenizer = Tokenizer(tk["stemmer"], tk["stopwords"])
        # Cache entries are tied to this exact index build, so a rebuilt index never serves stale hits.
        self.cache_tag = f"bm25@{self.meta.get('built_at', 0):.6f}"
        # Per-token upper bound (largest posting score) for pruning; one pass over the data (~50 ms per
        # 100M postings). Pruning assumes no negative term scores (true for the lucene/atire/bm25l/bm25+
        # idf); an index with negative scores is always scored exhaustively.
        ip = self._indptr
        n_tok = len(ip) - 1
        self._ub = np.zeros(n_tok, dtype=np.float32)
        nonempty = ip[1:] > ip[:-1]
        if len(self._data):
            self._ub[nonempty] = np.maximum.reduceat(self._data, ip[:-1][nonempty])
        self._prune_ok = bool(len(self._data) == 0 or float(np.min(self._data)) >= 0.0)
        self._scratch = _Scratch()
        self.pruned_queries = 0  # queries answered with pruning (the rest summed every posting)

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

    # ------------------------------------------------------------------------------------- scoring
    def _postings(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        s, e = int(self._indptr[t]), int(self._indptr[t + 1])
        return self._indices[s:e], self._data[s:e]

    def _lookup(self, t: int, w: np.float32, docs: np.ndarray) -> np.ndarray:
        """Weighted score of token ``t`` for each of the sorted ``docs`` (0 where it does not occur)."""
        lst, dat = self._postings(t)
        if len(lst) == 0 or len(docs) == 0:
            return np.zeros(len(docs), dtype=np.float32)
        pos = np.searchsorted(lst, docs)
        np.minimum(pos, len(lst) - 1, out=pos)
        return np.where(lst[pos] == docs, dat[pos] * w, np.float32(0))

    def _exact(self, terms: list[tuple[int, np.float32]], docs: np.ndarray) -> np.ndarray:
        """Scores of sorted ``docs``, summed in query-token order (bit-identical to a dense sum)."""
        total = np.zeros(len(docs), dtype=np.float32)
        for t, w in terms:
            total += self._lookup(t, w, docs)
        return total

    def _acc(self) -> np.ndarray:
        acc = self._scratch.acc
        if acc is None:
            acc = self._scratch.acc = np.zeros(self.n_docs, dtype=np.float32)
        return acc

    def _scatter(self, terms: list[tuple[int, np.float32]]) -> tuple[np.ndarray, np.ndarray]:
        """Sum the terms' postings (in the given order): documents (with repeats, one per posting)
        and each one's total score."""
        acc = self._acc()
        parts = []
        try:
            for t, w in terms:
                lst, dat = self._postings(t)
                acc[lst] += dat * w  # a token's postings name each document once
                parts.append(lst)
            docs = np.concatenate(parts)
            scores = acc[docs]
        finally:
            for lst in parts:
                acc[lst] = 0
        return docs, scores

    @staticmethod
    def _select(docs: np.ndarray, scores: np.ndarray, k: int, repeats: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best distinct documents, best first, ties by document number. A document may occur
        up to ``repeats`` times (always with the same score)."""
        m = k * repeats
        if len(docs) > m:
            top = np.argpartition(-scores, m - 1)[:m]
            cand, first = np.unique(docs[top], return_index=True)
            cand_scores = scores[top][first]
            if len(cand) >= k:
                kth = np.partition(cand_scores, len(cand) - k)[len(cand) - k]
                keep = scores >= kth  # every document tied with the k-th, wherever the partition put it
                docs, scores = docs[keep], scores[keep]
        if repeats > 1:
            docs, first = np.unique(docs, return_index=True)
            scores = scores[first]
        order = np.lexsort((docs, -scores))[:k]
        return docs[order], scores[order]

    def _topk(self, token_ids: list[int], weights: list[float], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices and scores of the k best documents (those containing a query token), best first,
        ties by document number.

        MaxScore-style pruning: the full scores of the shortest posting list's documents give a lower
        bound ``theta`` on the k-th best score. Tokens whose bounds (largest posting) add up to less than
        ``theta`` are "non-essential": a document containing only those cannot make the top k, so only
        the essential tokens' postings are summed; the survivors are then looked up (binary search) in
        the non-essential lists, dropping those whose bound falls below ``theta``, and the few left are
        scored exactly in query order.
        """
        terms = [(t, np.float32(w)) for t, w in zip(token_ids, weights, strict=True)]
        ip = self._indptr
        lens = [int(ip[t + 1] - ip[t]) for t, _ in terms]
        total = sum(lens)
        if total == 0:
            return np.empty(0, np.int32), np.empty(0, np.float32)
        if len(terms) == 1:
            docs, dat = self._postings(terms[0][0])
            return self._select(docs, dat * terms[0][1], k, 1)
        ok = [n for n in lens if n >= k]
        seed_len = min(ok) if ok else 0
        # Looking a seed document up costs a binary search per token; skip pruning when that is not cheap.
        if not self._prune_ok or not ok or 4 * seed_len * len(terms) > total:
            docs, scores = self._scatter(terms)
            return self._select(docs, scores, k, len(terms))
        seed = lens.index(seed_len)
        seed_docs = self._postings(terms[seed][0])[0]
        seed_scores = self._exact(terms, seed_docs)
        theta = float(np.partition(seed_scores, len(seed_scores) - k)[len(seed_scores) - k])
        floor = theta * (1.0 - self.MARGIN)
        bounds = sorted((float(self._ub[t]) * float(w), i) for i, (t, w) in enumerate(terms))
        rest = 0.0
        non_essential: list[int] = []
        for ub, i in bounds:
            if rest + ub >= floor:
                break
            rest += ub
            non_essential.append(i)
        if not non_essential:
            docs, scores = self._scatter(terms)
            return self._select(docs, scores, k, len(terms))
        self.pruned_queries += 1
        skip = set(non_essential)
        essential = [tw for i, tw in enumerate(terms) if i not in skip]
        if len(essential) == 1:
            docs, dat = self._postings(essential[0][0])
            part = dat * essential[0][1]
            keep = part + np.float32(rest) >= floor
            docs, part = docs[keep], part[keep]
        else:
            docs, part = self._scatter(essential)
            keep = part + np.float32(rest) >= floor
            docs, first = np.unique(docs[keep], return_index=True)
            part = part[keep][first]
        for i in reversed(non_essential):  # largest bound first: prunes the most
            if not len(docs):
                break
            t, w = terms[i]
            part = part + self._lookup(t, w, docs)
            rest -= float(self._ub[t]) * float(w)
            keep = part + np.float32(max(rest, 0.0)) >= floor
            docs, part = docs[keep], part[keep]
        return self._select(docs, self._exact(terms, docs), k, 1)

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

    def _ranked(
        self, queries: list[str], topk: int, stop: threading.Event | None = None
    ) -> list[tuple[list[int], list[float]]]:
        out = []
        for q in queries:
            if stop is not None and stop.is_set():  # the request timed out: free this thread
                raise BackendTimeout("search stopped: the request timed out")
            ids, w = self.token_ids(q)
            if not ids:
                out.append(([], []))
                continue
            docs, scores = self._topk(ids, w, topk)
            out.append((docs.tolist(), scores.tolist()))
        return out

    def search(
        self, queries: list[str], topk: int, stop: threading.Event | None = None
    ) -> list[list[dict[str, Any]]]:
        """Ranked hits per query, in the Search-R1 shape with scores. When ``stop`` is set (the
        request timed out) the search raises BackendTimeout before its next query."""
        out = []
        for docs, scores in self._ranked(queries, topk, stop):
            hits = []
            for (doc_id, contents), s in zip(self.docs.get_many(docs), scores, strict=True):
                hits.append({"document": {"id": doc_id, "contents": contents}, "score": round(float(s), 6)})
            out.append(hits)
        return out

    def search_json(self, queries: list[str], topk: int, stop: threading.Event | None = None) -> list[str]:
        """The same hits as ``search``, each query's list already serialized as JSON text
        (``json.dumps(search(...)[i], ensure_ascii=False)`` up to whitespace)."""
        out = []
        for docs, scores in self._ranked(queries, topk, stop):
            parts = [
                f'{{"document":{{"id":{_jstr(doc_id)},"contents":{_jstr(contents)}}},"score":{round(s, 6)!r}}}'
                for (doc_id, contents), s in zip(self.docs.get_many(docs), scores, strict=True)
            ]
            out.append("[" + ",".join(parts) + "]")
        return out
