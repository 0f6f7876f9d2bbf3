"""Test helpers for the handler suite: real handler server processes on loopback, and local fakes of
Serper, Bing, an OpenAI-compatible chat endpoint and some web pages (one threaded HTTP server in the test process)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "handler" / "data" / "sample_corpus.jsonl"
SERPER_KEY = "test-serper-key-123"
BING_KEY = "test-bing-key-456"
LLM_KEY = "test-llm-key-789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- fake upstreams
class FakeWeb:
    """State of the fake upstream server: request counts and the headers it saw."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.seen_keys: list[str] = []
        self.llm_prompts: list[str] = []
        self.lock = threading.Lock()
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


PAGE_HTML = """<html><head><title>Kepler</title><script>var tracking = 1;</script></head><body>
<nav>Home | About | Contact</nav>
<article><h1>Johannes Kepler</h1>
<p>Johannes Kepler was a German astronomer and mathematician born in 1571 in Weil der Stadt.</p>
<p>He is best known for his laws of planetary motion, published between 1609 and 1619.</p>
<p>Kepler worked as an assistant to Tycho Brahe in Prague and later became imperial mathematician.</p>
</article><footer>Copyright footer text</footer></body></html>"""


def _make_handler(state: FakeWeb) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:  # keep test output clean
            pass

        def _send(
            self, code: int, body: bytes | str, ctype: str = "application/json", extra: dict | None = None
        ) -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"{}")

        def _count(self, name: str) -> None:
            with state.lock:
                state.counts[name] += 1

        def do_POST(self) -> None:  # noqa: N802
            path = urlsplit(self.path).path
            if path == "/serper/search":
                body = self._body()
                q = body.get("q", "")
                self._count(f"serper:{q}")
                state.seen_keys.append(self.headers.get("X-API-KEY", ""))
                if self.headers.get("X-API-KEY") != SERPER_KEY:  # echoes the key, as some APIs do
                    return self._send(
                        403, json.dumps({"message": f"Unauthorized key {self.headers['X-API-KEY']}"})
                    )
                if "ECHOKEY" in q:
                    return self._send(
                        400,
                        json.dumps(
                            {
                                "message": f"bad query for api_key={SERPER_KEY}",
                                "debug": "Authorization: Bearer sk-live0123456789abcdefXYZ",
                            }
                        ),
                    )
                if "SLOW" in q:
                    time.sleep(2.0)
                if "FAIL500" in q:
                    return self._send(500, json.dumps({"message": "internal"}))
                organic = [
                    {
                        "title": f"{q} result {i}",
                        "link": f"https://example.com/{i}",
                        "snippet": f"About {q}, part {i}.",
                    }
                    for i in range(1, body.get("num", 5) + 1)
                ]
                return self._send(200, json.dumps({"searchParameters": {"q": q}, "organic": organic}))
            if path == "/llm/v1/chat/completions":
                body = self._body()
                self._count("llm")
                if self.headers.get("Authorization") != f"Bearer {LLM_KEY}":
                    return self._send(401, json.dumps({"error": {"message": "bad key"}}))
                prompt = body["messages"][0]["content"]
                state.llm_prompts.append(prompt)
                if "Tycho" in prompt:
                    answer = "Kepler assisted Tycho Brahe in Prague."
                elif "LLMFAIL" in prompt:
                    return self._send(500, "{}")
                else:
                    answer = "NONE"
                return self._send(
                    200, json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]})
                )
            return self._send(404, "{}")

        def do_GET(self) -> None:  # noqa: N802
            parts = urlsplit(self.path)
            path = parts.path
            if path == "/bing/search":
                q = parse_qs(parts.query).get("q", [""])[0]
                self._count(f"bing:{q}")
                state.seen_keys.append(self.headers.get("Ocp-Apim-Subscription-Key", ""))
                if self.headers.get("Ocp-Apim-Subscription-Key") != BING_KEY:
                    return self._send(401, json.dumps({"error": "denied"}))
                count = int(parse_qs(parts.query).get("count", ["5"])[0])
                value = [
                    {"name": f"Bing {q} {i}", "url": f"https://bing.example/{i}", "snippet": f"Bing says {i}"}
                    for i in range(1, count + 1)
                ]
                return self._send(200, json.dumps({"webPages": {"value": value}}))
            if path == "/page.html":
                self._count("page")
                return self._send(200, PAGE_HTML, "text/html; charset=utf-8")
            if path == "/llmfail.html":
                return self._send(200, PAGE_HTML.replace("Kepler", "LLMFAIL"), "text/html")
            if path == "/plain.txt":
                return self._send(200, "Plain text page about Tycho Brahe.", "text/plain")
            if path == "/big.html":
                para = "<p>" + "filler words here " * 50 + "</p>\n"
                return self._send(200, "<html><body>" + para * 5000 + "</body></html>", "text/html")
            if path == "/slowpage.html":
                time.sleep(2.0)
                return self._send(200, PAGE_HTML, "text/html")
            if path == "/binary.pdf":
                return self._send(200, b"%PDF-1.4 binary", "application/pdf")
            if path == "/redirect-metadata":
                return self._send(
                    302, "", "text/plain", {"Location": "http://169.254.169.254/latest/meta-data/"}
                )
            if path == "/redirect-page":
                return self._send(302, "", "text/plain", {"Location": "/page.html"})
            if path == "/missing":
                return self._send(404, "not here", "text/plain")
            return self._send(404, "{}")

    return H


@pytest.fixture(scope="session")
def fake_web() -> Iterator[FakeWeb]:
    state = FakeWeb()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    srv.daemon_threads = True
    state.port = srv.server_address[1]
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield state
    srv.shutdown()
    srv.server_close()


# ----------------------------------------------------------------------------- handler processes
class Server:
    """A ``python -m handler serve`` process on a free loopback port."""

    def __init__(
        self,
        workdir: Path,
        config: dict,
        env: dict[str, str] | None = None,
        extra: list[str] | None = None,
        launcher: Path | None = None,
    ):
        """``launcher``: a script run instead of ``-m handler`` (it calls ``handler.__main__.main``
        with its arguments after patching something, e.g. a deliberately slow backend)."""
        self.workdir = workdir
        self.config = config
        self.env = env or {}
        self.extra = extra or []
        self.launcher = launcher
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, deadline_s: float = 60.0) -> Server:
        cfg_path = self.workdir / f"handler-{self.port}.yaml"
        cfg_path.write_text(yaml.safe_dump(self.config))
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        env.update(self.env)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *([str(self.launcher)] if self.launcher else ["-m", "handler"]),
                "serve",
                "--config",
                str(cfg_path),
                "--port",
                str(self.port),
                *self.extra,
            ],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        end = time.time() + deadline_s
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"handler exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"handler did not become healthy within {deadline_s}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def base_config(tmp: Path, fake: FakeWeb, **over: object) -> dict:
    """A config that uses the sample corpus copy in ``tmp`` and points web backends at the fakes."""
    corpus = tmp / "corpus.jsonl"
    if not corpus.exists():
        shutil.copy(SAMPLE, corpus)
    cfg: dict = {
        "backend": "bm25",
        "corpus": str(corpus),
        "index_dir": str(tmp / "index"),
        "log_level": "warning",
        "retrieve_timeout_s": 10,
        "limits": {"max_queries": 64, "max_query_chars": 500, "max_topk": 20, "max_body_bytes": 200_000},
        "web": {
            "engine": "serper",
            "serper_url": fake.base + "/serper/search",
            "bing_url": fake.base + "/bing/search",
            "timeout_s": 0.5,
            "max_retries": 1,
            "backoff_s": 0.05,
            "results_per_query": 3,
        },
        "reader": {
            "timeout_s": 0.7,
            "max_retries": 0,
            "max_bytes": 100_000,
            "max_chars_per_page": 600,
            "allow_hosts": ["127.0.0.1"],
        },
        "cache": {"path": str(tmp / "cache.sqlite")},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, fake_web: FakeWeb) -> Iterator[Server]:
    """Serper engine, no reader LLM, 127.0.0.1 allow-listed for the reader."""
    tmp = tmp_path_factory.mktemp("srv")
    s = Server(tmp, base_config(tmp, fake_web), env={"SERPER_API_KEY": SERPER_KEY}).start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def server_bing(tmp_path_factory: pytest.TempPathFactory, fake_web: FakeWeb) -> Iterator[Server]:
    """Bing engine and an OpenAI-compatible reader LLM, both fakes; no cache."""
    tmp = tmp_path_factory.mktemp("srvbing")
    cfg = base_config(
        tmp,
        fake_web,
        web={"engine": "bing"},
        cache={"enabled": False},
        reader={
            "llm": {
                "base_url": fake_web.base + "/llm/v1",
                "model": "qwen-plus",
                "chunk_chars": 200,
                "max_chunks": 10,
                "timeout_s": 2,
                "max_retries": 1,
                "backoff_s": 0.05,
            }
        },
    )
    s = Server(tmp, cfg, env={"BING_API_KEY": BING_KEY, "READER_API_KEY": LLM_KEY}).start()
    yield s
    s.stop()
