"""SSRF guard details: names with a final dot, and connections pinned to the address that was checked
(no second DNS lookup between the check and the connection: DNS rebinding)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from handler_testlib import FakeWeb, Server, base_config

from handler.config import ReaderConfig
from handler.reader import Reader, pinned_client


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory, fake_web: FakeWeb) -> Iterator[Server]:
    """No allow-list: loopback, private and metadata destinations are all refused."""
    tmp = tmp_path_factory.mktemp("ssrf")
    cfg = base_config(tmp, fake_web, cache={"enabled": False})
    cfg["reader"]["allow_hosts"] = []
    s = Server(tmp, cfg).start()
    yield s
    s.stop()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://metadata.google.internal./computeMetadata/v1/", "cloud-metadata host"),
        ("http://METADATA.google.internal../x", "cloud-metadata host"),
        ("http://metadata./", "cloud-metadata host"),
        ("http://localhost./", "loopback address"),
        ("http://localhost.:{port}/page.html", "loopback address"),
    ],
)
def test_final_dot_is_checked_as_the_name_without_it(
    strict_server: Server, fake_web: FakeWeb, url: str, why: str
) -> None:
    r = httpx.post(
        strict_server.url + "/tools/browse_webpage",
        json={"url_list": [url.format(port=fake_web.port)], "question": "q"},
        timeout=10,
    )
    assert r.status_code == 403, r.text
    assert r.json()["detail"].startswith("field 'url_list[0]'") and why in r.json()["detail"]


class CountingReader(Reader):
    """A reader whose guard resolves every name to 127.0.0.1 (allowed by CIDR) and counts lookups."""

    def __init__(self) -> None:
        super().__init__(ReaderConfig(allow_hosts=["127.0.0.0/8"], timeout_s=5), httpx.AsyncClient())
        self.lookups: list[str] = []

        async def resolve(host: str, port: int) -> list[tuple]:
            self.lookups.append(host)
            return [(2, 1, 6, "", ("127.0.0.1", port))]

        self.guard.resolve = resolve  # type: ignore[method-assign]


def test_connection_goes_to_the_checked_address(fake_web: FakeWeb) -> None:
    """`rebind.invalid` has no DNS record: the page can only be read if the connection uses the address
    the guard resolved, without asking DNS again. One lookup per hop, redirects included."""

    async def go() -> tuple[list[str], str, list[str], str]:
        r = CountingReader()
        try:
            _, text = await r.fetch(f"http://rebind.invalid:{fake_web.port}/page.html", "url_list[0]")
            first = list(r.lookups)
            _, text2 = await r.fetch(f"http://Rebind.Invalid.:{fake_web.port}/redirect-page", "url_list[0]")
            return first, text, r.lookups[len(first) :], text2
        finally:
            await r.aclose()
            await r.client.aclose()

    first, text, second, text2 = asyncio.run(go())
    assert first == ["rebind.invalid"] and "born in 1571" in text
    assert second == ["rebind.invalid", "rebind.invalid"] and "born in 1571" in text2  # page + redirect hop


def test_page_client_refuses_unchecked_hosts(fake_web: FakeWeb) -> None:
    async def go() -> None:
        async with pinned_client() as c:
            with pytest.raises(httpx.ConnectError, match="was not checked by the URL guard"):
                await c.get(f"http://localhost:{fake_web.port}/page.html")
            r = await c.get(f"http://127.0.0.1:{fake_web.port}/page.html")  # IP literals need no lookup
            assert r.status_code == 200

    asyncio.run(go())
