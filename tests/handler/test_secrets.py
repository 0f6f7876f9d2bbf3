"""API keys never leave the handler: upstream error bodies are not relayed, and every configured key
(or anything that looks like one) is redacted from answers and logs."""

from __future__ import annotations

import httpx
from handler_testlib import SERPER_KEY, FakeWeb, Server

from handler.redact import MASK, redact


def test_upstream_error_body_is_not_relayed(server: Server, fake_web: FakeWeb) -> None:
    r = httpx.post(server.url + "/tools/web_search", json={"query": ["ECHOKEY probe"]}, timeout=10)
    assert r.status_code == 502
    assert r.json()["detail"] == "serper web search refused the request (HTTP 400 Bad Request)"
    assert SERPER_KEY not in r.text and "sk-live" not in r.text and "bad query" not in r.text
    log = server.log()
    assert "serper web search: HTTP 400 Bad Request (attempt 1/2)" in log  # the body is logged ...
    assert SERPER_KEY not in log and "sk-live0123456789" not in log  # ... redacted
    assert f"api_key={MASK}" in log and f"Bearer {MASK}" in log
    metrics = httpx.get(server.url + "/metrics", timeout=5).text
    assert SERPER_KEY not in metrics


def test_wrong_key_echoed_by_upstream_stays_hidden(tmp_path, fake_web: FakeWeb) -> None:
    from handler_testlib import base_config

    wrong = "wrong-key-0123456789"
    s = Server(tmp_path, base_config(tmp_path, fake_web), env={"SERPER_API_KEY": wrong}).start()
    try:
        r = httpx.post(s.url + "/tools/web_search", json={"query": ["echo my key"]}, timeout=10)
        assert r.status_code == 502 and "HTTP 403" in r.json()["detail"]
        assert wrong not in r.text
    finally:
        s.stop()
    assert "Unauthorized key" in s.log() and wrong not in s.log()


def test_redact_configured_and_lookalike_keys(monkeypatch) -> None:
    monkeypatch.setenv("SERPER_API_KEY", "abc-secret-value")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok_42_value")
    text = redact("got abc-secret-value and tok_42_value; token: hunter22 sk-proj-ABCDEFGHIJKLMNOP")
    assert "abc-secret-value" not in text and "tok_42_value" not in text
    assert "hunter22" not in text and "sk-proj" not in text
    assert text.startswith("got [redacted] and [redacted]")
    assert redact("HTTP 404 Not Found for https://example.com/page") == (
        "HTTP 404 Not Found for https://example.com/page"
    )
