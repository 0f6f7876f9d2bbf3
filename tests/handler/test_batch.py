"""Batch semantics of /retrieve as Search-R1 trainers use it, against a real server with default limits.

``SearchR1StyleClient`` is our own small re-implementation of what a Search-R1 trainer does with the
protocol (written from the protocol, not copied): one POST ``{"queries", "topk", "return_scores": true}``
per turn with every rollout's query, ``resp["result"]`` read without a fallback, and per query the hits'
``document.contents`` turned into "Doc i(Title: ...) text" lines. A trainer stops on any non-200 or on
a reply without ``result``, so every case here must answer 200 with one list per query, in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from handler_testlib import FakeWeb, Server, base_config

from handler.config import LimitsConfig

CANBERRA = "17"
PENICILLIN = "18"


class SearchR1StyleClient:
    """What a Search-R1 trainer's retrieval step needs from the handler, and nothing more."""

    def __init__(self, url: str, topk: int = 3):
        self.url = url + "/retrieve"
        self.topk = topk

    def batch_search(self, queries: list[str]) -> list[list[dict[str, Any]]]:
        """One request for the whole turn; a KeyError here is what stops the trainer."""
        payload = {"queries": queries, "topk": self.topk, "return_scores": True}
        resp = httpx.post(self.url, json=payload, timeout=120)
        return resp.json()["result"]

    @staticmethod
    def passages_text(hits: list[dict[str, Any]]) -> str:
        """The text a rollout reads: title from the first line of contents, then the rest."""
        lines = []
        for i, hit in enumerate(hits, 1):
            title, _, text = hit["document"]["contents"].partition("\n")
            assert isinstance(hit["score"], float)
            lines.append(f"Doc {i}(Title: {title}) {text}")
        return "\n".join(lines)

    def turn(self, queries: list[str]) -> list[str]:
        """The information text for every rollout that searched this turn."""
        return [self.passages_text(hits) for hits in self.batch_search(queries)]


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory, fake_web: FakeWeb) -> Iterator[Server]:
    """A handler with the default limits (no ``limits`` section in its config)."""
    tmp = tmp_path_factory.mktemp("batch")
    cfg = base_config(tmp, fake_web)
    del cfg["limits"]
    s = Server(tmp, cfg).start()
    yield s
    s.stop()


def test_defaults_take_search_r1_batches() -> None:
    lim = LimitsConfig()
    assert lim.max_queries >= 4096
    # 4,096 queries of max_query_chars ASCII characters, JSON-quoted and comma-separated, fit the body
    assert 4096 * (lim.max_query_chars + 4) + 100 <= lim.max_body_bytes


def test_search_r1_client_empty_turn(default_server: Server) -> None:
    client = SearchR1StyleClient(default_server.url)
    r = httpx.post(client.url, json={"queries": [], "topk": 3, "return_scores": True}, timeout=10)
    assert r.status_code == 200 and r.json() == {"result": []}
    assert client.turn([]) == []


def test_search_r1_client_default_training_batch(default_server: Server) -> None:
    """512 prompts x 5 rollouts = 2,560 queries in one request, with the odd bad query among them."""
    client = SearchR1StyleClient(default_server.url)
    base = ["who discovered penicillin", "capital city of Australia", "zzzqqq unknown words"]
    queries = [f"{base[i % 3]} {i}" for i in range(2560)]
    queries[7] = ""  # a rollout that wrote an empty query
    queries[8] = " \t\n "
    queries[9] = "capital city of Australia " + "very long rambling query " * 3000  # ~75k characters
    texts = client.turn(queries)
    assert len(texts) == 2560
    hits = client.batch_search(queries[:12])
    assert [bool(h) for h in hits[:7]] == [True, True, False, True, True, False, True]
    assert hits[0][0]["document"]["id"] == PENICILLIN and hits[1][0]["document"]["id"] == CANBERRA
    assert hits[7] == [] and hits[8] == [] and texts[7] == "" and texts[8] == ""
    assert hits[9][0]["document"]["id"] == CANBERRA  # searched on its first words
    assert texts[0].startswith('Doc 1(Title: "Penicillin") Penicillin was discovered in 1928')


def test_blank_and_long_queries_keep_their_place(server: Server) -> None:
    """base_config limits: 500 characters. Clipping also applies at max_query_tokens words."""
    long_words = "capital city of Australia " + " ".join(f"w{i}" for i in range(400))
    r = httpx.post(
        server.url + "/retrieve",
        json={"queries": ["penicillin", "", long_words, "x" * 10_000], "topk": 1, "return_scores": True},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert len(result) == 4
    assert result[0][0]["document"]["id"] == PENICILLIN
    assert result[1] == [] and result[3] == []
    assert result[2][0]["document"]["id"] == CANBERRA
    r = httpx.post(server.url + "/retrieve", json={"query": "  "}, timeout=10)
    assert r.status_code == 200 and r.json() == {"result": [[]]}
    r = httpx.post(server.url + "/retrieve", json={"queries": ["", "Canberra"], "topk": 1}, timeout=10)
    assert r.json()["result"][0] == [] and r.json()["result"][1][0]["id"] == CANBERRA
    metrics = httpx.get(server.url + "/metrics", timeout=5).text
    (line,) = [ln for ln in metrics.splitlines() if ln.startswith("handler_queries_clipped_total ")]
    assert float(line.split()[1]) >= 2


def test_clip_query_words_then_characters() -> None:
    from handler.app import clip_query

    q = "a b c d e"
    assert clip_query(q, 3, 100) == "a b c"
    assert clip_query(q, 5, 100) is q
    assert clip_query("abcdefgh", 3, 5) == "abcde"
    assert clip_query("  one\ttwo\nthree four ", 2, 100) == "one two"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"queries": ["q"] * 65}, "field 'queries' has 65 queries; at most 64"),
        ({"queries": ["x"], "topk": 0}, "field 'topk' is 0"),
        ({"queries": "one string"}, "field 'queries'"),
        ({"queries": ["ok", 5]}, "field 'queries[1]'"),
    ],
)
def test_request_level_errors_still_4xx(server: Server, body: dict, message: str) -> None:
    r = httpx.post(server.url + "/retrieve", json=body, timeout=10)
    assert r.status_code == 422 and message in r.json()["detail"], r.text
