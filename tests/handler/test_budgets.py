"""In-process unit tests of the handler's bounds: the in-memory caches' byte budgets, the Host-header
check and the new config keys (no server, no HTTP libraries needed)."""

from __future__ import annotations

import pytest

from handler.cache import Cache
from handler.config import ConfigError, load_config
from handler.corpus import Tokenizer
from handler.hostcheck import HostCheck, host_name


def _mem_size(cache: Cache) -> int:
    """The bytes the budget counts, recomputed from scratch."""
    return sum(cache._cost(k, v) for k, (v, _) in cache._mem.items())


def test_answer_cache_memory_holds_its_byte_budget(tmp_path) -> None:
    budget = 20_000
    c = Cache(tmp_path / "c.sqlite", ttl_s=3600, memory_entries=10_000, memory_bytes=budget)
    for i in range(200):  # ~1 kB values: 200 of them are ten times the budget
        c.put_many({f"k{i}": "v" * 1000})
        assert c._mem_bytes == _mem_size(c) <= budget
    assert 0 < len(c._mem) < 20 and "k199" in c._mem and "k0" not in c._mem  # the newest are kept
    assert c.get_many(["k0", "k199"]) == {"k0": "v" * 1000, "k199": "v" * 1000}  # from SQLite
    assert c._mem_bytes == _mem_size(c) <= budget
    c.put_many({"huge": "x" * (budget + 1)})  # larger than the whole budget: SQLite only
    assert "huge" not in c._mem and c.get_many(["huge"]) == {"huge": "x" * (budget + 1)}
    assert c._mem_bytes == _mem_size(c) <= budget
    c.put_many({"k199": "short"})  # replacing an entry releases its old size
    assert c._mem_bytes == _mem_size(c) and c.stats()["memory_bytes"] == c._mem_bytes


def test_answer_cache_entry_bound_still_holds(tmp_path) -> None:
    c = Cache(tmp_path / "c.sqlite", ttl_s=3600, memory_entries=5, memory_bytes=10**9)
    c.put_many({f"k{i}": "v" for i in range(12)})
    assert list(c._mem) == [f"k{i}" for i in range(7, 12)] and c._mem_bytes == _mem_size(c)
    c.ttl_s = -1.0  # everything expired
    c.purge_expired()
    assert c._mem == {} and c._mem_bytes == 0


def test_word_cache_holds_its_byte_budget() -> None:
    tok = Tokenizer("english", "en")
    tok.CACHE_BYTES = 50_000
    for i in range(2_000):  # model-written garbage words, 200 characters each
        tok(f"{i:04d}" + "z" * 196)
    counted = sum(len(w) + len(t or "") + tok.CACHE_ENTRY_OVERHEAD for w, t in tok._cache.items())
    assert tok._cache_bytes == counted <= 50_000
    assert 0 < len(tok._cache) < 2_000
    assert tok("running 1999" + "z" * 196) == ["run", "1999" + "z" * 196]  # still correct past the bound


def test_word_cache_entry_bound() -> None:
    tok = Tokenizer("", "")
    tok.CACHE_ENTRIES = 10
    tok(" ".join(f"word{i}" for i in range(50)))
    assert len(tok._cache) == 10


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("localhost", True),
        ("localhost:8000", True),
        ("LocalHost.:8000", True),
        ("127.0.0.1:8000", True),
        ("127.0.0.1.", True),
        ("[::1]:8000", True),
        ("[::1]", True),
        ("127.8.9.10", True),  # any loopback literal
        ("trainer.internal:8000", True),  # allow-listed
        ("trainer.internal.", True),
        (None, True),  # HTTP/1.0 without Host: browsers always send one
        ("evil.example", False),
        ("evil.example:8000", False),
        ("localhost.evil.example", False),
        ("10.0.0.7:8000", False),  # not the bind address, not a wildcard bind
        ("", False),
    ],
)
def test_host_check_loopback_bind_and_allow_list(header: str | None, ok: bool) -> None:
    assert HostCheck("127.0.0.1", ["trainer.internal"]).allows(header) is ok


def test_host_check_bind_address_and_wildcards() -> None:
    assert HostCheck("10.0.0.7", []).allows("10.0.0.7:8000")
    assert not HostCheck("10.0.0.7", []).allows("10.0.0.8:8000")
    wild = HostCheck("0.0.0.0", ["gpu-node-3"])
    assert wild.allows("10.0.0.8:8000") and wild.allows("[fe80::1]:8000")  # IP literals: no rebinding
    assert wild.allows("GPU-node-3:8000") and not wild.allows("evil.example")
    assert HostCheck("127.0.0.1", ["*"]).allows("anything.example")
    assert host_name("[::1]:80") == "::1" and host_name("Example.COM.:443") == "example.com"


def test_config_keys_are_checked() -> None:
    cfg = load_config(
        None, {"allowed_hosts": ["a.example"], "limits.body_timeout_s": 2, "cache.memory_mb": 8}
    )
    assert cfg.allowed_hosts == ["a.example"] and cfg.limits.body_timeout_s == 2.0
    with pytest.raises(ConfigError, match="'allowed_hosts': 'http://x/'"):
        load_config(None, {"allowed_hosts": ["http://x/"]})
    with pytest.raises(ConfigError, match="'limits.header_timeout_s': 0 must be > 0"):
        load_config(None, {"limits.header_timeout_s": 0})
    with pytest.raises(ConfigError, match="'limits.max_backend_jobs': 0"):
        load_config(None, {"limits.max_backend_jobs": 0})
    with pytest.raises(ConfigError, match="'reader.max_parse_jobs': 0 must be >= 1"):
        load_config(None, {"reader.max_parse_jobs": 0})
    with pytest.raises(ConfigError, match="'cache.memory_mb'"):
        load_config(None, {"cache.memory_mb": -1})


def test_job_slots_cap_jobs_until_they_really_end():
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from handler.jobs import JobSlots

    gate = threading.Event()
    slots = JobSlots(2)
    with ThreadPoolExecutor(max_workers=1) as ex:
        running = slots.submit(ex, gate.wait)
        waiting = slots.submit(ex, lambda: "queued")
        assert running is not None and waiting is not None
        assert slots.submit(ex, lambda: "third") is None and slots.count == 2  # full: nothing submitted
        assert waiting.cancel() and slots.count == 1  # a job cancelled before it started gives its slot back
        gate.set()
        running.result(timeout=5)
        deadline = time.monotonic() + 5  # the done callback runs just after the waiters are woken
        while slots.count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slots.count == 0
        assert slots.submit(ex, lambda: 7).result(timeout=5) == 7
    ex.shutdown()
    with pytest.raises(RuntimeError):  # submission itself fails: the slot is not kept
        slots.submit(ex, lambda: 1)
    assert slots.count == 0
