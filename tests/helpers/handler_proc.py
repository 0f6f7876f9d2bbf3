"""Start a real search handler (``python -m handler serve``) on loopback for end-to-end tests.

The handler runs in its own process with a small BM25 corpus written to a temporary directory, no
answer cache, and no web-search or reader API keys in its environment (so the web tools answer with
their "not configured" error, which exercises the tool-failure path without any network).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: A tiny corpus: enough for BM25 to find Paris for "capital of France".
CORPUS = [
    {"id": "0", "contents": '"Paris"\nParis is the capital and largest city of France, on the Seine.'},
    {"id": "1", "contents": '"Canberra"\nCanberra is the capital city of Australia.'},
    {"id": "2", "contents": '"Mount Everest"\nMount Everest is the highest mountain above sea level.'},
    {"id": "3", "contents": '"Marie Curie"\nMarie Curie won Nobel Prizes in physics and chemistry.'},
    {"id": "4", "contents": '"Seine"\nThe Seine is a river that flows through Paris in northern France.'},
]

_SECRET_ENV = ("SERPER_API_KEY", "BING_API_KEY", "READER_API_KEY", "OPENAI_API_KEY")


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def handler_available() -> bool:
    """True when the handler package has its command line (``handler/__main__.py``)."""
    return (REPO / "handler" / "__main__.py").is_file()


@contextmanager
def running_handler(
    workdir: Path, corpus: list[dict] | None = None, deadline_s: float = 90.0
) -> Iterator[str]:
    """Run the handler until the block exits; yields its base URL (``http://127.0.0.1:<port>``)."""
    import httpx

    workdir.mkdir(parents=True, exist_ok=True)
    corpus_path = workdir / "corpus.jsonl"
    corpus_path.write_text("".join(json.dumps(d) + "\n" for d in (corpus or CORPUS)))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable, "-m", "handler", "serve",
        "--corpus", str(corpus_path), "--index-dir", str(workdir / "index"), "--backend", "bm25",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--no-cache", "--log-level", "warning",
    ]  # fmt: skip
    log_path = workdir / "handler.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        t_end = time.monotonic() + deadline_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"handler exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=1.0, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > t_end:
                raise RuntimeError(
                    f"handler not healthy after {deadline_s}s:\n{log_path.read_text()[-3000:]}"
                )
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
