"""Hostile input against a real server process: every client error is a 4xx naming what is wrong, never a
500, and the server keeps serving."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from handler_testlib import Server

ENDPOINTS = ["/retrieve", "/tools/web_search", "/tools/browse_webpage"]


def raw_post(server: Server, path: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        server.url + path, content=body, headers={"content-type": "application/json", **(headers or {})}
    )


def raw_http(server: Server, request: bytes) -> tuple[int, bytes]:
    """Send raw bytes (headers httpx would not send) and return the status and the body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            if rest and b"content-length:" in head.lower():
                n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(rest) >= n:
                    break
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_FIELD = b'{"queries": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"
BIG_INT = b'{"queries": ["x"], "topk": ' + b"9" * 5_000 + b"}"


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (DEEP, 400, "nested too deeply"),
        (DEEP_FIELD, 400, "nested too deeply"),
        (BIG_INT, 400, "malformed JSON body"),
    ],
    ids=["deep", "deep-field", "big-int"],
)
def test_parser_limits_are_400(server: Server, path: str, raw: bytes, status: int, message: str) -> None:
    r = raw_post(server, path, raw)
    assert r.status_code < 500, r.text
    if status == 400:
        assert r.status_code == 400 and r.json()["error"] == "bad_json" and message in r.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/retrieve", '{"queries": ["\\ud800 penicillin", "a\\u0000b", "\\udfff"], "return_scores": true}'),
        ("/retrieve", '{"query": "\\ud83d"}'),
        ("/tools/web_search", '{"query": ["\\ud800 kepler", "nul\\u0000byte"]}'),
        ("/tools/browse_webpage", '{"url_list": ["{fake}/page.html"], "question": "Kepler \\ud800 \\u0000"}'),
    ],
    ids=ascii,
)
def test_lone_surrogates_and_nul_are_not_500(server: Server, fake_web, path: str, body: str) -> None:
    r = raw_post(server, path, body.replace("{fake}", fake_web.base).encode())
    assert r.status_code == 200, r.text
    r.json()  # valid UTF-8 JSON
    if path == "/retrieve" and "queries" in body:
        result = r.json()["result"]
        assert len(result) == 3 and result[0][0]["document"]["id"] == "18"
    if path == "/tools/web_search":
        assert r.json()["queries"][0] == "\ufffd kepler"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://[::1/", "is not a valid URL"),
        ("http://exa\uff0fmple.com/", "is not a valid URL"),
        ("http://\ud800.example/", "invalid host name"),
        ("http://a\u0000b.example/", "control character"),
        ("http://a.example/\u0000", "control character"),
        ("http://" + "\u00df" * 70 + ".example/", "invalid host name"),
        ("http://a.example:99999/", "invalid port"),
        ("http://a.example:-1/", "invalid port"),
        ("http://a.example:http/", "invalid port"),
        ("http://a.example:" + "9" * 40 + "/", "invalid port"),
    ],
    ids=lambda v: ascii(v)[:40],
)
def test_malformed_urls_are_422(server: Server, url: str, message: str) -> None:
    body = json.dumps({"url_list": [url], "question": "q"}).encode()
    r = raw_post(server, "/tools/browse_webpage", body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("field 'url_list[0]'") and message in r.json()["detail"]


@pytest.mark.parametrize("length", ["abc", "1e3", "\u00b2", "-5", "0x10"])
def test_non_numeric_content_length_is_400(server: Server, length: str) -> None:
    req = (
        f"POST /retrieve HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    status, _ = raw_http(server, req)
    assert status == 400


def test_huge_content_length_is_413(server: Server) -> None:
    req = (
        "POST /retrieve HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {'9' * 40}\r\nConnection: close\r\n\r\n"
    ).encode()
    status, body = raw_http(server, req)
    assert status in (400, 413)  # uvicorn's parser may refuse it before the handler sees it


def test_unknown_fields_are_ignored(server: Server) -> None:
    """Documented choice: fields the handler does not know are ignored (clients add their own)."""
    r = httpx.post(
        server.url + "/retrieve", json={"queries": ["Canberra"], "topk": 1, "session": "abc", "x": [1]}
    )
    assert r.status_code == 200 and r.json()["result"][0][0]["id"] == "17"


def test_server_still_serves_after_hostile_input(server: Server) -> None:
    for path in ENDPOINTS:
        raw_post(server, path, DEEP)
        raw_post(server, path, BIG_INT)
    assert server.alive()
    text = httpx.get(server.url + "/metrics").text
    assert 'status="500"' not in text, [ln for ln in text.splitlines() if 'status="500"' in ln]
    r = httpx.post(server.url + "/retrieve", json={"queries": ["Canberra"], "topk": 1})
    assert r.status_code == 200


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_middleware_non_numeric_content_length_is_400(tmp_path) -> None:
    """uvicorn's parser refuses most such headers first; the handler's own check answers 400 too."""
    from fastapi.testclient import TestClient

    from handler.app import create_app
    from handler.config import load_config

    cfg = load_config(None, {"cache.enabled": False, "web_enabled": False, "backend": "none"})
    with TestClient(create_app(cfg, None), raise_server_exceptions=False, base_url="http://127.0.0.1") as c:
        for length in ("abc", "\u00b2", "1.5"):
            r = c.post("/retrieve", content=b"{}", headers={"content-length": length.encode("latin-1")})
            assert r.status_code == 400 and "is not a number" in r.json()["detail"], (length, r.text)
        r = c.post("/retrieve", content=b"{}", headers={"content-length": "9" * 40})
        assert r.status_code == 413
