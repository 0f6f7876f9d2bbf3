"""Benchmark the search handler: index build time and size, batched /retrieve throughput and latency.

For each corpus size: generate a synthetic wiki-18-style corpus (Zipf words), build the BM25 index
with ``python -m handler index`` (an up-to-date index in ``--workdir`` is reused unless ``--rebuild``),
start ``python -m handler serve`` on loopback, and send batches of 32 queries from several concurrent
clients, first uncached (every query new), then cached (the same queries again). Prints one JSON object.

    python scripts/bench_handler.py --json                       # 100k and 1M passages
    python scripts/bench_handler.py --sizes 100000 --json
    python scripts/bench_handler.py --quick --json               # 20k passages, fewer queries
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from handler.backends.bm25 import index_is_current  # noqa: E402
from handler.config import load_config  # noqa: E402
from handler.corpus import generate_corpus, sample_queries  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != "cache.sqlite")


async def _run_load(
    url: str, queries: list[str], batch: int, concurrency: int, topk: int
) -> dict[str, float]:
    batches = [queries[i : i + batch] for i in range(0, len(queries), batch)]
    lat: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        it = iter(batches)

        async def worker() -> None:
            nonlocal errors
            for b in it:
                t0 = time.perf_counter()
                r = await client.post(
                    url + "/retrieve", json={"queries": b, "topk": topk, "return_scores": True}
                )
                lat.append(time.perf_counter() - t0)
                if r.status_code != 200 or len(r.json()["result"]) != len(b):
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    arr = np.array(lat) * 1000
    return {
        "queries": len(queries),
        "batches": len(batches),
        "queries_per_s": round(len(queries) / wall, 1),
        "batch_p50_ms": round(float(np.percentile(arr, 50)), 2),
        "batch_p99_ms": round(float(np.percentile(arr, 99)), 2),
        "errors": errors,
    }


def bench_size(
    n_docs: int,
    work: Path,
    n_queries: int,
    workers: int,
    concurrency: int,
    topk: int,
    keep: bool,
    rebuild: bool = False,
) -> dict[str, object]:
    corpus = work / f"corpus_{n_docs}.jsonl"
    t0 = time.time()
    if not corpus.exists():
        generate_corpus(corpus, n_docs)
    gen_s = time.time() - t0
    index = work / f"index_{n_docs}"
    t0 = time.time()
    build_s: float | None = None
    if rebuild or not index_is_current(index, corpus, load_config(REPO / "configs/handler.yaml").bm25):
        subprocess.run(
            [sys.executable, "-m", "handler", "index", str(corpus), "--out", str(index)],
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        build_s = round(time.time() - t0, 1)
    queries = sample_queries(corpus, n_queries, seed=n_docs)
    port = _free_port()
    cache = work / f"cache_{n_docs}.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(str(cache) + suffix).unlink(missing_ok=True)
    log = open(work / f"serve_{n_docs}.log", "w")
    t_start = time.time()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "handler",
            "serve",
            "--index-dir",
            str(index),
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--cache",
            str(cache),
            "--log-level",
            "warning",
            "--config",
            str(REPO / "configs/handler.yaml"),
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {(work / f'serve_{n_docs}.log').read_text()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        startup_s = time.time() - t_start
        warm = sample_queries(corpus, 64, seed=n_docs + 7)
        asyncio.run(_run_load(url, warm, 32, concurrency, topk))  # page in the index, open connections
        uncached = asyncio.run(_run_load(url, queries, 32, concurrency, topk))
        cached = asyncio.run(_run_load(url, queries, 32, concurrency, topk))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    out = {
        "passages": n_docs,
        "corpus_mb": round(corpus.stat().st_size / 1e6, 1),
        "generate_s": round(gen_s, 1),
        "index_build_s": build_s,  # None: an up-to-date index in --workdir was reused
        "index_mb": round(_dir_size(index) / 1e6, 1),
        "server_startup_s": round(startup_s, 2),
        "uncached": uncached,
        "cached": cached,
    }
    if not keep:
        shutil.rmtree(index, ignore_errors=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated corpus sizes (passages)")
    p.add_argument("--queries", type=int, default=3200, help="distinct queries per size (batches of 32)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server worker processes")
    p.add_argument("--concurrency", type=int, default=4, help="concurrent client connections")
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--workdir", help="keep corpora/indexes here (default: a temp dir, removed)")
    p.add_argument("--quick", action="store_true", help="20k passages, 640 queries")
    p.add_argument(
        "--rebuild", action="store_true", help="rebuild indexes even when --workdir has current ones"
    )
    p.add_argument("--json", action="store_true", help="print JSON only")
    args = p.parse_args()
    sizes = [20_000] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    n_queries = 640 if args.quick else args.queries
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_handler_"))
    work.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
        },
        "settings": {
            "batch": 32,
            "topk": args.topk,
            "server_workers": args.workers,
            "client_concurrency": args.concurrency,
            "queries_per_size": n_queries,
        },
        "runs": [],
    }
    try:
        for n in sizes:
            r = bench_size(
                n,
                work,
                n_queries,
                args.workers,
                args.concurrency,
                args.topk,
                keep=bool(args.workdir),
                rebuild=args.rebuild,
            )
            results["runs"].append(r)
            if not args.json:
                print(json.dumps(r), file=sys.stderr)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
