"""Start a real search handler (``python -m handler serve``) on loopback for end-to-end tests.

The handler runs in its own process with a small BM25 corpus written to a temporary directory, no
answer cache, and no web-search or reader API keys in its environment (so the web tools answer with
their "not configured" error, which exercises the tool-failure path without any network).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from handler.launch import free_port  # noqa: F401  (re-exported for the tests)

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


def handler_available() -> bool:
    """True when the handler package has its command line (``handler/__main__.py``)."""
    return (REPO / "handler" / "__main__.py").is_file()


@contextmanager
def running_handler(
    workdir: Path, corpus: list[dict] | None = None, deadline_s: float = 90.0
) -> Iterator[str]:
    """Run the handler until the block exits; yields its base URL (``http://127.0.0.1:<port>``)."""
    from handler.launch import HandlerProcess

    workdir.mkdir(parents=True, exist_ok=True)
    corpus_path = workdir / "corpus.jsonl"
    corpus_path.write_text("".join(json.dumps(d) + "\n" for d in (corpus or CORPUS)))
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    extra = [
        "--index-dir",
        str(workdir / "index"),
        "--backend",
        "bm25",
        "--workers",
        "1",
        "--no-cache",
        "--log-level",
        "warning",
    ]
    server = HandlerProcess(corpus_path, log_path=workdir / "handler.log", extra_args=extra, env=env)
    server.start(timeout_s=deadline_s)
    try:
        yield server.url
    finally:
        server.stop()
