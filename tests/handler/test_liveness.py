"""Liveness against real server processes: a big page is parsed off the event loop, stalled and idle
connections are cut off, timed-out backend work frees its thread, and the backend queue is bounded."""

from __future__ import annotations

import json
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from handler_testlib import FakeWeb, Server, base_config

RETRIEVE = {"queries": ["capital of Australia"], "topk": 1}

# ~2 MB of markup that makes the HTML -> text extraction work: many small elements and tables
_BLOCK = (
    "<div class='c'><h3>Section {i}</h3><p>Alpha beta gamma delta {i} epsilon zeta eta theta iota kappa "
    "lambda mu nu xi omicron pi rho sigma tau.</p><table><tr><td>{i}</td><td>cell</td><td>row</td></tr>"
    "<tr><td>x</td><td>y</td><td>z</td></tr></table><ul><li>one</li><li>two</li></ul></div>\n"
)
BIG_HTML = ("<html><head><title>Big</title></head><body>" + "".join(_BLOCK.format(i=i) for i in range(7200)))[
    :2_000_000
] + "</body></html>"


class _Pages:
    """A local upstream serving the big page; ``served`` is set once its bytes are written."""

    def __init__(self, html: str = BIG_HTML) -> None:
        self.served = threading.Event()
        page = html.encode()
        state = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
                self.wfile.flush()
                state.served.set()

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/big.html"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


def test_big_page_parse_does_not_stall_retrieve(tmp_path: Path, fake_web: FakeWeb) -> None:
    """/retrieve is answered while a 2 MB page is being parsed. The bounds are relative to the
    parse's own duration (measured here), so a slow or loaded machine does not make this flaky: with
    the parse on the event loop the first /retrieve waited for the whole parse and ended with it."""
    assert len(BIG_HTML) > 1_990_000
    pages = _Pages()
    cfg = base_config(
        tmp_path, fake_web, cache={"enabled": False}, reader={"max_bytes": 2_500_000, "timeout_s": 60}
    )
    cfg["limits"]["header_timeout_s"] = 1.0  # the browse runs for seconds: the head deadline must spare it
    s = Server(tmp_path, cfg).start()
    try:
        assert httpx.post(s.url + "/retrieve", json=RETRIEVE, timeout=10).status_code == 200  # warm
        browse: dict[str, float | int] = {}

        def read_page() -> None:
            r = httpx.post(
                s.url + "/tools/browse_webpage",
                json={"url_list": [pages.url], "question": "alpha"},
                timeout=180,
            )
            browse["status"], browse["end"] = r.status_code, time.monotonic()

        t = threading.Thread(target=read_page)
        t.start()
        assert pages.served.wait(30), "the handler never fetched the page"
        served = time.monotonic()
        time.sleep(0.3)  # the page is downloaded: the handler is parsing it now
        done: list[tuple[float, float]] = []  # (latency, end) of each /retrieve sent meanwhile
        while t.is_alive() and len(done) < 200:
            t0 = time.monotonic()
            r = httpx.post(s.url + "/retrieve", json=RETRIEVE, timeout=120)
            done.append((time.monotonic() - t0, time.monotonic()))
            assert r.status_code == 200, r.text
            time.sleep(0.05)
        t.join(180)
        assert browse["status"] == 200
        parse_s = browse["end"] - served
        assert parse_s > 1.5, f"the page was read in {parse_s:.2f}s: too fast for this test to mean anything"
        during = [(lat, end) for lat, end in done if end < browse["end"]]
        assert len(during) >= 3, (parse_s, done)
        # each /retrieve is answered in a small part of the parse time, the first one long before it ends
        bound = max(0.5, parse_s / 3)
        assert max(lat for lat, _ in during) < bound, (parse_s, done)
        assert done[0][1] < browse["end"] - bound, (parse_s, done)
    finally:
        s.stop()
        pages.close()


def test_parse_queue_is_bounded(tmp_path: Path, fake_web: FakeWeb) -> None:
    """With one parser slot, of two big pages read at once one is parsed and the other is an error
    page naming reader.max_parse_jobs; once the parse ends the slot is free again."""
    pages = _Pages(BIG_HTML[:400_000] + "</body></html>")
    cfg = base_config(
        tmp_path,
        fake_web,
        cache={"enabled": False},
        reader={"max_bytes": 2_500_000, "timeout_s": 60, "max_parse_jobs": 1},
    )
    s = Server(tmp_path, cfg).start()
    try:
        two = {"url_list": [pages.url + "?a", pages.url + "?b"], "question": "alpha"}
        r = httpx.post(s.url + "/tools/browse_webpage", json=two, timeout=180)
        assert r.status_code == 200, r.text
        got = sorted(r.json()["pages"], key=lambda p: p["ok"])
        assert [p["ok"] for p in got] == [False, True], got
        assert "reader.max_parse_jobs" in got[0]["error"] and "Alpha beta gamma" in got[1]["text"], got
        one = {"url_list": [pages.url + "?c"], "question": "alpha"}
        r = httpx.post(s.url + "/tools/browse_webpage", json=one, timeout=180)
        assert r.status_code == 200 and r.json()["pages"][0]["ok"], r.text
    finally:
        s.stop()
        pages.close()


# ----------------------------------------------------------------------------- stalled connections
@pytest.fixture(scope="module")
def quick_server(tmp_path_factory: pytest.TempPathFactory, fake_web: FakeWeb) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("quick")
    cfg = base_config(tmp, fake_web)
    cfg["limits"].update(header_timeout_s=1.0, body_timeout_s=1.0, keep_alive_s=1.0)
    s = Server(tmp, cfg).start()
    yield s
    s.stop()


def _closed_after(sock: socket.socket) -> tuple[float, bytes]:
    """Seconds until the server closes the connection, and everything it sent before."""
    t0 = time.monotonic()
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return time.monotonic() - t0, data
        data += chunk


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /retrieve HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl"],
    ids=["silent", "half-head"],
)
def test_stalled_request_head_is_cut_off(quick_server: Server, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", quick_server.port), timeout=10) as sock:
        sock.sendall(sent)
        waited, data = _closed_after(sock)
    assert 0.5 < waited < 8.0 and data == b"", (waited, data)
    assert httpx.post(quick_server.url + "/retrieve", json=RETRIEVE, timeout=10).status_code == 200


def test_stalled_body_is_408_and_closed(quick_server: Server) -> None:
    head = (
        b"POST /retrieve HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", quick_server.port), timeout=10) as sock:
        sock.sendall(head + b'{"queries"')  # 10 of the 100 bytes, then nothing
        waited, data = _closed_after(sock)
    assert 0.5 < waited < 8.0, waited
    status_line, _, rest = data.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 408"), data
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"] == "body_timeout" and "limits.body_timeout_s (1s)" in body["detail"]
    metrics = httpx.get(quick_server.url + "/metrics", timeout=10).text
    assert 'handler_errors_total{endpoint="/retrieve",kind="body_timeout"}' in metrics


def test_idle_keep_alive_connection_is_closed(quick_server: Server) -> None:
    with socket.create_connection(("127.0.0.1", quick_server.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        waited, data = _closed_after(sock)
    assert data.startswith(b"HTTP/1.1 200") and 0.5 < waited < 8.0, (waited, data[:100])


def test_slow_but_steady_body_is_answered(quick_server: Server) -> None:
    """The body deadline counts from the request head; a body that arrives in time is fine."""
    body = json.dumps(RETRIEVE).encode()
    head = (
        b"POST /retrieve HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", quick_server.port), timeout=10) as sock:
        sock.sendall(head + body[:5])
        time.sleep(0.4)
        sock.sendall(body[5:])
        _, data = _closed_after(sock)
    assert data.startswith(b"HTTP/1.1 200"), data[:200]


# ----------------------------------------------------------------------------- slow backend
LAUNCHER = textwrap.dedent(
    '''
    """Runs the handler with a BM25 backend that is slow for chosen queries (queries arrive lowercased)."""
    import sys
    import time

    import handler.backends.bm25 as bm25
    from handler.errors import BackendTimeout

    fast = bm25.Bm25Retriever.search_json


    def search_json(self, queries, topk, stop=None):
        if any("slowquery" in q for q in queries):  # 30 s, but stops when told to
            end = time.monotonic() + 30
            while time.monotonic() < end:
                if stop is not None and stop.is_set():
                    raise BackendTimeout("stopped")
                time.sleep(0.01)
        if any("stuckquery" in q for q in queries):  # ignores stop: holds its thread 3 s
            time.sleep(3)
        return fast(self, queries, topk, stop=stop)


    bm25.Bm25Retriever.search_json = search_json
    from handler.__main__ import main

    sys.exit(main(sys.argv[1:]))
    '''
)


def _slow_server(tmp: Path, fake_web: FakeWeb, **limits: object) -> Server:
    launcher = tmp / "slow_handler.py"
    launcher.write_text(LAUNCHER)
    cfg = base_config(tmp, fake_web, cache={"enabled": False}, retrieve_timeout_s=0.5)
    cfg["limits"].update(limits)
    return Server(tmp, cfg, launcher=launcher).start()


def test_timed_out_backend_work_frees_its_thread(tmp_path: Path, fake_web: FakeWeb) -> None:
    """Eight slow batches (two per worker thread) time out; the next request is answered at once.
    Without the stop signal the four threads would stay busy for 30 s and it would be a 504."""
    s = _slow_server(tmp_path, fake_web)
    try:
        with ThreadPoolExecutor(8) as pool:
            slow = list(
                pool.map(
                    lambda i: httpx.post(
                        s.url + "/retrieve", json={"queries": [f"slowquery {i}"]}, timeout=20
                    ),
                    range(8),
                )
            )
        assert [r.status_code for r in slow] == [504] * 8, [r.text for r in slow]
        time.sleep(0.2)
        t0 = time.monotonic()
        r = httpx.post(s.url + "/retrieve", json=RETRIEVE, timeout=20)
        # busy threads would make it wait past retrieve_timeout_s (0.5 s) into a 504
        assert r.status_code == 200 and time.monotonic() - t0 < 5.0, r.text
    finally:
        s.stop()


def test_backend_queue_is_bounded_503_quickly(tmp_path: Path, fake_web: FakeWeb) -> None:
    s = _slow_server(tmp_path, fake_web, max_backend_jobs=2)
    try:
        with ThreadPoolExecutor(2) as pool:
            stuck = [
                pool.submit(
                    httpx.post, s.url + "/retrieve", json={"queries": [f"stuckquery {i}"]}, timeout=20
                )
                for i in range(2)
            ]
            time.sleep(1.0)  # both are running (and hold their threads for 3 s, past their 0.5 s timeout)
            t0 = time.monotonic()
            r = httpx.post(s.url + "/retrieve", json=RETRIEVE, timeout=20)
            # a queued batch would wait past retrieve_timeout_s (0.5 s) into a 504
            assert time.monotonic() - t0 < 2.0, "a full backend queue must answer at once"
            assert r.status_code == 503 and r.json()["error"] == "busy", r.text
            assert "limits.max_backend_jobs" in r.json()["detail"] and r.headers["retry-after"] == "1"
            assert [f.result().status_code for f in stuck] == [504, 504]
        deadline = time.monotonic() + 30  # the stuck calls end (3 s each); their slots are free again
        while (r := httpx.post(s.url + "/retrieve", json=RETRIEVE, timeout=20)).status_code == 503:
            assert time.monotonic() < deadline, "the backend slots were never freed"
            time.sleep(0.5)
        assert r.status_code == 200, r.text
    finally:
        s.stop()
