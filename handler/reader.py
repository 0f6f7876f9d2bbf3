"""Page reader for browse_webpage: SSRF-guarded fetch, size cap, HTML -> text, optional LLM reading.

The model writes the URLs, so every URL (and every redirect hop) is resolved and refused when it
points at loopback, private, link-local, cloud-metadata or otherwise non-public addresses, unless the
host or network is on the configured allow-list.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx
import idna

from handler.config import ReaderConfig, secret
from handler.errors import BackendFailure, BackendTimeout, BadInput, Forbidden
from handler.http import request_with_retry
from handler.jobs import JobSlots

log = logging.getLogger("handler.reader")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal"}


@dataclass
class Page:
    """Outcome of reading one URL: text for the model, or an error saying why not."""

    url: str
    ok: bool
    text: str = ""
    error: str = ""

    def render(self) -> str:
        body = self.text if self.ok else f"Error: {self.error}"
        return f"Page: {self.url}\n{body}"


def _ip_class(ip: IPAddress) -> str | None:
    """Why an address is not public, or None if it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local (cloud metadata)"
    if ip.is_private:
        return "private"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return "non-public"
    return None


class UrlGuard:
    """Resolves hosts and refuses non-public destinations unless allow-listed."""

    def __init__(self, allow: list[str]):
        self.allow_hosts = {a.lower() for a in allow if not _is_network(a)}
        self.allow_nets = [ipaddress.ip_network(a, strict=True) for a in allow if _is_network(a)]

    async def resolve(self, host: str, port: int) -> list[tuple]:
        """``getaddrinfo`` for TCP (the one DNS lookup per URL and hop)."""
        return await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)

    def _allowed_ip(self, ip: IPAddress) -> bool:
        return any(ip in n for n in self.allow_nets)

    async def check(self, url: str, field: str) -> tuple[str, str] | None:
        """Raise BadInput for a malformed URL and Forbidden for a refused destination. Otherwise return
        ``(host as the HTTP client names it, address to connect to)`` for a host name (the address that
        was checked, so the connection needs no second DNS lookup), or None for an IP literal."""
        try:  # a malformed bracketed host ("http://[", "http://[zz]/") raises here
            parts = urlsplit(url)
            # "localhost." and "metadata.google.internal." are the same names without the final dot
            host = (parts.hostname or "").lower().rstrip(".")
        except ValueError as e:
            raise BadInput(f"field '{field}': {url!r:.120} is not a valid URL ({e})") from None
        if parts.scheme not in ("http", "https"):
            raise BadInput(f"field '{field}': {url!r:.120} is not an http(s) URL")
        bad = next((c for c in url if ord(c) < 32 or ord(c) == 127), None)
        if bad is not None:
            raise BadInput(f"field '{field}': {url!r:.120} contains a control character ({bad!r})")
        if not host:
            raise BadInput(f"field '{field}': {url!r:.120} has no host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise BadInput(f"field '{field}': {url!r:.120} has an invalid port") from None
        ascii_host = host
        if not _is_ip(host):
            try:  # IDNA 2008 as the HTTP client encodes it; empty labels, labels over 63 characters
                ascii_host = host.encode("idna").decode() if host.isascii() else idna.encode(host).decode()
            except (UnicodeError, idna.IDNAError) as e:
                raise BadInput(f"field '{field}': {url!r:.120} has an invalid host name ({e})") from None
        if host in self.allow_hosts:
            return (ascii_host, ascii_host) if not _is_ip(host) else None
        if host in METADATA_HOSTS:
            raise Forbidden(f"field '{field}': {url!r:.120} is a cloud-metadata host; refused")
        try:
            ips = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = await self.resolve(ascii_host, port)
            except socket.gaierror as e:
                raise LookupError(f"cannot resolve host {host!r} ({e.strerror})") from None
            except UnicodeError as e:  # IDNA encoding failed: a label over 63 characters, a lone surrogate
                raise BadInput(f"field '{field}': {url!r:.120} has an invalid host name ({e})") from None
            ips = [ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos]
        if not ips:
            raise LookupError(f"host {host!r} has no address")
        for ip in ips:
            why = _ip_class(ip)
            if why and not self._allowed_ip(ip):
                raise Forbidden(f"field '{field}': {url!r:.120} resolves to {why} address {ip}; refused")
        return None if _is_ip(host) else (ascii_host, str(ips[0]))


# host (as the HTTP client names it, no final dot) -> address checked by the guard, for the current fetch
_PINS: ContextVar[dict[str, str] | None] = ContextVar("reader_pins", default=None)


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects page fetches to the address the URL guard checked, never resolving the name again (a
    DNS-rebinding server cannot answer the check with a public address and the connection with a
    private one). TLS still verifies the certificate for the host name."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        target = host
        if not _is_ip(host):
            target = (_PINS.get() or {}).get(host.lower().rstrip("."), "")
            if not target:
                raise httpcore.ConnectError(f"host {host!r} was not checked by the URL guard")
        return await self._inner.connect_tcp(
            target, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None):
        raise httpcore.ConnectError("page fetches do not use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def pinned_client() -> httpx.AsyncClient:
    """An HTTP client for page fetches whose connections go to the guard's checked addresses only."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(  # same pool httpx builds, with our network backend
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=64,
        max_keepalive_connections=16,
        keepalive_expiry=5.0,
        network_backend=PinnedBackend(),
    )
    return httpx.AsyncClient(transport=transport, trust_env=False)


def _is_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
        return True
    except ValueError:
        return False


def _is_network(s: str) -> bool:
    try:
        ipaddress.ip_network(s, strict=True)
        return True
    except ValueError:
        return False


def html_to_text(html: str, url: str = "") -> str:
    """Main text of an HTML page (trafilatura), falling back to all visible text."""
    import trafilatura

    text = trafilatura.extract(
        html, url=url or None, include_comments=False, include_tables=True, favor_recall=True
    )
    if not text:
        import lxml.html

        try:
            doc = lxml.html.fromstring(html)
            for bad in doc.xpath("//script|//style|//noscript"):
                bad.drop_tree()
            text = doc.text_content()
        except Exception:  # lxml raises several types on garbage input
            text = ""
    return re.sub(r"[ \t]+", " ", re.sub(r"\n\s*\n+", "\n\n", text or "")).strip()


def pick_passages(text: str, question: str, max_chars: int) -> str:
    """Without an LLM: the paragraphs sharing most words with the question, in page order, capped."""
    if len(text) <= max_chars:
        return text
    paras = [p for p in text.split("\n") if p.strip()]
    qwords = {w for w in re.findall(r"\w\w+", question.lower())}
    scored = sorted(
        range(len(paras)), key=lambda i: -len(qwords & set(re.findall(r"\w\w+", paras[i].lower())))
    )
    keep, total = set(), 0
    for i in scored:
        if total + len(paras[i]) > max_chars and keep:
            continue
        keep.add(i)
        total += len(paras[i]) + 1
        if total >= max_chars:
            break
    out = "\n".join(paras[i] for i in sorted(keep))
    return out[:max_chars]


class ParserBusy(Exception):
    """Every parser slot (``reader.max_parse_jobs``) is taken: the page is answered as an error."""


class Reader:
    """Fetches pages and turns them into text about a question.

    HTML -> text (seconds for a 2 MB page) runs on ``PARSE_THREADS`` threads of its own, off the event
    loop, so other requests (``/retrieve``) are answered meanwhile. At most ``reader.max_parse_jobs``
    pages are parsed or wait for a thread (a waiting page holds its bytes); a page past that is an
    error page at once instead of a queue that grows without bound."""

    PARSE_THREADS = 2

    def __init__(self, cfg: ReaderConfig, client: httpx.AsyncClient):
        self.cfg = cfg
        self.client = client  # the reader LLM's endpoint (configured, trusted)
        self.pages = pinned_client()  # model-written URLs: connections pinned to checked addresses
        self.guard = UrlGuard(cfg.allow_hosts)
        self.parser = ThreadPoolExecutor(max_workers=self.PARSE_THREADS, thread_name_prefix="html2text")
        # pages parsed or waiting in self.parser (a running parse whose request is gone too)
        self.parse_jobs = JobSlots(cfg.max_parse_jobs)

    async def aclose(self) -> None:
        """Close the page client's connections and stop the parser threads."""
        await self.pages.aclose()
        self.parser.shutdown(wait=False, cancel_futures=True)

    def llm_configured(self) -> bool:
        return bool(self.cfg.llm.base_url)

    async def _off_loop(self, fn: Callable[..., str], *args: Any) -> str:
        """``fn(*args)`` on a parser thread; ParserBusy when ``reader.max_parse_jobs`` are taken. The slot
        is held until the call ends, even when the request that asked for it is gone."""
        cfut = self.parse_jobs.submit(self.parser, fn, *args)
        if cfut is None:
            raise ParserBusy(
                f"the handler is busy parsing other pages (reader.max_parse_jobs: {self.cfg.max_parse_jobs} "
                "being parsed or waiting); try again in a moment"
            )
        return await asyncio.wrap_future(cfut)  # cancelled with its request: a waiting job never starts

    async def fetch(self, url: str, field: str) -> tuple[str, str]:
        """Return (final URL, text) of a page; raise Forbidden, or LookupError/ValueError with a reason."""
        cur = url
        pins: dict[str, str] = {}
        _PINS.set(pins)  # this task's own context: concurrent fetches do not see each other's pins
        for _hop in range(self.cfg.max_redirects + 1):
            pin = await self.guard.check(cur, field)
            if pin is not None:
                pins[pin[0]] = pin[1]
            try:
                async with self.pages.stream(
                    "GET",
                    cur,
                    timeout=self.cfg.timeout_s,
                    follow_redirects=False,
                    headers={
                        "User-Agent": self.cfg.user_agent,
                        "Accept": "text/html,text/plain;q=0.9,*/*;q=0.1",
                    },
                ) as resp:
                    if resp.is_redirect:
                        loc = resp.headers.get("location")
                        if not loc:
                            raise ValueError(f"redirect (HTTP {resp.status_code}) without a Location")
                        cur = urljoin(cur, loc)
                        continue
                    if not resp.is_success:
                        raise ValueError(f"HTTP {resp.status_code}")
                    ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                    if ctype and not (ctype.startswith("text/") or "html" in ctype or "xml" in ctype):
                        raise ValueError(f"unsupported content type {ctype!r}")
                    buf = bytearray()
                    truncated = False
                    async for chunk in resp.aiter_bytes():
                        buf += chunk
                        if len(buf) > self.cfg.max_bytes:
                            truncated = True
                            del buf[self.cfg.max_bytes :]
                            break
                    raw = bytes(buf).decode(resp.encoding or "utf-8", errors="replace")
            except httpx.TimeoutException:
                raise TimeoutError(f"no answer within {self.cfg.timeout_s:g}s") from None
            except (httpx.HTTPError, httpx.InvalidURL) as e:
                raise ValueError(f"{type(e).__name__}: {e}"[:200]) from None
            if truncated:
                log.info("page %s truncated at %d bytes", cur[:200], self.cfg.max_bytes)
            if "html" in ctype or (not ctype and "<html" in raw[:2000].lower()):
                return cur, await self._off_loop(html_to_text, raw, cur)
            return cur, raw
        raise ValueError(f"more than {self.cfg.max_redirects} redirects")

    async def _ask_llm(self, chunk: str, question: str, url: str) -> str:
        llm = self.cfg.llm
        key = secret(llm.api_key_env, "OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        prompt = (
            f"Question: {question}\n\nBelow is part of the web page {url}. Quote or summarize everything in it "
            "that helps answer the question, concisely. If nothing in it is relevant, reply exactly NONE.\n\n"
            f"--- page text ---\n{chunk}"
        )
        resp = await request_with_retry(
            self.client,
            "POST",
            llm.base_url.rstrip("/") + "/chat/completions",
            what="reader LLM",
            timeout_s=llm.timeout_s,
            max_retries=llm.max_retries,
            backoff_s=llm.backoff_s,
            headers=headers,
            json={
                "model": llm.model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": llm.max_tokens,
                "temperature": 0.0,
            },
        )
        try:
            content = resp.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise BackendFailure("reader LLM answered without choices[0].message.content") from None
        return str(content or "").strip()

    async def read_one(self, url: str, question: str, field: str) -> Page:
        """Read one URL. Fetch problems become a Page with an error; LLM failures raise (502/504)."""
        try:
            final, text = await self.fetch(url, field)
        except (Forbidden, BadInput):
            raise
        except ParserBusy as e:
            return Page(url, False, error=str(e))
        except (LookupError, ValueError, TimeoutError, OSError) as e:
            return Page(url, False, error=f"could not fetch the page: {e}")
        if not text.strip():
            return Page(url, False, error="the page has no readable text")
        if not self.llm_configured():
            if len(text) <= self.cfg.max_chars_per_page:
                return Page(url, True, text)
            try:  # scoring every paragraph of a long page: off the loop too
                picked = await self._off_loop(pick_passages, text, question, self.cfg.max_chars_per_page)
            except ParserBusy as e:
                return Page(url, False, error=str(e))
            return Page(url, True, picked)
        size = self.cfg.llm.chunk_chars
        chunks = [text[i : i + size] for i in range(0, len(text), size)][: self.cfg.llm.max_chunks]
        notes = []
        for chunk in chunks:
            ans = await self._ask_llm(chunk, question, final)
            if ans and ans.strip().upper().rstrip(".") != "NONE":
                notes.append(ans)
        if not notes:
            return Page(url, True, "The page says nothing relevant to the question.")
        return Page(url, True, "\n".join(notes))

    async def read(self, urls: list[str], question: str) -> list[Page]:
        """Read several URLs concurrently (all URLs are checked before any is fetched)."""
        for i, u in enumerate(urls):
            try:
                await self.guard.check(u, f"url_list[{i}]")
            except LookupError:
                pass  # reported per page below
        results = await asyncio.gather(
            *(self.read_one(u, question, f"url_list[{i}]") for i, u in enumerate(urls)),
            return_exceptions=True,
        )
        pages: list[Page] = []
        for r in results:
            if isinstance(r, BaseException):
                if isinstance(r, BackendFailure | BackendTimeout | Forbidden | BadInput):
                    raise r
                raise BackendFailure(f"reader failed: {type(r).__name__}: {r}"[:300])
            pages.append(r)
        return pages
