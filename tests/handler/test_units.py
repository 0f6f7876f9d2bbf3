"""In-process unit tests: config, tokenizer, BM25 scoring paths, cache, URL guard, extraction."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import pytest

from handler.backends.bm25 import Bm25Retriever, build_index
from handler.cache import Cache, cache_key
from handler.config import ConfigError, load_config
from handler.corpus import CorpusError, Tokenizer, generate_corpus, iter_corpus
from handler.errors import BadInput, Forbidden
from handler.reader import UrlGuard, html_to_text, pick_passages


def test_config_overrides_and_errors(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("port: 9001\nbm25:\n  k1: 1.2\nreader:\n  allow_hosts: [10.0.0.0/8]\n")
    cfg = load_config(p, {"web.engine": "bing", "port": 9002})
    assert (cfg.port, cfg.bm25.k1, cfg.web.engine, cfg.reader.allow_hosts) == (
        9002,
        1.2,
        "bing",
        ["10.0.0.0/8"],
    )
    assert cfg.host == "127.0.0.1"
    with pytest.raises(ConfigError, match="unknown config key 'bm25.k3'"):
        load_config(None, {"bm25.k3": 1})
    with pytest.raises(ConfigError, match="config key 'backend': 'bm26' is not one of"):
        load_config(None, {"backend": "bm26"})
    with pytest.raises(ConfigError, match="config key 'port': expected an integer, got '80'"):
        load_config(None, {"port": "80"})
    for bad in (0, -1.5):  # a zero timeout would turn every retrieve into a 504
        with pytest.raises(ConfigError, match=f"config key 'retrieve_timeout_s': {bad} must be > 0"):
            load_config(None, {"retrieve_timeout_s": bad})


def test_corpus_errors_name_line_and_field(tmp_path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text('{"id": "1", "contents": "ok"}\n{"id": "2", "body": "x"}\n')
    with pytest.raises(CorpusError, match=r"c.jsonl:2: missing field 'contents'"):
        list(iter_corpus(p))
    p.write_text('{"id": "1", "contents": "ok"}\nnot json\n')
    with pytest.raises(CorpusError, match=r"c.jsonl:2: not valid JSON"):
        list(iter_corpus(p))


def test_tokenizer_stems_and_drops_stopwords() -> None:
    tok = Tokenizer()
    assert tok("The Running of the Bulls, and a runner!") == ["run", "bull", "runner"]
    vocab: dict[str, int] = {}
    cache: dict[str, int] = {}
    assert tok.ids("running runs the run", vocab, cache) == [0, 0, 0]


def _reference_topk(scores, k: int):
    """Straightforward top k of a dense score array: documents with a nonzero score, by score then number."""
    docs = np.flatnonzero(scores)
    order = np.lexsort((docs, -scores[docs]))[:k]
    return docs[order], scores[docs][order]


@pytest.mark.parametrize("k", [1, 3, 10])
def test_bm25_topk_equals_bm25s_reference(tmp_path, k: int) -> None:
    """Pruned top k == bm25s's own dense scores ranked naively: same ids, same scores (to float rounding)."""
    import bm25s

    corpus = generate_corpus(tmp_path / "c.jsonl", 3000, words_per_doc=40, vocab_size=3000, seed=3)
    build_index(corpus, tmp_path / "idx", show_progress=False)
    r = Bm25Retriever(tmp_path / "idx")
    ref = bm25s.BM25.load(str(tmp_path / "idx"), mmap=False, show_progress=False)
    docs = [c for _, c in iter_corpus(corpus)]
    rng = np.random.default_rng(k)
    queries = [" ".join(d.split("\n")[1].split()[:4]) for d in docs[:30]]
    queries += [" ".join(rng.choice(docs[i].split(), size=5)) for i in rng.integers(0, len(docs), 30)]
    queries += [docs[0].split("\n")[0], "vocabularyword" + docs[1][:20], queries[0] + " " + queries[0]]
    for q in queries:
        ids, w = r.token_ids(q)
        if not ids:
            continue
        dense = ref.get_scores([t for t, c in zip(ids, w, strict=True) for _ in range(int(c))])
        want_docs, want_scores = _reference_topk(dense, k)
        got_docs, got_scores = r._topk(ids, w, k)
        assert got_docs.tolist() == want_docs.tolist(), q
        assert got_scores == pytest.approx(want_scores, rel=1e-5), q
        # bit-identical to a float32 sum of the postings in query-token order
        exact = np.zeros(len(r), np.float32)
        for t, c in zip(ids, w, strict=True):
            lst, dat = r._postings(t)
            exact[lst] += dat * np.float32(c)
        assert got_scores.tolist() == exact[got_docs].tolist()
    assert r.pruned_queries > 20  # the pruned path is the one tested
    hits = r.search(queries[:5], k)
    assert [json.loads(j) for j in r.search_json(queries[:5], k)] == hits
    assert all(h["document"]["contents"] == docs[int(h["document"]["id"])] for q in hits for h in q)


def test_cache_ttl_and_concurrent_writers(tmp_path) -> None:
    c = Cache(tmp_path / "c.sqlite", ttl_s=0.3)
    k = cache_key("bm25", "  Hello   World ", 3)
    assert k == cache_key("bm25", "hello world", 3) != cache_key("bm25", "hello world", 4)
    c.put_many({k: "[1]"})
    assert c.get_many([k, "missing"]) == {k: "[1]"}
    time.sleep(0.35)
    assert c.get_many([k]) == {}

    c2 = Cache(tmp_path / "c.sqlite", ttl_s=60)
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(50):
                c2.put_many({f"t{t}-{i}": json.dumps(i)})
                assert c2.get_many([f"t{t}-{i}"]) == {f"t{t}-{i}": json.dumps(i)}
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert c2.size() == 400 + 1


def test_url_guard_without_allow_list() -> None:
    g = UrlGuard([])

    async def check(url: str) -> None:
        await g.check(url, "url_list[0]")

    for url in (
        "http://localhost/",
        "http://127.0.0.1:8000/",
        "http://172.16.5.4/",
        "http://[fe80::1]/",
        "http://100.64.0.1/",
        "http://[fd00:ec2::254]/",
    ):
        with pytest.raises(Forbidden):
            asyncio.run(check(url))
    with pytest.raises(BadInput, match="not an http"):
        asyncio.run(check("javascript:alert(1)"))
    asyncio.run(check("http://8.8.8.8/"))  # a public address passes
    asyncio.run(UrlGuard(["localhost"]).check("http://localhost/", "u"))
    asyncio.run(UrlGuard(["10.0.0.0/8"]).check("http://10.2.3.4/", "u"))


def test_html_to_text_and_passage_picking() -> None:
    html = "<html><body><script>x=1</script><p>Alpha beta gamma.</p><p>Delta epsilon.</p></body></html>"
    text = html_to_text(html)
    assert "Alpha beta gamma." in text and "x=1" not in text
    long = "\n".join([f"filler paragraph {i} " * 5 for i in range(50)] + ["the answer is Kepler in Prague"])
    picked = pick_passages(long, "Who was in Prague?", 200)
    assert "Kepler in Prague" in picked and len(picked) <= 200


def test_cache_memory_layer_is_bounded_and_honours_ttl(tmp_path) -> None:
    c = Cache(tmp_path / "m.sqlite", ttl_s=60, memory_entries=3)
    c.put_many({f"k{i}": f"[{i}]" for i in range(5)})
    assert list(c._mem) == ["k2", "k3", "k4"]  # oldest inserted dropped
    c._con().execute("DELETE FROM cache WHERE key = 'k4'")
    assert c.get_many(["k4"]) == {"k4": "[4]"}  # served from memory, no SQLite query
    assert c.get_many(["k0", "k1"]) == {"k0": "[0]", "k1": "[1]"}  # from SQLite, now remembered
    assert list(c._mem) == ["k4", "k0", "k1"]
    time.sleep(0.05)
    assert c.get_many(["k0", "k4"], ttl_s=0.01) == {}  # the per-call TTL applies to memory too
    assert c.purge_expired() == 0 and len(c._mem) == 3
    c.ttl_s = 0.01
    assert c.purge_expired() == 4 and c._mem == {}
    off = Cache(tmp_path / "m.sqlite", ttl_s=60, memory_entries=0)
    off.put_many({"x": "[]"})
    assert off.get_many(["x"]) == {"x": "[]"} and off._mem == {}


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_unhandled_error_is_json_500_and_counted(tmp_path) -> None:
    """The observing middleware turns a bug into a JSON 500, and counts it."""
    from fastapi.testclient import TestClient

    from handler.app import create_app

    class Broken:
        name = "bm25"

        def __len__(self) -> int:
            return 1

        def info(self) -> dict:
            raise RuntimeError("boom")

    cfg = load_config(None, {"cache.path": str(tmp_path / "c.sqlite"), "web_enabled": False})
    with TestClient(
        create_app(cfg, Broken()), raise_server_exceptions=False, base_url="http://127.0.0.1"
    ) as c:
        r = c.get("/health")
        assert r.status_code == 500 and r.json() == {"error": "internal", "detail": "internal error"}
        r = c.post("/retrieve", content=b"{}", headers={"content-length": "999999999"})
        assert r.status_code == 413 and r.json()["error"] == "too_large"
        text = c.get("/metrics").text
    assert 'handler_errors_total{endpoint="/health",kind="internal"} 1.0' in text
    assert 'handler_requests_total{endpoint="/retrieve",status="413"} 1.0' in text


def test_failed_index_builds_leave_no_temporary_folder(tmp_path, caplog) -> None:
    """A missing corpus is refused before a build is announced; a build that fails midway cleans up."""
    import logging

    from handler.backends import prepare_index
    from handler.config import HandlerConfig

    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        build_index(tmp_path / "missing.jsonl", tmp_path / "missing.bm25-index", show_progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="has no documents"):  # fails after the temporary folder exists
        build_index(empty, tmp_path / "empty.bm25-index", show_progress=False)
    cfg = HandlerConfig()
    cfg.corpus = str(tmp_path / "gone.jsonl")
    with caplog.at_level(logging.INFO), pytest.raises(FileNotFoundError, match="gone.jsonl"):
        prepare_index(cfg, show_progress=False)
    assert "building" not in caplog.text
    # only the build lock file (left in place, as lock files are) beside the corpus
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.bm25-index.lock", "empty.jsonl"]
