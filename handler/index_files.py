"""Index directories on disk: atomic, locked builds and loading that names a damaged file.

A build writes into a fresh hidden folder next to the target (``.NAME.build-*``) and renames it into
place only when complete, so a reader never sees half an index. Builds of one directory are
serialized by a file lock (``NAME.lock`` beside it): a second server started at the same time on a
fresh corpus waits for the first build, then finds the index current and loads it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

log = logging.getLogger("handler.index")


class IndexDamaged(ValueError):
    """A file of an index directory cannot be read; the message names it and says how to rebuild."""


def rebuild_hint(index_dir: str | Path, corpus: str | Path | None = None) -> str:
    """The command that deletes and rebuilds the index in ``index_dir``."""
    return f"python -m handler index {corpus or 'CORPUS.jsonl'} --out {index_dir} --rebuild"


def damaged(path: str | Path, problem: str, corpus: str | Path | None = None) -> IndexDamaged:
    """An ``IndexDamaged`` naming ``path`` (a file inside the index directory) and the rebuild command."""
    path = Path(path)
    return IndexDamaged(
        f"index file {str(path)!r} {problem}: the index is damaged; rebuild it with "
        f"`{rebuild_hint(path.parent, corpus)}`"
    )


def read_meta(index_dir: str | Path, corpus: str | Path | None = None) -> dict[str, Any] | None:
    """``meta.json`` of an index directory as a dict; None if there is none; ``IndexDamaged`` if unreadable."""
    path = Path(index_dir) / "meta.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_bytes())
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise damaged(path, f"is not valid JSON ({e})", corpus) from None
    if not isinstance(meta, dict):
        raise damaged(path, f"holds a JSON {type(meta).__name__}, not an object", corpus)
    return meta


def read_json(path: str | Path, corpus: str | Path | None = None) -> Any:
    """A JSON file of an index (the vocabulary), or ``IndexDamaged`` naming it."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise damaged(path, "is missing", corpus) from None
    except (ValueError, OSError) as e:
        raise damaged(path, f"is not valid JSON ({e})", corpus) from None


def load_npy(path: str | Path, corpus: str | Path | None = None) -> np.ndarray:
    """A memory-mapped ``.npy`` array of an index; ``IndexDamaged`` if it is missing, garbage or truncated.

    Mapping reads only the header, and refuses a file shorter than the header says."""
    try:
        return np.asarray(np.load(path, mmap_mode="r", allow_pickle=False))
    except FileNotFoundError:
        raise damaged(path, "is missing", corpus) from None
    except (ValueError, OSError, EOFError) as e:
        raise damaged(path, f"is not a readable .npy array, or is cut short ({e})", corpus) from None


def check_offsets(
    path: str | Path, offsets: np.ndarray, blob_len: int, corpus: str | Path | None = None
) -> None:
    """An offsets array must be 1-D, start at 0 and end at the length of the blob it indexes."""
    if offsets.ndim != 1 or len(offsets) == 0 or int(offsets[0]) != 0 or int(offsets[-1]) != blob_len:
        raise damaged(path, f"does not match its data ({blob_len} bytes)", corpus)


@contextmanager
def build_lock(index_dir: str | Path) -> Iterator[None]:
    """Hold the build lock of ``index_dir`` (``NAME.lock`` beside it), logging while waiting for it."""
    index_dir = Path(index_dir)
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(index_dir.with_name(index_dir.name + ".lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("another process is building the index %s; waiting for it", index_dir)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def build_atomically(out_dir: str | Path, write: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Run ``write(tmp)`` on a fresh folder next to ``out_dir``, then move it into place; return its meta.

    The caller holds ``build_lock(out_dir)``. A failed or interrupted build leaves nothing behind;
    leftovers of a killed build are removed first.
    """
    out_dir = Path(out_dir)
    parent, name = out_dir.parent, out_dir.name
    parent.mkdir(parents=True, exist_ok=True)
    for stale in [*parent.glob(f".{name}.build-*"), *parent.glob(f".{name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=parent))
    try:
        meta = write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out_dir.exists() or out_dir.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent))
        os.replace(out_dir, old / name)  # servers still mapping the old files keep them until they exit
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return meta


def ensure_index(
    index_dir: str | Path,
    is_current: Callable[[], bool],
    build: Callable[[Path], dict[str, Any]],
    check: Callable[[], None],
    before_build: Callable[[], None] | None = None,
    rebuild: bool = False,
    what: str = "index",
) -> dict[str, Any] | None:
    """Under the build lock: reuse a current index (``check`` must pass) or build a fresh one.

    Returns the new meta, or None when the existing index was reused. ``before_build`` may refuse the
    build (no corpus) before it is announced. ``rebuild`` skips the reuse test (and so also replaces a
    damaged index)."""
    with build_lock(index_dir):
        if not rebuild and is_current():
            check()
            log.info("reusing %s %s", what, index_dir)
            return None
        if before_build is not None:
            before_build()
        log.info("building %s into %s", what, index_dir)
        return build_atomically(index_dir, build)
