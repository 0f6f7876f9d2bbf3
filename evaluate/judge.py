"""LLM-as-judge accuracy through an OpenAI-compatible ``/v1/chat/completions`` endpoint.

Word-overlap F1 undercounts right answers phrased differently ("JFK" vs "John F. Kennedy"); a judge
model asked "does the prediction mean one of the gold answers?" gives the complementary accuracy.

Robustness rules: every request has a timeout; transport errors, 429 and 5xx are retried a bounded
number of times with exponential backoff (``Retry-After`` honoured, capped); other errors stop at once
with the status and a short body excerpt. Verdicts are cached in SQLite keyed by (model, question,
gold list, prediction), so a rerun costs nothing and an interrupted run resumes. The API key comes
from the caller or the environment (``JUDGE_API_KEY``, then ``OPENAI_API_KEY``) and is never logged.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

JUDGE_SYSTEM = "You grade answers to questions. You reply with one word: correct or incorrect."
JUDGE_TEMPLATE = """\
Question: {question}
Gold answer(s): {golds}
Predicted answer: {prediction}

Is the predicted answer correct, that is, does it mean the same as at least one gold answer \
(wording, abbreviations and extra detail that does not change the meaning are fine)?
Reply with exactly one word: correct or incorrect."""

_VERDICT_RE = re.compile(r"\b(incorrect|correct)\b")


class JudgeError(RuntimeError):
    """The judge endpoint failed for good (after the allowed retries, or on a non-retryable error)."""


@dataclass
class Verdict:
    """A judgment: ``correct`` and whether the reply could be read (unparsed replies count as incorrect)."""

    correct: bool
    parsed: bool
    cached: bool = False


def chat_completions_url(base_url: str) -> str:
    """``http://h:8000`` or ``http://h:8000/v1`` (or the full URL) -> ``…/v1/chat/completions``."""
    url = base_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"judge URL must start with http:// or https://, got {base_url!r}")
    if url.endswith("/chat/completions"):
        return url
    if re.search(r"/v\d+$", url):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def api_key_from_env() -> str | None:
    """``JUDGE_API_KEY``, else ``OPENAI_API_KEY``, else None (local servers often need none)."""
    return os.environ.get("JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or None


def parse_verdict(text: str) -> bool | None:
    """``True``/``False`` from the judge's reply, ``None`` if it says neither (first word found wins)."""
    m = _VERDICT_RE.search(text.lower())
    if m is None:
        return None
    return m.group(1) == "correct"


class JudgeCache:
    """SQLite verdict cache keyed by (model, question, golds as JSON, prediction); thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS verdicts (model TEXT, question TEXT, golds TEXT, prediction TEXT,"
            " correct INTEGER, parsed INTEGER, reply TEXT, PRIMARY KEY (model, question, golds, prediction))"
        )
        self._db.commit()

    @staticmethod
    def _key(model: str, question: str, golds: Sequence[str], prediction: str) -> tuple[str, str, str, str]:
        return model, question, json.dumps(list(golds), ensure_ascii=False), prediction

    def get(self, model: str, question: str, golds: Sequence[str], prediction: str) -> Verdict | None:
        with self._lock:
            row = self._db.execute(
                "SELECT correct, parsed FROM verdicts WHERE model=? AND question=? AND golds=? AND prediction=?",
                self._key(model, question, golds, prediction),
            ).fetchone()
        return None if row is None else Verdict(bool(row[0]), bool(row[1]), cached=True)

    def put(
        self, model: str, question: str, golds: Sequence[str], prediction: str, verdict: Verdict, reply: str
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    *self._key(model, question, golds, prediction),
                    int(verdict.correct),
                    int(verdict.parsed),
                    reply,
                ),
            )
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class LLMJudge:
    """Asks a chat model whether a prediction matches the gold answers, with retries and a cache."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        cache_path: str | Path | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        max_tokens: int = 16,
        client: httpx.Client | None = None,
    ) -> None:
        if not model:
            raise ValueError("judge model name is empty")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.url = chat_completions_url(base_url)
        self.model = model
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_tokens = max_tokens
        key = api_key if api_key is not None else api_key_from_env()
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = client or httpx.Client(timeout=httpx.Timeout(timeout), headers=headers)
        self._own_client = client is None
        self.cache = JudgeCache(cache_path) if cache_path else None
        self.requests = 0  # HTTP requests sent (for reports and tests)

    def __enter__(self) -> LLMJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own_client:
            self._client.close()
        if self.cache is not None:
            self.cache.close()

    def _wait(self, attempt: int, response: httpx.Response | None) -> float:
        delay = min(self.backoff * (2**attempt), self.max_backoff)
        if response is not None:
            try:
                delay = min(max(delay, float(response.headers.get("Retry-After", "0"))), self.max_backoff)
            except ValueError:
                pass
        return delay

    def _ask(self, question: str, golds: Sequence[str], prediction: str) -> str:
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": JUDGE_SYSTEM},
                {
                    "role": "user",
                    "content": JUDGE_TEMPLATE.format(
                        question=question, golds=" | ".join(golds), prediction=prediction
                    ),
                },
            ],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        last = ""
        for attempt in range(self.max_retries + 1):
            response = None
            try:
                self.requests += 1
                response = self._client.post(self.url, json=body)
            except httpx.TransportError as e:  # connect error, timeout, reset
                last = f"{type(e).__name__}: {e}"
            else:
                if response.status_code == 200:
                    try:
                        return str(response.json()["choices"][0]["message"]["content"] or "")
                    except (ValueError, KeyError, IndexError, TypeError):
                        raise JudgeError(
                            f"judge at {self.url} answered 200 without choices[0].message.content: "
                            f"{response.text[:200]!r}"
                        ) from None
                if response.status_code != 429 and response.status_code < 500:
                    raise JudgeError(
                        f"judge at {self.url} answered HTTP {response.status_code} (not retried): "
                        f"{response.text[:200]!r}"
                    )
                last = f"HTTP {response.status_code}: {response.text[:200]!r}"
            if attempt < self.max_retries:
                delay = self._wait(attempt, response)
                log.warning(
                    "judge request failed (%s); retry %d/%d in %.1fs",
                    last,
                    attempt + 1,
                    self.max_retries,
                    delay,
                )
                time.sleep(delay)
        raise JudgeError(
            f"judge at {self.url} failed after {self.max_retries + 1} attempt(s); last error: {last}"
        )

    def judge(self, question: str, golds: Sequence[str], prediction: str | None) -> Verdict:
        """Judge one prediction; a missing prediction is incorrect without asking."""
        if prediction is None or not prediction.strip():
            return Verdict(False, True)
        golds = list(golds)
        if self.cache is not None:
            hit = self.cache.get(self.model, question, golds, prediction)
            if hit is not None:
                return hit
        reply = self._ask(question, golds, prediction)
        verdict_bool = parse_verdict(reply)
        verdict = Verdict(bool(verdict_bool), verdict_bool is not None)
        if verdict_bool is None:
            log.warning(
                "judge reply has neither 'correct' nor 'incorrect' (counted incorrect): %r", reply[:100]
            )
        if self.cache is not None:
            self.cache.put(self.model, question, golds, prediction, verdict, reply)
        return verdict

    def judge_many(
        self, items: Sequence[tuple[str, Sequence[str], str | None]], workers: int = 4
    ) -> list[Verdict]:
        """Judge ``(question, golds, prediction)`` items in parallel threads, results in input order."""
        if workers <= 1:
            return [self.judge(*it) for it in items]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda it: self.judge(*it), items))
