"""Neighbours and local browsers, against a real server process: the Host header must name the handler
(DNS-rebinding guard), POST bodies must say ``application/json``, and ``/health`` shows no file paths
or process id unless a loopback client asks with ``?verbose=1``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import httpx
import pytest
import requests
from handler_testlib import FakeWeb, Server, base_config

CANBERRA_QUERY = {"queries": ["capital of Australia"], "topk": 1, "return_scores": True}


@pytest.fixture(scope="module")
def allow_server(tmp_path_factory: pytest.TempPathFactory, fake_web: FakeWeb) -> Iterator[Server]:
    """One name allowed in the config file, one with the command-line flag."""
    tmp = tmp_path_factory.mktemp("allow")
    cfg = base_config(tmp, fake_web, allowed_hosts=["trainer.internal"])
    s = Server(tmp, cfg, extra=["--allowed-host", "Cli.Example"]).start()
    yield s
    s.stop()


# ----------------------------------------------------------------------------- Host header
@pytest.mark.parametrize("path", ["/retrieve", "/tools/web_search", "/health", "/metrics", "/openapi.json"])
def test_foreign_host_header_is_421_naming_header_value_and_fix(server: Server, path: str) -> None:
    headers = {"host": f"rebind.attacker.example:{server.port}"}
    if path.startswith(("/retrieve", "/tools")):
        r = httpx.post(
            server.url + path, json={"queries": ["x"], "query": ["x"]}, headers=headers, timeout=10
        )
    else:
        r = httpx.get(server.url + path, headers=headers, timeout=10)
    assert r.status_code == 421, r.text
    body = r.json()
    assert body["error"] == "bad_host" and r.headers["x-error-kind"] == "bad_host"
    assert f"header Host: 'rebind.attacker.example:{server.port}'" in body["detail"]
    assert "allowed_hosts" in body["detail"] and "--allowed-host rebind.attacker.example" in body["detail"]


def test_dns_rebinding_page_spends_no_search_credit(server: Server, fake_web: FakeWeb) -> None:
    """What a rebinding page's fetch looks like: its own name in Host, a JSON body (after a preflight
    that the handler never approves, but even a direct request must fail)."""
    query = "rebinding credit probe"
    r = httpx.post(
        server.url + "/tools/web_search",
        json={"query": [query]},
        headers={"host": "evil.example", "origin": "http://evil.example"},
        timeout=10,
    )
    assert r.status_code == 421
    assert fake_web.counts[f"serper:{query}"] == 0
    pre = httpx.options(
        server.url + "/tools/web_search",
        headers={
            "origin": "http://127.0.0.1:1234",
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
        timeout=10,
    )
    assert "access-control-allow-origin" not in pre.headers  # no CORS: browsers do not send the POST


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:{port}", "LOCALHOST.:{port}", "127.0.0.1:{port}", "[::1]:{port}"]
)
def test_loopback_host_names_are_answered(server: Server, host: str) -> None:
    r = httpx.post(
        server.url + "/retrieve",
        json=CANBERRA_QUERY,
        headers={"host": host.format(port=server.port)},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["result"]) == 1


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("trainer.internal:{port}", 200),
        ("trainer.internal.", 200),
        ("cli.example:{port}", 200),
        ("localhost:{port}", 200),
        ("other.internal:{port}", 421),
    ],
)
def test_allow_list_from_config_and_flag(allow_server: Server, host: str, status: int) -> None:
    h = host.format(port=allow_server.port)
    r = httpx.get(allow_server.url + "/health", headers={"host": h}, timeout=10)
    assert r.status_code == status, r.text
    if status == 421:
        detail = r.json()["detail"]
        assert "cli.example" in detail and "trainer.internal" in detail  # the accepted names are listed


# ----------------------------------------------------------------------------- content type
@pytest.mark.parametrize(
    ("ctype", "status"),
    [
        ("application/json", 200),
        ("application/json; charset=utf-8", 200),
        ("Application/JSON;charset=UTF-8", 200),
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        ("multipart/form-data; boundary=x", 415),
        (None, 415),
    ],
)
def test_post_bodies_must_be_application_json(server: Server, ctype: str | None, status: int) -> None:
    headers = {} if ctype is None else {"content-type": ctype}
    for path, body in [("/retrieve", CANBERRA_QUERY), ("/tools/web_search", {"query": ["ctype probe"]})]:
        r = httpx.post(server.url + path, content=json.dumps(body).encode(), headers=headers, timeout=10)
        assert r.status_code == status, (path, r.text)
        if status == 415:
            detail = r.json()["detail"]
            assert r.json()["error"] == "unsupported_media_type"
            assert (
                "no Content-Type header" if ctype is None else f"header Content-Type: {ctype!r}"
            ) in detail
            assert "application/json" in detail


def test_search_r1_client_style_still_works(server: Server) -> None:
    """Search-R1's batch_search: requests.post(url, json=payload).json()["result"]."""
    payload = {"queries": ["capital of Australia", ""], "topk": 3, "return_scores": True}
    result = requests.post(server.url + "/retrieve", json=payload, timeout=10).json()["result"]
    assert len(result) == 2 and result[0] and result[1] == []
    assert requests.post(server.url + "/retrieve", json={"queries": [], "topk": 3}, timeout=10).json() == {
        "result": []
    }


# ----------------------------------------------------------------------------- /health
def test_health_shows_no_paths_or_pid_by_default(server: Server) -> None:
    r = httpx.get(server.url + "/health", timeout=10)
    h = r.json()
    assert "pid" not in h and "index_dir" not in h and "path" not in h["cache"]
    assert str(server.workdir) not in r.text and os.sep + "tmp" not in r.text
    assert h["corpus_size"] == 24 and "index_built_at" in h and h["cache"]["enabled"] is True


def test_health_verbose_from_loopback_shows_them(server: Server) -> None:
    h = httpx.get(server.url + "/health?verbose=1", timeout=10).json()
    assert isinstance(h["pid"], int) and h["pid"] == server.proc.pid
    assert h["index_dir"].startswith(str(server.workdir)) and h["cache"]["path"].endswith("cache.sqlite")
    r = httpx.get(server.url + "/health?verbose=maybe", timeout=10)
    assert r.status_code == 422 and "verbose" in r.json()["detail"]


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_health_verbose_is_refused_to_other_clients(tmp_path) -> None:
    """The test client's peer ("testclient") is not a loopback address: 403, and no paths leak."""
    from fastapi.testclient import TestClient

    from handler.app import create_app
    from handler.config import load_config

    cfg = load_config(
        None, {"cache.path": str(tmp_path / "c.sqlite"), "web_enabled": False, "backend": "none"}
    )
    with TestClient(create_app(cfg, None), base_url="http://127.0.0.1") as c:
        r = c.get("/health?verbose=1")
        assert r.status_code == 403 and "only answered to loopback clients" in r.json()["detail"]
        assert str(tmp_path) not in c.get("/health").text
