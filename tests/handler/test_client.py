"""The agent-side HandlerClient: formatting, failures as readable text, round-robin, concurrency."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from handler_testlib import FakeWeb, Server, free_port

from handler.client import HandlerClient, HandlerError, SyncHandlerClient, ToolResult, format_hits


def test_search_text_formats_hits(server: Server) -> None:
    async def go() -> ToolResult:
        async with HandlerClient([server.url], timeout_s=5, topk=2) as c:
            return await c.search_text(["capital city of Australia"])

    out = asyncio.run(go())
    assert out.ok is True and out.error == ""
    lines = out.splitlines()
    assert lines[0].startswith("Doc 1(Title: Canberra) Canberra is the capital city of Australia.")
    assert lines[1].startswith("Doc 2(Title: Tokyo) Tokyo is the capital of Japan")


def test_search_text_groups_several_queries(server: Server) -> None:
    async def go() -> ToolResult:
        async with HandlerClient(server.url, timeout_s=5, topk=1) as c:
            return await c.search_text(["penicillin", "zzzqqq"])

    out = asyncio.run(go())
    assert out == (
        'Results for "penicillin":\nDoc 1(Title: Penicillin) Penicillin was discovered in 1928 by the '
        "Scottish scientist Alexander Fleming, who noticed that a mould killed bacteria in a culture plate. "
        'It became the first widely used antibiotic.\n\nResults for "zzzqqq":\nNo results.'
    )


def test_retrieve_returns_protocol_hits(server: Server) -> None:
    async def go() -> list:
        async with HandlerClient([server.url], timeout_s=5) as c:
            return await c.retrieve(["Eiffel tower in the world"], topk=3)

    (hits,) = asyncio.run(go())
    assert len(hits) == 3 and hits[0]["document"]["id"] == "0" and hits[0]["score"] > hits[1]["score"]


def test_unreachable_handler_becomes_short_text_and_flag() -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async def go() -> tuple[ToolResult, ToolResult, ToolResult, int]:
        c = HandlerClient([dead], timeout_s=1, max_retries=2, backoff_s=0.01)
        try:
            a = await c.search_text(["anything"])
            b = await c.web_search(["anything"])
            d = await c.browse_webpage(["https://example.com"], "q")
            with pytest.raises(HandlerError) as ei:
                await c.retrieve(["x"])
            assert ei.value.status == 0
            return a, b, d, c.errors
        finally:
            await c.aclose()

    a, b, d, errors = asyncio.run(go())
    assert a.ok is False and a.startswith("Search failed: handler unreachable at http://127.0.0.1:")
    assert a.endswith("Try again or answer with what you know.")
    assert b.startswith("Web search failed: handler unreachable") and not b.ok
    assert d.startswith("Browsing failed: handler unreachable") and not d.ok
    assert errors == 4
    assert len(a) < 200


def test_client_reports_4xx_without_retrying(server: Server) -> None:
    async def go() -> ToolResult:
        async with HandlerClient([server.url], timeout_s=5, max_retries=3, backoff_s=5) as c:
            return await c.search_text(["x"], topk=999)

    out = asyncio.run(go())  # with backoff 5 s, a retry would make this slow; 4xx must not be retried
    assert not out.ok
    assert out == (
        "Search failed: the request was rejected (HTTP 422: field 'topk' is 999; it must be between 1 "
        "and 20). "
        "Fix the tool call and try again."
    )


def test_client_fails_over_to_live_server(server: Server) -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async def go() -> list[ToolResult]:
        async with HandlerClient([dead, server.url], timeout_s=2, max_retries=1, backoff_s=0.01, topk=1) as c:
            return [await c.search_text(["Canberra"]) for _ in range(4)]

    outs = asyncio.run(go())
    assert all(o.ok and "Title: Canberra" in o for o in outs)


class _Counting(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits: dict[int, int] = {}

    def log_message(self, *a: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n))
        port = self.server.server_address[1]
        _Counting.hits[port] = _Counting.hits.get(port, 0) + 1
        data = json.dumps({"result": [[] for _ in body["queries"]]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def three_fakes() -> Iterator[list[str]]:
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Counting) for _ in range(3)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    for s in servers:
        s.shutdown()
        s.server_close()


def test_round_robin_balances_servers(three_fakes: list[str]) -> None:
    _Counting.hits.clear()

    async def go() -> None:
        async with HandlerClient(three_fakes, timeout_s=2) as c:
            for _ in range(30):
                assert await c.retrieve(["q"]) == [[]]

    asyncio.run(go())
    assert sorted(_Counting.hits.values()) == [10, 10, 10]


def test_concurrent_clients_get_consistent_answers(server: Server) -> None:
    queries = [
        "Nobel Prize physics",
        "river Africa",
        "Renaissance painter",
        "capital Japan",
        "first antibiotic",
        "red planet moons",
        "desert North Africa",
        "Baroque composer",
    ]

    async def one(c: HandlerClient, i: int) -> list:
        qs = [queries[(i + j) % len(queries)] for j in range(4)]
        hits = await c.retrieve(qs, topk=2)
        return [(q, [h["document"]["id"] for h in hs]) for q, hs in zip(qs, hits, strict=True)]

    async def go() -> list:
        async with HandlerClient([server.url], timeout_s=10, max_connections=16) as c:
            return await asyncio.gather(*(one(c, i) for i in range(48)))

    expected = {
        q: [h["document"]["id"] for h in hs]
        for q, hs in zip(
            queries,
            httpx.post(
                server.url + "/retrieve",
                json={"queries": queries, "topk": 2, "return_scores": True},
                timeout=10,
            ).json()["result"],
            strict=True,
        )
    }
    for batch in asyncio.run(go()):
        for q, ids in batch:
            assert ids == expected[q]
    assert server.alive()


def test_web_tools_through_client(server: Server, fake_web: FakeWeb) -> None:
    async def go() -> tuple[ToolResult, ToolResult]:
        async with HandlerClient([server.url], timeout_s=10) as c:
            return (
                await c.web_search(["client query"]),
                await c.browse_webpage([fake_web.base + "/page.html"], "When was Kepler born?"),
            )

    ws, page = asyncio.run(go())
    assert ws.ok and ws.startswith('Search results for "client query":\n[1] client query result 1')
    assert page.ok and "born in 1571" in page


def test_sync_client(server: Server) -> None:
    c = SyncHandlerClient([server.url], timeout_s=5, topk=1)
    try:
        out = c.search_text("Mona Lisa painter")
        assert out.ok and out.startswith("Doc 1(Title: Leonardo da Vinci)")
        assert c.retrieve(["Mona Lisa"])[0][0]["document"]["id"] == "10"
    finally:
        c.close()


def test_format_hits_without_title_line() -> None:
    assert format_hits(["q"], [[{"document": {"id": "1", "contents": "no title here"}, "score": 1.0}]]) == (
        "Doc 1 no title here"
    )
    assert format_hits(["q"], [[{"id": "1", "contents": '"T"\nbody'}]]) == "Doc 1(Title: T) body"
