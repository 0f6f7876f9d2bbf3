"""Bad files on disk: a garbage cache file, a corpus line that is not UTF-8, a damaged index directory,
and index builds that two servers start at once (real server processes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from handler_testlib import REPO, SAMPLE, FakeWeb, Server, base_config

from handler.corpus import CorpusError, generate_corpus, iter_corpus


def _serve_fails(tmp: Path, cfg: dict) -> str:
    """Run ``python -m handler serve`` with ``cfg``; it must exit 2 at once; return its stderr."""
    path = tmp / "bad-run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [sys.executable, "-m", "handler", "serve", "--config", str(path), "--port", "9"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    return out.stderr


def _index_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "handler", "index", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ----------------------------------------------------------------------------------- cache file
def test_garbage_cache_file_is_moved_aside_and_a_fresh_cache_works(tmp_path, fake_web: FakeWeb) -> None:
    garbage = b"not a database, just some bytes someone left here " * 40
    (tmp_path / "cache.sqlite").write_bytes(garbage)
    cfg = base_config(tmp_path, fake_web)
    s = Server(tmp_path, cfg).start()
    try:
        body = {"queries": ["Mona Lisa painter"], "topk": 2}
        first = httpx.post(s.url + "/retrieve", json=body)
        assert first.status_code == 200 and first.json()["result"][0]
        assert httpx.post(s.url + "/retrieve", json=body).json() == first.json()
        cache = httpx.get(s.url + "/health").json()["cache"]
        assert cache["errors"] == 0 and cache["hits"] == 1 and cache["entries"] == 1  # the cache works
    finally:
        s.stop()
    moved = sorted(tmp_path.glob("cache.sqlite.corrupt-*"))
    assert [p.read_bytes() for p in moved] == [garbage]  # kept for inspection, not deleted
    log = s.log()
    assert "cache file" in log and "is not a usable SQLite database" in log and moved[0].name in log
    assert "Traceback" not in log


def test_unusable_cache_path_stops_the_server_with_advice(tmp_path, fake_web: FakeWeb) -> None:
    (tmp_path / "cache-dir").mkdir()
    cfg = base_config(tmp_path, fake_web, cache={"path": str(tmp_path / "cache-dir")})
    err = _serve_fails(tmp_path, cfg)
    assert f"error: cache file '{tmp_path / 'cache-dir'}' cannot be used" in err
    assert "--no-cache" in err


# ----------------------------------------------------------------------------------- corpus
def test_corpus_line_not_utf8_is_named_by_file_and_line(tmp_path, fake_web: FakeWeb) -> None:
    corpus = tmp_path / "corpus.jsonl"
    good = SAMPLE.read_bytes().splitlines(keepends=True)
    corpus.write_bytes(
        b"".join(good[:2]) + b'{"id": "x", "contents": "caf\xe9 latin-1"}\n' + b"".join(good[2:])
    )
    with pytest.raises(CorpusError, match=r"corpus.jsonl:3: not valid UTF-8 \(byte 0xe9 at column 29\)"):
        list(iter_corpus(corpus))
    err = _serve_fails(tmp_path, base_config(tmp_path, fake_web))
    assert f"error: {corpus}:3: not valid UTF-8 (byte 0xe9 at column 29)" in err
    assert not (tmp_path / "index").exists() and not list(tmp_path.glob(".index.build-*"))


# ----------------------------------------------------------------------------------- damaged index
def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-16])


def _garbage(p: Path) -> None:
    p.write_bytes(b"\x00garbage\xff" * 50)


CORRUPTIONS = {
    "meta.json not JSON": ("meta.json", lambda p: p.write_text('{"format": "igpo-bm25-v1", ')),
    "meta.json a list": ("meta.json", lambda p: p.write_text("[1, 2]")),
    "score matrix cut short": ("data.csc.index.npy", _truncate),
    "offsets cut short": ("docs_contents_off.npy", _truncate),
    "document store garbage": ("docs_contents.npy", _garbage),
    "vocabulary cut short": ("vocab.index.json", _truncate),
}


@pytest.fixture(scope="module")
def built_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("built")
    out = _index_cli(str(SAMPLE), "--out", str(tmp / "index"))
    assert out.returncode == 0, out.stderr
    return tmp / "index"


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_damaged_index_names_the_file_and_the_rebuild_command(
    case: str, tmp_path, fake_web: FakeWeb, built_index: Path
) -> None:
    name, damage = CORRUPTIONS[case]
    cfg = base_config(tmp_path, fake_web, cache={"enabled": False})
    index = Path(cfg["index_dir"])
    shutil.copytree(built_index, index)
    meta = json.loads((index / "meta.json").read_text())
    meta["corpus"] = {**meta["corpus"], "path": cfg["corpus"]}  # as if built from this test's corpus copy
    st = Path(cfg["corpus"]).stat()
    meta["corpus"].update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    (index / "meta.json").write_text(json.dumps(meta))
    damage(index / name)
    err = _serve_fails(tmp_path, cfg)
    assert f"error: index file '{index / name}' " in err
    assert f"rebuild it with `python -m handler index {cfg['corpus']} --out {index} --rebuild`" in err
    # the index command refuses it the same way, and --rebuild repairs it
    out = _index_cli(cfg["corpus"], "--out", str(index))
    assert out.returncode == 2 and f"error: index file '{index / name}' " in out.stderr
    out = _index_cli(cfg["corpus"], "--out", str(index), "--rebuild")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) | {"build_seconds": 0} == {
        "index_dir": str(index),
        "n_docs": 24,
        "build_seconds": 0,
        "reused": False,
    }
    s = Server(tmp_path, cfg).start()
    try:
        r = httpx.post(s.url + "/retrieve", json={"query": "Who invented the telephone?", "topk": 1})
        assert r.json()["result"][0][0]["id"] == "20"
    finally:
        s.stop()


def test_index_command_reuses_a_current_index(tmp_path) -> None:
    out = _index_cli(str(SAMPLE), "--out", str(tmp_path / "idx"))
    assert out.returncode == 0 and json.loads(out.stdout.splitlines()[-1])["reused"] is False
    built = json.loads((tmp_path / "idx" / "meta.json").read_text())["built_at"]
    out = _index_cli(str(SAMPLE), "--out", str(tmp_path / "idx"))
    assert out.returncode == 0 and json.loads(out.stdout.splitlines()[-1])["reused"] is True
    assert json.loads((tmp_path / "idx" / "meta.json").read_text())["built_at"] == built
    out = _index_cli(str(SAMPLE), "--out", str(tmp_path / "idx"), "--rebuild")
    assert out.returncode == 0 and json.loads(out.stdout.splitlines()[-1])["reused"] is False
    assert json.loads((tmp_path / "idx" / "meta.json").read_text())["built_at"] != built


# ----------------------------------------------------------------------------------- concurrent builds
def test_two_servers_started_at_once_build_the_index_once(tmp_path, fake_web: FakeWeb) -> None:
    """Both start on a fresh corpus large enough that the builds would overlap: one builds, the other
    waits on the lock and loads the finished index (same build time stamp), no folder left behind."""
    generate_corpus(tmp_path / "corpus.jsonl", 20_000, words_per_doc=60, vocab_size=20_000, seed=5)
    cfg = base_config(tmp_path, fake_web, cache={"enabled": False})
    servers = [Server(tmp_path, cfg), Server(tmp_path, cfg)]
    try:
        errors: list[BaseException] = []

        def start(s: Server) -> None:
            try:
                s.start(deadline_s=180)
            except BaseException as e:  # noqa: BLE001 (reported below)
                errors.append(e)

        threads = [threading.Thread(target=start, args=(s,)) for s in servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        built = [httpx.get(s.url + "/health").json()["index_built_at"] for s in servers]
        assert built[0] == built[1]  # one build: a second would have its own time stamp
        for s in servers:
            r = httpx.post(s.url + "/retrieve", json={"query": "anything", "topk": 3})
            assert r.status_code == 200
    finally:
        for s in servers:
            s.stop()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".index", "index"))) == [
        "index",
        "index.lock",
    ]
    meta = json.loads((tmp_path / "index" / "meta.json").read_text())
    assert meta["n_docs"] == 20_000


def test_server_waits_for_a_build_in_progress(tmp_path, fake_web: FakeWeb) -> None:
    """While another process holds the build lock the server does not build or serve; when that build
    lands, the server loads it instead of building its own."""
    from handler.backends.bm25 import _build_into
    from handler.config import Bm25Config
    from handler.index_files import build_atomically, build_lock

    cfg = base_config(tmp_path, fake_web, cache={"enabled": False})
    s = Server(tmp_path, cfg)
    with build_lock(cfg["index_dir"]):
        t = threading.Thread(target=s.start, kwargs={"deadline_s": 120})
        t.start()
        time.sleep(3.0)
        assert s.alive() and not Path(cfg["index_dir"]).exists()
        with pytest.raises(httpx.HTTPError):
            httpx.get(s.url + "/health", timeout=0.5)
        meta = build_atomically(
            cfg["index_dir"], lambda tmp: _build_into(cfg["corpus"], tmp, Bm25Config(), False)
        )
    try:
        t.join(timeout=120)
        assert httpx.get(s.url + "/health").json()["index_built_at"] == meta["built_at"]
        assert "another process is building the index" in s.log()
    finally:
        s.stop()
