"""Index CLI, index reuse, cache persistence across restarts, backend timeouts, bundled corpus."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
from handler_testlib import REPO, SAMPLE, SERPER_KEY, FakeWeb, Server, base_config


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_index_cli_then_serve_and_cache_survives_restart(tmp_path, fake_web: FakeWeb) -> None:
    corpus = tmp_path / "corpus.jsonl"
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    # the other corpus layout: {"id", "title", "text"}
    corpus.write_text(
        "\n".join(
            json.dumps(
                {
                    "id": r["id"],
                    "title": r["contents"].split("\n")[0].strip('"'),
                    "text": r["contents"].split("\n", 1)[1],
                }
            )
            for r in rows
        )
        + "\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "handler", "index", str(corpus), "--out", str(tmp_path / "idx")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["n_docs"] == 24
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["format"] == "igpo-bm25-v1" and meta["n_docs"] == 24

    cfg = base_config(tmp_path, fake_web, corpus="", index_dir=str(tmp_path / "idx"))
    s = Server(tmp_path, cfg, env={"SERPER_API_KEY": SERPER_KEY}).start()
    try:
        r = httpx.post(
            s.url + "/retrieve", json={"queries": ["Mona Lisa painter"], "topk": 2, "return_scores": True}
        )
        first = r.json()
        assert first["result"][0][0]["document"] == {"id": "10", "contents": rows[10]["contents"]}
        ws = httpx.post(s.url + "/tools/web_search", json={"query": ["persisted web query"]}, timeout=10)
        assert ws.status_code == 200
    finally:
        s.stop()
    assert fake_web.counts["serper:persisted web query"] == 1

    s = Server(tmp_path, cfg, env={"SERPER_API_KEY": SERPER_KEY}).start()
    try:
        r = httpx.post(
            s.url + "/retrieve", json={"queries": ["mona   LISA painter"], "topk": 2, "return_scores": True}
        )
        assert r.json() == first
        ws2 = httpx.post(s.url + "/tools/web_search", json={"query": ["persisted web query"]}, timeout=10)
        assert ws2.json() == ws.json()
        metrics = httpx.get(s.url + "/metrics").text
        assert _metric(metrics, "handler_cache_hits_total") == 2  # both answered from the SQLite file
        assert _metric(metrics, "handler_cache_misses_total") == 0
        health = httpx.get(s.url + "/health").json()
        assert health["cache"]["entries"] >= 2 and health["cache"]["hits"] == 2
    finally:
        s.stop()
    assert fake_web.counts["serper:persisted web query"] == 1  # the upstream was not called again


def test_serve_reuses_index_and_rebuilds_when_corpus_changes(tmp_path, fake_web: FakeWeb) -> None:
    cfg = base_config(tmp_path, fake_web)
    s = Server(tmp_path, cfg).start()
    built1 = httpx.get(s.url + "/health").json()["index_built_at"]
    s.stop()
    s = Server(tmp_path, cfg).start()
    assert httpx.get(s.url + "/health").json()["index_built_at"] == built1  # reused
    s.stop()
    time.sleep(0.01)
    with open(tmp_path / "corpus.jsonl", "a") as f:
        f.write(
            json.dumps({"id": "new", "contents": '"Zanzibar"\nZanzibar is an archipelago off Tanzania.'})
            + "\n"
        )
    s = Server(tmp_path, cfg).start()
    try:
        h = httpx.get(s.url + "/health").json()
        assert h["index_built_at"] != built1 and h["corpus_size"] == 25
        r = httpx.post(s.url + "/retrieve", json={"query": "Zanzibar archipelago", "topk": 1})
        assert r.json()["result"][0][0]["id"] == "new"
    finally:
        s.stop()


def test_slow_backend_is_504_not_a_hang(tmp_path, fake_web: FakeWeb) -> None:
    """A retrieve that outlives retrieve_timeout_s answers 504 quickly and the server keeps serving.

    The timeout is 1 µs and the request the largest the test limits allow (64 queries of ~440
    characters, top 20): with 1 ms and short queries, BM25 on the small test corpus once answered in
    time on a fresh machine."""
    cfg = base_config(tmp_path, fake_web, retrieve_timeout_s=1e-6, cache={"enabled": False})
    s = Server(tmp_path, cfg).start()
    try:
        words = "rivers mountains of the world capital city country population history river lake"
        big = [f"query number {i} " + " ".join([words] * 5) for i in range(64)]
        assert max(map(len, big)) <= cfg["limits"]["max_query_chars"]
        t0 = time.time()
        r = httpx.post(s.url + "/retrieve", json={"queries": big, "topk": 20}, timeout=10)
        assert time.time() - t0 < 5
        assert r.status_code == 504
        assert r.json() == {"error": "backend_timeout", "detail": "bm25 backend did not answer within 1e-06s"}
        assert s.alive() and httpx.get(s.url + "/health").status_code == 200
    finally:
        s.stop()


def test_bundled_corpus_one_command(tmp_path) -> None:
    """`python -m handler serve --port N` with no corpus serves the bundled sample."""
    s = Server(
        tmp_path,
        {"index_dir": str(tmp_path / "bundled-index"), "cache": {"enabled": False}, "log_level": "warning"},
    ).start()
    try:
        h = httpx.get(s.url + "/health").json()
        assert h["corpus_size"] == 24 and h["cache"] == {"enabled": False}
        r = httpx.post(s.url + "/retrieve", json={"query": "Who invented the telephone?"})
        assert r.json()["result"][0][0]["id"] == "20"
    finally:
        s.stop()


def test_bad_config_fails_fast_with_message(tmp_path) -> None:
    (tmp_path / "bad.yaml").write_text("backend: bm25\nbm25:\n  k1: fast\n")
    out = subprocess.run(
        [sys.executable, "-m", "handler", "serve", "--config", str(tmp_path / "bad.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "config key 'bm25.k1': expected a number, got 'fast'" in out.stderr
