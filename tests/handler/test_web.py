"""web_search (Serper, Bing) and browse_webpage (fetch, extraction, SSRF guard, LLM reader) against fakes."""

from __future__ import annotations

import httpx
import pytest
from handler_testlib import BING_KEY, LLM_KEY, SERPER_KEY, FakeWeb, Server


def post(server: Server, path: str, body: object) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=15)


def test_serper_search_text_and_hits(server: Server, fake_web: FakeWeb) -> None:
    calls = len(fake_web.seen_keys)
    r = post(server, "/tools/web_search", {"query": ["kepler laws", "tycho brahe"]})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["queries"] == ["kepler laws", "tycho brahe"]
    assert data["hits"][0][0] == {
        "title": "kepler laws result 1",
        "url": "https://example.com/1",
        "snippet": "About kepler laws, part 1.",
    }
    assert len(data["hits"][0]) == 3  # results_per_query
    text = data["result"]
    assert text.startswith(
        'Search results for "kepler laws":\n[1] kepler laws result 1\nURL: https://example.com/1\n'
    )
    assert 'Search results for "tycho brahe":' in text
    # these queries reached Serper (no other test may warm the handler's cache with them), with the key
    assert fake_web.seen_keys[calls:] and set(fake_web.seen_keys[calls:]) == {SERPER_KEY}


def test_web_search_uses_first_three_and_says_so(server: Server) -> None:
    r = post(server, "/tools/web_search", {"query": ["q one", "q two", "q three", "q four"]})
    assert r.status_code == 200
    assert r.json()["queries"] == ["q one", "q two", "q three"]
    assert r.json()["result"].endswith("(Only the first 3 of 4 queries were searched.)")


def test_web_search_accepts_single_string(server: Server) -> None:
    r = post(server, "/tools/web_search", {"query": "lone query"})
    assert r.status_code == 200 and r.json()["queries"] == ["lone query"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "field 'query' is required"),
        ({"query": []}, "field 'query' is empty"),
        ({"query": [""]}, "field 'query[0]' is an empty query"),
        ({"query": [3]}, "field 'query"),
        ({"query": ["q"] * 17}, "at most 16"),
    ],
)
def test_web_search_bad_input(server: Server, body: dict, message: str) -> None:
    r = post(server, "/tools/web_search", body)
    assert r.status_code == 422 and message in r.json()["detail"]


def test_web_search_timeout_is_504_with_message(server: Server, fake_web: FakeWeb) -> None:
    r = post(server, "/tools/web_search", {"query": ["SLOW query"]})
    assert r.status_code == 504
    assert r.json()["error"] == "backend_timeout"
    assert "serper web search timed out after 2 attempt(s)" in r.json()["detail"]
    assert fake_web.counts["serper:SLOW query"] == 2  # bounded: 1 try + max_retries=1


def test_web_search_upstream_500_is_502_after_bounded_retries(server: Server, fake_web: FakeWeb) -> None:
    r = post(server, "/tools/web_search", {"query": ["FAIL500 query"]})
    assert r.status_code == 502
    assert "serper web search failed after 2 attempt(s): HTTP 500" in r.json()["detail"]
    assert fake_web.counts["serper:FAIL500 query"] == 2
    assert post(server, "/retrieve", {"queries": ["Canberra"]}).status_code == 200  # still up


def test_bing_search_and_key_header(server_bing: Server, fake_web: FakeWeb) -> None:
    r = post(server_bing, "/tools/web_search", {"query": ["solar eclipse"]})
    assert r.status_code == 200, r.text
    assert r.json()["hits"][0][0] == {
        "title": "Bing solar eclipse 1",
        "url": "https://bing.example/1",
        "snippet": "Bing says 1",
    }
    assert fake_web.seen_keys[-1] == BING_KEY


def test_missing_key_is_503_and_keys_never_echoed(tmp_path, fake_web: FakeWeb) -> None:
    from handler_testlib import base_config

    s = Server(tmp_path, base_config(tmp_path, fake_web), env={}).start()
    try:
        r = post(s, "/tools/web_search", {"query": ["anything"]})
        assert r.status_code == 503
        assert "set the environment variable SERPER_API_KEY" in r.json()["detail"]
    finally:
        s.stop()
    # a wrong key: upstream refuses, the handler says so without echoing any key
    s = Server(tmp_path, base_config(tmp_path, fake_web), env={"SERPER_API_KEY": "wrong-key-xyz"}).start()
    try:
        r = post(s, "/tools/web_search", {"query": ["anything else"]})
        assert r.status_code == 502 and "HTTP 403" in r.json()["detail"]
        assert "wrong-key-xyz" not in r.text
    finally:
        s.stop()
    assert "wrong-key-xyz" not in s.log()


def test_browse_extracts_main_text(server: Server, fake_web: FakeWeb) -> None:
    r = post(
        server,
        "/tools/browse_webpage",
        {"url_list": [fake_web.base + "/page.html"], "question": "When was Kepler born?"},
    )
    assert r.status_code == 200, r.text
    page = r.json()["pages"][0]
    assert page["ok"] is True
    assert "born in 1571" in page["text"]
    assert "tracking" not in page["text"]  # script dropped
    assert r.json()["result"].startswith(f"Page: {fake_web.base}/page.html\n")


def test_browse_size_cap_and_plain_text(server: Server, fake_web: FakeWeb) -> None:
    r = post(
        server,
        "/tools/browse_webpage",
        {"url_list": [fake_web.base + "/big.html", fake_web.base + "/plain.txt"], "question": "filler"},
    )
    assert r.status_code == 200
    big, plain = r.json()["pages"]
    assert big["ok"] and len(big["text"]) <= 600  # max_chars_per_page
    assert plain["text"] == "Plain text page about Tycho Brahe."


def test_browse_per_page_errors_are_explicit(server: Server, fake_web: FakeWeb) -> None:
    urls = [
        fake_web.base + "/page.html",
        fake_web.base + "/missing",
        fake_web.base + "/slowpage.html",
        fake_web.base + "/binary.pdf",
    ]
    r = post(server, "/tools/browse_webpage", {"url_list": urls, "question": "Kepler"})
    assert r.status_code == 200
    ok, missing, slow, pdf = r.json()["pages"]
    assert ok["ok"]
    assert missing == {"url": urls[1], "ok": False, "text": "", "error": "could not fetch the page: HTTP 404"}
    assert slow["error"] == "could not fetch the page: no answer within 0.7s"
    assert "unsupported content type 'application/pdf'" in pdf["error"]
    assert f"Page: {urls[1]}\nError: could not fetch the page: HTTP 404" in r.json()["result"]


def test_browse_all_pages_failing_is_502(server: Server, fake_web: FakeWeb) -> None:
    r = post(server, "/tools/browse_webpage", {"url_list": [fake_web.base + "/missing"], "question": "q"})
    assert r.status_code == 502 and "no page could be read" in r.json()["detail"]


def test_browse_follows_safe_redirect(server: Server, fake_web: FakeWeb) -> None:
    r = post(
        server,
        "/tools/browse_webpage",
        {"url_list": [fake_web.base + "/redirect-page"], "question": "Kepler"},
    )
    assert r.status_code == 200 and "1571" in r.json()["pages"][0]["text"]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.1.2.3:{port}/page.html", "loopback address 127.1.2.3"),
        ("http://127.0.0.2/", "loopback address 127.0.0.2"),
        ("http://[::1]/", "loopback address ::1"),
        ("http://10.1.2.3/admin", "private address 10.1.2.3"),
        ("http://192.168.0.1/", "private address 192.168.0.1"),
        ("http://169.254.169.254/latest/meta-data/", "link-local (cloud metadata) address 169.254.169.254"),
        ("http://metadata.google.internal/computeMetadata/v1/", "cloud-metadata host"),
        ("http://0.0.0.0:8000/", "address 0.0.0.0"),
        ("http://[::ffff:127.0.0.1]/", "loopback address"),
    ],
)
def test_browse_refuses_private_destinations(server: Server, fake_web: FakeWeb, url: str, why: str) -> None:
    url = url.format(port=fake_web.port)
    r = post(
        server, "/tools/browse_webpage", {"url_list": [fake_web.base + "/page.html", url], "question": "q"}
    )
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "forbidden"
    assert r.json()["detail"].startswith("field 'url_list[1]': ")
    assert why in r.json()["detail"]


def test_browse_refuses_redirect_to_metadata(server: Server, fake_web: FakeWeb) -> None:
    r = post(
        server, "/tools/browse_webpage", {"url_list": [fake_web.base + "/redirect-metadata"], "question": "q"}
    )
    assert r.status_code == 403
    assert "169.254.169.254" in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"url_list": ["ftp://example.com/x"], "question": "q"},
            422,
            "field 'url_list[0]': 'ftp://example.com/x' is not an http(s) URL",
        ),
        ({"url_list": ["http://"], "question": "q"}, 422, "has no host"),
        (
            {"url_list": ["http://["], "question": "q"},
            422,
            "field 'url_list[0]': 'http://[' is not a valid URL",
        ),
        ({"url_list": ["https://[zz]/x"], "question": "q"}, 422, "'https://[zz]/x' is not a valid URL"),
        ({"url_list": ["http://" + "a" * 64 + ".example/"]}, 422, "field 'url_list[0]': 'http://aaaa"),
        ({"url_list": ["http://a..example/"]}, 422, "'http://a..example/' has an invalid host name"),
        ({"url_list": [], "question": "q"}, 422, "field 'url_list' is empty"),
        (
            {"url_list": ["http://a.example/"] * 6, "question": "q"},
            422,
            "field 'url_list' has 6 URLs; at most 5",
        ),
        (
            {"url_list": "http://a.example/", "question": "q"},
            422,
            "field 'url_list': Input should be a valid list",
        ),
        ({"question": "q"}, 422, "field 'url_list' is required"),
        ({"url_list": ["http://a.example/"], "question": 7}, 422, "field 'question'"),
    ],
)
def test_browse_bad_input(server: Server, body: dict, status: int, message: str) -> None:
    r = post(server, "/tools/browse_webpage", body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_llm_reader_reads_chunk_by_chunk(server_bing: Server, fake_web: FakeWeb) -> None:
    before = fake_web.counts["llm"]
    r = post(
        server_bing,
        "/tools/browse_webpage",
        {"url_list": [fake_web.base + "/page.html"], "question": "Who did Kepler assist?"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["pages"][0]["text"] == "Kepler assisted Tycho Brahe in Prague."
    calls = fake_web.counts["llm"] - before
    assert calls >= 2  # the page is longer than one 200-character chunk
    prompt = fake_web.llm_prompts[-1]
    assert "Question: Who did Kepler assist?" in prompt


def test_llm_reader_failure_is_502(server_bing: Server, fake_web: FakeWeb) -> None:
    r = post(
        server_bing, "/tools/browse_webpage", {"url_list": [fake_web.base + "/llmfail.html"], "question": "q"}
    )
    assert r.status_code == 502
    assert "reader LLM failed after 2 attempt(s): HTTP 500" in r.json()["detail"]
    assert LLM_KEY not in r.text and LLM_KEY not in server_bing.log()
