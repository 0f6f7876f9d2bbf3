"""Corpus reading, a memory-mapped document store, the BM25 tokenizer, and a synthetic corpus generator.

Corpus files are JSON lines, either ``{"id", "contents"}`` (title on the first line, as in wiki-18 /
FlashRAG) or ``{"id", "title", "text"}``; both are normalized to ``(id, contents)``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np


class CorpusError(ValueError):
    """The corpus file is malformed; the message names the file, the line and the field."""


def iter_corpus(path: str | Path) -> Iterator[tuple[str, str]]:
    """Yield ``(id, contents)`` for each line of a JSON-lines corpus, failing loudly on a bad line."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"corpus file {str(path)!r} does not exist")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(
                    f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                    "re-encode the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise CorpusError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            doc_id = row.get("id", row.get("_id"))
            if doc_id is None:
                doc_id = str(lineno - 1)
            if "contents" in row:
                contents = row["contents"]
            elif "text" in row:
                title = row.get("title") or ""
                contents = f'"{title}"\n{row["text"]}' if title else row["text"]
            else:
                raise CorpusError(f"{path}:{lineno}: missing field 'contents' (or 'title' + 'text')")
            if not isinstance(contents, str):
                raise CorpusError(f"{path}:{lineno}: field 'contents' must be a string, got {contents!r:.60}")
            yield str(doc_id), contents


def split_title(contents: str) -> tuple[str, str]:
    """Split wiki-18 style contents into (title, text); the title may be quoted."""
    title, _, text = contents.partition("\n")
    if not text:
        return "", title
    return title.strip().strip('"'), text.strip()


class DocStore:
    """Documents as two memory-mapped byte blobs with offsets: O(1) lookup, near-zero load time."""

    def __init__(self, directory: str | Path, corpus: str | Path | None = None):
        """Map the store of an index directory; ``IndexDamaged`` names a missing, garbage or truncated
        file (``corpus``, if known, goes into the suggested rebuild command)."""
        from handler.index_files import check_offsets, damaged, load_npy

        d = Path(directory)
        # Plain ndarray/memoryview views of the memory maps (np.memmap slicing runs Python code).
        blobs = {}
        for name in ("contents", "ids"):
            blob, off = load_npy(d / f"docs_{name}.npy", corpus), load_npy(d / f"docs_{name}_off.npy", corpus)
            if blob.dtype != np.uint8 or blob.ndim != 1:
                raise damaged(d / f"docs_{name}.npy", f"holds {blob.dtype} {blob.shape}, not bytes", corpus)
            check_offsets(d / f"docs_{name}_off.npy", off, len(blob), corpus)
            blobs[name] = (memoryview(blob), off)
        (self._contents, self._contents_off), (self._ids, self._ids_off) = blobs["contents"], blobs["ids"]
        if len(self._ids_off) != len(self._contents_off):
            raise damaged(
                d / "docs_ids_off.npy", "has a different document count than docs_contents_off.npy", corpus
            )

    def __len__(self) -> int:
        return len(self._contents_off) - 1

    def get(self, i: int) -> tuple[str, str]:
        """Return (id, contents) of document number ``i``."""
        return self.get_many([i])[0]

    def get_many(self, docs: list[int]) -> list[tuple[str, str]]:
        """``get`` for several documents."""
        if not docs:
            return []
        n = len(self)
        for i in docs:
            if not -n <= i < n:
                raise IndexError(f"document number {i} out of range (0..{n - 1})")
        nxt = [i + 1 if i >= 0 else i + n + 1 for i in docs]
        c0, c1 = self._contents_off[docs].tolist(), self._contents_off[nxt].tolist()
        i0, i1 = self._ids_off[docs].tolist(), self._ids_off[nxt].tolist()
        ids, con = self._ids, self._contents
        return [
            (str(ids[a:b], "utf-8"), str(con[c:e], "utf-8"))
            for a, b, c, e in zip(i0, i1, c0, c1, strict=True)
        ]

    @staticmethod
    def write(directory: str | Path, ids: list[str], contents: list[str]) -> None:
        """Write the store for the given documents."""
        d = Path(directory)
        for name, items in (("ids", ids), ("contents", contents)):
            encoded = [s.encode("utf-8") for s in items]
            off = np.zeros(len(encoded) + 1, dtype=np.int64)
            np.cumsum([len(x) for x in encoded], out=off[1:])
            blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
            np.save(d / f"docs_{name}.npy", blob)
            np.save(d / f"docs_{name}_off.npy", off)


# Same default list as bm25s's English stopwords so results match bm25s conventions.
STOPWORDS_EN = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there "
    "these they this to was will with".split()
)
_TOKEN_RE = re.compile(r"\w\w+")  # same matches as scikit-learn's \b\w\w+\b, faster


class Tokenizer:
    """Lowercase, split on word characters, drop stopwords, stem (PyStemmer), with a per-word cache.

    The same object tokenizes the corpus at index time and the queries at search time, so both agree.
    """

    def __init__(self, stemmer: str = "english", stopwords: str = "en"):
        self.stemmer_name = stemmer
        self.stopwords_name = stopwords
        self._stopwords = STOPWORDS_EN if stopwords == "en" else frozenset()
        if stemmer:
            import Stemmer

            self._stem = Stemmer.Stemmer(stemmer).stemWord
        else:
            self._stem = None
        self._cache: dict[str, str | None] = {}
        self._cache_bytes = 0

    #: Bounds of the word cache (entries, approximate bytes): once either is reached, new words are
    #: stemmed each time instead of cached (query words are model-written: unbounded in number)
    CACHE_ENTRIES = 2_000_000
    CACHE_BYTES = 256_000_000
    CACHE_ENTRY_OVERHEAD = 150  # dict slot and two str objects, besides the characters

    def word(self, w: str) -> str | None:
        """Normalized token for one lowercase word, or None for a stopword."""
        t = self._cache.get(w, "")
        if t == "":
            t = None if w in self._stopwords else (self._stem(w) if self._stem else w)
            cost = len(w) + len(t or "") + self.CACHE_ENTRY_OVERHEAD
            if len(self._cache) < self.CACHE_ENTRIES and self._cache_bytes + cost <= self.CACHE_BYTES:
                self._cache[w] = t
                self._cache_bytes += cost
        return t

    def ids(self, text: str, vocab: dict[str, int], word_ids: dict[str, int]) -> list[int]:
        """Token ids of a text, growing ``vocab`` (token -> id); ``word_ids`` caches word -> id (-1 = stopword)."""
        words = _TOKEN_RE.findall(text.lower())
        row = list(map(word_ids.get, words))
        if None in row:
            for j, w in enumerate(words):
                if row[j] is None:
                    i = word_ids.get(w)
                    if i is None:
                        t = self.word(w)
                        if t is None:
                            i = -1
                        else:
                            i = vocab.get(t)
                            if i is None:
                                i = vocab[t] = len(vocab)
                        word_ids[w] = i
                    row[j] = i
        if -1 in row:
            row = [i for i in row if i >= 0]
        return row

    def __call__(self, text: str) -> list[str]:
        """Tokens of a text."""
        out = []
        for w in _TOKEN_RE.findall(text.lower()):
            t = self.word(w)
            if t is not None:
                out.append(t)
        return out


# ---------------------------------------------------------------------------------------------------
# Synthetic corpora for tests and benchmarks: Zipf-distributed pseudo-words, wiki-18 layout.

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]


def synthetic_vocab(n_words: int, seed: int = 0) -> list[str]:
    """Distinct pronounceable pseudo-words (2-4 syllables)."""
    rng = np.random.default_rng(seed)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n_words:
        k = int(rng.integers(2, 5))
        w = "".join(_SYLLABLES[i] for i in rng.integers(0, len(_SYLLABLES), size=k))
        if w not in seen and w not in STOPWORDS_EN:
            seen.add(w)
            words.append(w)
    return words


def generate_corpus(
    path: str | Path,
    n_docs: int,
    words_per_doc: int = 100,
    vocab_size: int = 200_000,
    zipf_s: float = 1.0,
    zipf_offset: int = 50,
    seed: int = 0,
) -> Path:
    """Write ``n_docs`` passages ``{"id", "contents"}`` with a title line and Zipf-distributed words.

    Word ranks start at ``zipf_offset`` (the head of English is stopwords, which BM25 drops), so the
    commonest content word is in about a fifth of the passages, as in Wikipedia.
    """
    rng = np.random.default_rng(seed)
    vocab = np.array(synthetic_vocab(vocab_size, seed), dtype=object)
    ranks = np.arange(1, vocab_size + 1, dtype=np.float64) + zipf_offset
    p = ranks**-zipf_s
    p /= p.sum()
    path = Path(path)
    chunk = 10_000
    with path.open("w", encoding="utf-8") as f:
        for start in range(0, n_docs, chunk):
            m = min(chunk, n_docs - start)
            words = vocab[rng.choice(vocab_size, size=(m, words_per_doc), p=p)]
            titles = vocab[rng.integers(vocab_size // 10, vocab_size, size=(m, 2))]
            lines = []
            for j in range(m):
                title = " ".join(titles[j]).title()
                text = " ".join(words[j])
                lines.append(json.dumps({"id": str(start + j), "contents": f'"{title}"\n{text}'}))
            f.write("\n".join(lines) + "\n")
    return path


def sample_queries(
    path: str | Path, n: int, words: int = 4, seed: int = 1, max_docs: int = 50_000
) -> list[str]:
    """Questions made of a title word plus distinct words taken from random passages of a corpus.

    Words are drawn from the passage's distinct words (not its tokens), which favours the rarer,
    informative words a question writer uses.
    """
    rng = np.random.default_rng(seed)
    docs = []
    for i, (_, c) in enumerate(iter_corpus(path)):
        if i >= max_docs:
            break
        docs.append(c)
    out = []
    for _ in range(n):
        title, text = split_title(docs[int(rng.integers(len(docs)))])
        toks = sorted(set(text.split()))
        picked = [toks[int(i)] for i in rng.choice(len(toks), size=min(words - 1, len(toks)), replace=False)]
        out.append(" ".join([title.split()[0].lower(), *picked]))
    return out
