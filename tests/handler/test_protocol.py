"""Search-R1 /retrieve protocol, ranking, /health, /metrics and bad input against a real server."""

from __future__ import annotations

import json

import httpx
import pytest
from handler_testlib import SERPER_KEY, Server

PENICILLIN = "18"
CANBERRA = "17"
TOKYO = "11"


def post(server: Server, path: str, body: object, **kw: object) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=10, **kw)


def test_retrieve_round_trip_with_scores(server: Server) -> None:
    r = post(
        server,
        "/retrieve",
        {
            "queries": ["who discovered penicillin", "capital city of Australia"],
            "topk": 2,
            "return_scores": True,
        },
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    result = r.json()["result"]
    assert len(result) == 2 and all(len(hits) == 2 for hits in result)
    for hits in result:
        for h in hits:
            assert set(h) == {"document", "score"}
            assert set(h["document"]) == {"id", "contents"}
            assert isinstance(h["score"], float)
        assert hits[0]["score"] >= hits[1]["score"]
    assert result[0][0]["document"]["id"] == PENICILLIN
    assert result[0][0]["document"]["contents"].startswith('"Penicillin"\n')
    assert [h["document"]["id"] for h in result[1]] == [CANBERRA, TOKYO]


def test_retrieve_without_scores_returns_documents(server: Server) -> None:
    r = post(server, "/retrieve", {"queries": ["Alexander Fleming mould"], "topk": 1, "return_scores": False})
    assert r.status_code == 200
    (hits,) = r.json()["result"]
    assert hits == [{"id": PENICILLIN, "contents": hits[0]["contents"]}]


def test_null_topk_means_three(server: Server) -> None:
    r = post(server, "/retrieve", {"queries": ["largest in the world"], "topk": None, "return_scores": True})
    assert r.status_code == 200
    assert len(r.json()["result"][0]) == 3


@pytest.mark.parametrize(
    "body",
    [
        {"query": "capital of Australia", "top_k": 2},
        {"query": "capital of Australia", "k": 2},
        {"queries": ["capital of Australia"], "topk": 2},
    ],
)
def test_variants_single_query_and_topk_names(server: Server, body: dict) -> None:
    r = post(server, "/retrieve", {**body, "return_scores": True})
    assert r.status_code == 200, r.text
    (hits,) = r.json()["result"]
    assert [h["document"]["id"] for h in hits] == [CANBERRA, TOKYO]


def test_ranking_order_and_case_insensitivity(server: Server) -> None:
    queries = [
        "Nobel Prize physics relativity",
        "NOBEL prize   PHYSICS relativity",
        "first crewed Moon landing",
        "longest river Africa Mediterranean",
        "Stratford playwright Hamlet",
    ]
    r = post(server, "/retrieve", {"queries": queries, "topk": 1, "return_scores": True})
    ids = [hits[0]["document"]["id"] for hits in r.json()["result"]]
    assert ids == ["8", "8", "12", "14", "5"]


def test_query_with_no_known_terms_gives_empty_list(server: Server) -> None:
    r = post(server, "/retrieve", {"queries": ["zzzqqq xxyyzz", "the of and"], "return_scores": True})
    assert r.status_code == 200
    assert r.json() == {"result": [[], []]}


def test_refuses_json_sent_as_another_content_type(server: Server) -> None:
    """A text/plain POST is what a web page can send without a CORS preflight (see test_neighbours)."""
    r = httpx.post(
        server.url + "/retrieve",
        content=json.dumps({"query": "Canberra", "topk": 1}),
        timeout=10,
        headers={"content-type": "text/plain"},
    )
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    assert "header Content-Type: 'text/plain'" in r.json()["detail"]


def test_health_reports_backend_corpus_index_cache(server: Server) -> None:
    h = httpx.get(server.url + "/health", timeout=5).json()
    assert h["status"] == "ok"
    assert h["backend"] == "bm25"
    assert h["corpus_size"] == 24
    assert h["index_age_s"] >= 0
    assert h["cache"]["enabled"] is True and {"hits", "misses", "entries"} <= set(h["cache"])
    assert h["web"] == {"enabled": True, "engine": "serper", "configured": True, "reader_llm": False}
    assert SERPER_KEY not in json.dumps(h)


def test_metrics_prometheus_text(server: Server) -> None:
    post(server, "/retrieve", {"queries": ["metrics probe"], "topk": 1})
    post(server, "/retrieve", {"queries": ["x"], "topk": 0})
    text = httpx.get(server.url + "/metrics", timeout=5).text
    assert "# TYPE handler_requests_total counter" in text
    assert 'handler_requests_total{endpoint="/retrieve",status="200"}' in text
    assert 'handler_request_latency_seconds_bucket{endpoint="/retrieve",le="0.005"}' in text
    assert 'handler_errors_total{endpoint="/retrieve",kind="bad_input"}' in text
    assert "handler_cache_hits_total" in text and "handler_cache_misses_total" in text


# ----------------------------------------------------------------------------- bad input
BAD = [
    ({"queries": ["x"], "topk": "abc"}, 422, "field 'topk'"),
    ({"queries": ["x"], "topk": 1.5}, 422, "field 'topk'"),
    ({"queries": ["x"], "topk": 0}, 422, "field 'topk' is 0"),
    ({"queries": ["x"], "topk": 21}, 422, "field 'topk' is 21; it must be between 1 and 20"),
    ({"queries": ["x"], "k": -1}, 422, "field 'k' is -1"),
    ({"queries": ["x"], "topk": 2, "top_k": 3}, 422, "fields topk, top_k disagree"),
    ({"queries": "just a string"}, 422, "field 'queries': Input should be a valid list"),
    ({"queries": [1, "x"]}, 422, "field 'queries[0]': Input should be a valid string (got 1)"),
    ({"queries": ["q"] * 65}, 422, "field 'queries' has 65 queries; at most 64"),
    ({"query": 5}, 422, "field 'query': Input should be a valid string"),
    ({"queries": ["x"], "query": "y"}, 422, "either field 'queries'"),
    ({"topk": 3}, 422, "field 'queries' is required"),
    ({"queries": ["x"], "return_scores": "yes"}, 422, "field 'return_scores'"),
    ([1, 2], 422, "must be a JSON object, got list"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD)
def test_bad_input_names_the_field(server: Server, body: object, status: int, message: str) -> None:
    r = post(server, "/retrieve", body)
    assert r.status_code == status, r.text
    assert r.json()["error"] == "bad_input"
    assert message in r.json()["detail"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"queries": ["x"', "malformed JSON body"),
        (b"", "empty request body"),
        (b"\xff\xfe garbage", "malformed JSON body"),
    ],
)
def test_malformed_json_is_400(server: Server, raw: bytes, message: str) -> None:
    r = httpx.post(
        server.url + "/retrieve", content=raw, headers={"content-type": "application/json"}, timeout=5
    )
    assert r.status_code == 400
    assert r.json()["error"] == "bad_json" and message in r.json()["detail"]


def test_oversized_body_is_413(server: Server) -> None:
    r = post(server, "/retrieve", {"queries": ["word " * 60] * 1000})
    assert r.status_code == 413
    assert "exceeds the limit of 200000 bytes" in r.json()["detail"]


def test_oversized_chunked_body_is_413(server: Server) -> None:
    def gen():
        for _ in range(300):
            yield b" " * 1000

    r = httpx.post(
        server.url + "/retrieve", content=gen(), headers={"content-type": "application/json"}, timeout=10
    )
    assert r.status_code == 413 and "exceeds the limit of 200000 bytes" in r.json()["detail"]


def test_server_survives_all_bad_input(server: Server) -> None:
    for body, _, _ in BAD:
        post(server, "/retrieve", body)
    httpx.post(server.url + "/retrieve", content=b"{{{{", timeout=5)
    assert server.alive()
    r = post(server, "/retrieve", {"queries": ["Canberra"], "topk": 1})
    assert r.status_code == 200 and r.json()["result"][0][0]["id"] == CANBERRA


def test_unknown_path_and_method(server: Server) -> None:
    assert httpx.get(server.url + "/nope", timeout=5).status_code == 404
    assert httpx.get(server.url + "/retrieve", timeout=5).status_code == 405
