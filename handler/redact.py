"""Keep API keys out of everything the handler says: error details, page errors and logs.

Two nets: every configured key (the values of the environment variables the config names, and of any
variable whose name says it holds a secret) is replaced wherever it appears, and anything that looks
like a credential (``Bearer ...``, ``api_key=...``, ``sk-...``, long mixed letter-digit runs) is
replaced too, so a key the handler was never told about is not relayed either.
"""

from __future__ import annotations

import logging
import os
import re

from handler.config import HandlerConfig

MASK = "[redacted]"
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD)$", re.IGNORECASE)
_LOOKS_LIKE = [
    # a label followed by its value: "Bearer abc", "api_key=abc", "X-API-KEY: abc", '"token": "abc"'
    re.compile(
        r"(?i)(\bbearer\s+|\b(?:api[_-]?key|apikey|access[_-]?token|token|secret|password|"
        r"subscription[_-]?key|x-api-key|key)\b[\"']?\s*[:=]\s*[\"']?)([^\s\"'&,;)}\]]{6,})"
    ),
    re.compile(r"\b(?:sk|pk|rk|ghp|gho|github_pat|xox[abprs])[-_][A-Za-z0-9_\-]{12,}"),
    # 32+ characters of letters, digits, '-' or '_' holding both a letter and a digit
    re.compile(r"\b(?=[A-Za-z0-9_\-]*[0-9])(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{32,}\b"),
]
_names: list[str] = []


def watch_config(cfg: HandlerConfig) -> None:
    """Remember which environment variables hold this handler's keys (read again at each use)."""
    _names[:] = [cfg.web.serper_key_env, cfg.web.bing_key_env, cfg.reader.llm.api_key_env, "OPENAI_API_KEY"]


def configured_secrets() -> list[str]:
    """Current values of the key variables (configured names plus any ``*_KEY``/``*_TOKEN``/... one)."""
    names = set(_names) | {n for n in os.environ if _SECRET_NAME.search(n)}
    values = {os.environ.get(n, "") for n in names}
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every configured key and every credential-looking string replaced by a mask."""
    if not text:
        return text
    for value in configured_secrets():
        if value in text:
            text = text.replace(value, MASK)
    text = _LOOKS_LIKE[0].sub(lambda m: m.group(1) + MASK, text)
    for pattern in _LOOKS_LIKE[1:]:
        text = pattern.sub(MASK, text)
    return text


class RedactingFilter(logging.Filter):
    """A handler filter that redacts the formatted message and any traceback of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if record.exc_info:  # the traceback is part of the text: redact it too, once formatted
            clean += "\n" + redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info, record.exc_text = None, None
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_redaction() -> None:
    """Attach the filter to every handler of the root and uvicorn loggers (child loggers propagate)."""
    for name in ("", "uvicorn", "uvicorn.error"):  # access lines carry no bodies (and are off)
        for h in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in h.filters):
                h.addFilter(RedactingFilter())
