"""Which ``Host`` headers the handler answers (a guard against DNS rebinding).

A web page on ``evil.example`` whose DNS name is re-pointed at 127.0.0.1 can make the visitor's
browser send requests to the handler; the browser then sends ``Host: evil.example``. Only loopback
names, the address the server binds, and the names the operator allows are answered.
"""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")


def host_name(value: str) -> str:
    """The host of a ``Host`` header or an allow-list entry: no port, no brackets, no final dot,
    lowercase (``"[::1]:8000"`` -> ``"::1"``, ``"LocalHost.:80"`` -> ``"localhost"``)."""
    v = value.strip().lower()
    if v.startswith("["):  # [v6]:port
        v = v[1:].split("]", 1)[0]
    elif v.count(":") == 1:  # name:port or v4:port (a bare v6 address has several colons)
        v = v.split(":", 1)[0]
    return v.rstrip(".")


def _ip(v: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(v)
    except ValueError:
        return None


class HostCheck:
    """Decides whether a ``Host`` header names this handler.

    Accepted: ``localhost`` and loopback IP literals, the bind host (when it is not a wildcard),
    every entry of ``allowed`` (``"*"`` accepts any host), and any IP literal when the server binds
    a wildcard address (DNS rebinding needs a name, so literals cannot be used for it). A request
    without a Host header (HTTP/1.0) is accepted: browsers always send one.
    """

    def __init__(self, bind_host: str, allowed: list[str]):
        self.any = "*" in allowed
        names = {host_name(a) for a in allowed if a != "*"}
        names.update(LOOPBACK_NAMES)
        bind = host_name(bind_host)
        self.wildcard = bind in WILDCARD_BINDS
        if not self.wildcard:
            names.add(bind)
        self.names = frozenset(names)

    def allows(self, header: str | None) -> bool:
        """Whether a request with this Host header (None: no header) is answered."""
        if header is None or self.any:
            return True
        h = host_name(header)
        if h in self.names:
            return True
        ip = _ip(h)
        return ip is not None and (ip.is_loopback or self.wildcard)

    def describe(self) -> str:
        """The accepted names, for error messages."""
        names = ", ".join(sorted(self.names))
        return names + (", any IP address" if self.wildcard else ", any loopback address")
