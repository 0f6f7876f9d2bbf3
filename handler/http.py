"""Outbound HTTP with a timeout on every call and a bounded retry with exponential backoff."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from handler.errors import BackendFailure, BackendTimeout
from handler.redact import redact

log = logging.getLogger("handler.http")

RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


async def request_with_retry(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    what: str,
    timeout_s: float,
    max_retries: int,
    backoff_s: float,
    **kwargs: Any,
) -> httpx.Response:
    """Send a request, retrying transport errors, timeouts, 429 and 5xx at most ``max_retries`` times.

    Returns a 2xx response; otherwise raises BackendTimeout (all attempts timed out) or BackendFailure
    with a short message naming ``what`` failed. Headers (which may carry API keys) are never logged.
    """
    attempts = max_retries + 1
    last = ""
    timed_out = False
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(backoff_s * (2 ** (attempt - 1)))
        try:
            resp = await client.request(method, url, timeout=timeout_s, **kwargs)
        except httpx.TimeoutException:
            timed_out, last = True, f"no answer within {timeout_s:g}s"
            log.warning("%s: timeout (attempt %d/%d)", what, attempt + 1, attempts)
            continue
        except httpx.HTTPError as e:
            timed_out, last = False, redact(f"{type(e).__name__}: {e}")[:200]
            log.warning("%s: %s (attempt %d/%d)", what, last, attempt + 1, attempts)
            continue
        if resp.is_success:
            return resp
        # The upstream's own error text is logged (redacted) but never relayed: it may echo the key
        body = redact(resp.text[:200].replace("\n", " "))
        last = f"HTTP {resp.status_code} {resp.reason_phrase}".rstrip()
        timed_out = False
        log.warning("%s: %s (attempt %d/%d): %s", what, last, attempt + 1, attempts, body)
        if resp.status_code not in RETRY_STATUS:
            raise BackendFailure(f"{what} refused the request ({last})")
    if timed_out:
        raise BackendTimeout(f"{what} timed out after {attempts} attempt(s): {last}")
    raise BackendFailure(f"{what} failed after {attempts} attempt(s): {last}")
