"""Start a handler server as a child process and wait until it answers ``/health``.

Used by the training entry points (a local handler when none is given) and by tests. The server binds
127.0.0.1 on a free port unless told otherwise; its output goes to a log file whose tail is shown when
it fails to start.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class HandlerProcess:
    """``python -m handler serve`` in a child process; a context manager that stops it on exit.

    Args:
        corpus: JSON-lines corpus to serve (its BM25 index is built or reused next to it).
        port: port to bind (default: a free one).
        log_path: where the server's output goes (default: ``handler.log`` beside the corpus).
        extra_args: more ``serve`` arguments (e.g. ``["--no-cache"]``).
        env: the child's environment (default: this process's).
    """

    def __init__(
        self,
        corpus: str | Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: str | Path | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ):
        self.corpus = Path(corpus)
        if not self.corpus.exists():
            raise FileNotFoundError(f"handler corpus {self.corpus} does not exist")
        self.host = host
        self.port = port or free_port(host)
        self.log_path = Path(log_path) if log_path else self.corpus.parent / "handler.log"
        self.extra_args = list(extra_args or [])
        self.env = dict(os.environ if env is None else env)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 120.0) -> HandlerProcess:
        """Start the server and block until ``/health`` answers 200 (or raise with the log's tail)."""
        cmd = [
            sys.executable,
            "-m",
            "handler",
            "serve",
            "--corpus",
            str(self.corpus),
            "--host",
            self.host,
            "--port",
            str(self.port),
            *self.extra_args,
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        env = {**self.env, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"handler exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0, trust_env=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(
            f"handler did not answer {self.url}/health within {timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Terminate the server (kill it if it does not exit within 10 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> HandlerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
