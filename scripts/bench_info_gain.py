"""Benchmark per-turn ground-truth log-probs: plain forward vs vectorized (one forward) vs naive.

Usage:
    python scripts/bench_info_gain.py [--device cpu|cuda] [--quick] [--json]

For each configuration (sequence length s, turns T, answer length g) three methods are measured,
each in a fresh subprocess (so peak memory is clean):

* ``plain``: one ordinary forward of the trajectory + its token log-probs (what the old-log-prob
  recompute costs without IGPO);
* ``vectorized``: ONE forward with the T answer copies appended, through the ``igpo_copies``
  attention function, giving the token log-probs AND the T answer log-probs;
* ``naive``: T forwards, one per prefix ``x[:p_t] + copy`` (the reference; LM head only on the
  copy positions, i.e. the naive method at its cheapest).

Prefix ends are spread evenly: ``p_t = round(s·(t + 1)/(T + 1))``; the copy is g tokens with the
gold answer on positions ``[g - 6, g - 1)`` scored (wrapper before, ``</answer>`` after).

Peak memory: on CUDA ``max_memory_allocated`` above the level after model load; on CPU the peak
resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) above the resident set after model
load, one run per subprocess. Times come from one more subprocess per configuration that runs the
three methods interleaved (one warm-up each, then ``--repeats`` rounds) and keeps the minimum, so
that load from other processes on a shared machine biases no method. On CPU the process CPU time
(``*_cpu_ms``, minimum too) is reported beside the wall time: with ``--threads 1`` it is what the
work costs, unaffected by other processes competing for the cores.

Models: on CPU a small Qwen2 (hidden 256, 4 layers, 4 heads / 2 KV heads, MLP 704, vocab 2048,
float32); on CUDA a Qwen2.5-7B-shaped one (hidden 3584, 28 heads / 4 KV heads, MLP 18944, vocab
152064) with ``--layers`` layers (default 4), bfloat16.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the source tree

FIELDS = (
    "seq_len",
    "turns",
    "answer_len",
    "plain_ms",
    "vectorized_ms",
    "naive_ms",
    "plain_peak_mib",
    "vectorized_peak_mib",
    "naive_peak_mib",
)
METHODS = ("plain", "vectorized", "naive")


#: Model shapes (Qwen2 architecture, random weights), shared with ``scripts/gpu_check.py``.
SHAPES: dict[str, dict] = {
    # Qwen2.5-7B's dimensions (the paper's policy); ``layers`` of its 28.
    "qwen2.5-7b": dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_attention_heads=28,
        num_key_value_heads=4,
        rope_theta=1_000_000.0,
    ),
    # The CPU benchmark's small model.
    "cpu-small": dict(
        vocab_size=2048, hidden_size=256, intermediate_size=704, num_attention_heads=4, num_key_value_heads=2
    ),
    # Seconds-sized shapes for CI (GQA kept: 4 heads over 2 KV heads). Weights drawn wider than the
    # default 0.02 so that, as with 7B dims, logits spread by about one nat: prefixes then matter.
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.15,
    ),
}


def model_config(shape: str, layers: int) -> dict:
    """Keyword arguments of ``Qwen2Config`` for one of :data:`SHAPES` with ``layers`` layers."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {sorted(SHAPES)}, got {shape!r}")
    return dict(SHAPES[shape], num_hidden_layers=layers, max_position_embeddings=65536)


def shape_for(device: str) -> str:
    """This benchmark's model shape on ``device``: 7B-shaped on CUDA, small on CPU."""
    return "qwen2.5-7b" if device == "cuda" else "cpu-small"


def build_model(shape: str, layers: int, device, dtype, seed: int = 0):
    """A random-weight Qwen2 causal LM of ``shape`` on ``device`` in eval mode, sdpa attention."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(seed)
    cfg = Qwen2Config(**model_config(shape, layers))
    with torch.device(device):
        return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=dtype).eval()


def make_case(vocab_size: int, s: int, turns: int, answer_len: int, device, seed: int = 0) -> dict:
    """One trajectory of ``s`` random tokens, prefix ends ``p_t = round(s(t+1)/(T+1))``, and a copy of
    ``answer_len`` tokens whose positions ``[g-6, g-1)`` are scored (wrapper before, ``</answer>`` after)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab_size, (s,), generator=gen).to(device)
    pes = [round(s * (t + 1) / (turns + 1)) for t in range(turns)]
    copy = torch.randint(0, vocab_size, (answer_len,), generator=gen).to(device)
    mask = torch.zeros(answer_len, dtype=torch.bool, device=device)
    mask[max(0, answer_len - 6) : answer_len - 1] = True
    return {"x": x, "prefix_ends": pes, "copy": copy, "mask": mask}


def run_method(model, case: dict, method: str):
    """One run of ``method`` on ``case``: ``plain`` (forward + token log-probs), ``vectorized`` (one
    forward with the copies appended) or ``naive`` (a forward per prefix). Returns its log-probs."""
    from igpo.info_gain import answer_logprobs, packed_logprobs_with_copies, token_logprobs

    x = case["x"]
    if method == "plain":
        out = model(input_ids=x[None], use_cache=False)
        return token_logprobs(out.logits[0, :-1], x[1:])
    if method == "vectorized":
        return packed_logprobs_with_copies(
            model, [x], [case["prefix_ends"]], [case["copy"]], [case["mask"]], method="vectorized"
        )
    if method == "naive":
        return answer_logprobs(model, x, case["prefix_ends"], case["copy"], case["mask"], method="naive")
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


# --------------------------------------------------------------------------------------------------
# Worker: one method, one configuration, fresh process
# --------------------------------------------------------------------------------------------------


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(spec: dict) -> dict:
    """``spec["mode"] == "mem"``: one run of ``spec["method"]``, peak memory above the post-load level.
    ``"time"``: all methods interleaved (warm-up, then ``repeats`` rounds), minimum time per method;
    interleaving keeps the comparison fair when other processes share the CPU."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    dev = torch.device(spec["device"])
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    shape = shape_for(dev.type)
    model = build_model(shape, spec["layers"], dev, dtype)
    case = make_case(SHAPES[shape]["vocab_size"], spec["seq_len"], spec["turns"], spec["answer_len"], dev)

    def run(m: str) -> None:
        run_method(model, case, m)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        if spec["mode"] == "time":
            for m in spec["methods"]:
                run(m)  # warm-up
            wall: dict[str, list[float]] = {m: [] for m in spec["methods"]}
            cpu: dict[str, list[float]] = {m: [] for m in spec["methods"]}
            for _ in range(spec["repeats"]):
                for m in spec["methods"]:
                    sync()
                    t0, c0 = time.perf_counter(), time.process_time()
                    run(m)
                    sync()
                    wall[m].append((time.perf_counter() - t0) * 1000)
                    cpu[m].append((time.process_time() - c0) * 1000)
            return {m: {"wall": min(wall[m]), "cpu": min(cpu[m])} for m in spec["methods"]}
        sync()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            reset_ok = _reset_peak_rss()
            base = _rss_kib("VmRSS") if reset_ok else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run(spec["method"])
        sync()
        if dev.type == "cuda":
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            hwm = _rss_kib("VmHWM") if reset_ok else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = (hwm - base) / 1024
    return {"peak_mib": peak}


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = f"{names[0]} ({len(names)} logical cores)" if names else cpu
    except OSError:
        pass
    if device == "cuda":
        import torch

        return f"{torch.cuda.get_device_name(0)}; host {cpu}"
    return cpu


def measure(spec: dict) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    env = dict(os.environ)
    if spec["mode"] == "mem":  # big buffers straight from mmap and back: RSS follows live tensors
        env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        return {"error": (res.stderr or res.stdout).strip().splitlines()[-1:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--quick", action="store_true", help="CPU-sized subset (s = 2048, T = 2/5/10)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--seq-lens", type=int, nargs="*", help="override the sequence lengths")
    ap.add_argument("--turns", type=int, nargs="*", help="override the turn counts")
    ap.add_argument("--answer-len", type=int, default=16)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 2 quick, 3 full)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    if args.quick:
        grid = [(2048, 2), (2048, 5), (2048, 10)]
    else:
        grid = [(s, t) for s in (2048, 8192, 32768) for t in (2, 5, 10)]
    if args.seq_lens or args.turns:
        grid = [(s, t) for s in (args.seq_lens or [2048]) for t in (args.turns or [10])]
    repeats = args.repeats or (2 if args.quick else 3)

    rows = []
    t_start = time.time()
    for s, t in grid:
        row: dict = {"seq_len": s, "turns": t, "answer_len": args.answer_len}
        base = dict(
            device=args.device,
            seq_len=s,
            turns=t,
            answer_len=args.answer_len,
            layers=args.layers,
            threads=args.threads,
        )
        r = measure({**base, "mode": "time", "methods": list(METHODS), "repeats": repeats})
        for m in METHODS:
            row[f"{m}_ms"] = None if "error" in r else round(r[m]["wall"], 1)
        if args.device == "cpu" and "error" not in r:
            for m in METHODS:
                row[f"{m}_cpu_ms"] = round(r[m]["cpu"], 1)
        if "error" in r:
            row["time_error"] = r["error"]
        for m in METHODS:
            r = measure({**base, "mode": "mem", "method": m})
            row[f"{m}_peak_mib"] = None if "error" in r else round(r["peak_mib"], 1)
            if "error" in r:
                row[f"{m}_mem_error"] = r["error"]
        if row["plain_ms"] and row["vectorized_ms"]:
            row["vectorized_over_plain_time"] = round(row["vectorized_ms"] / row["plain_ms"], 3)
        if row["plain_peak_mib"] and row["vectorized_peak_mib"]:
            row["vectorized_over_plain_mem"] = round(row["vectorized_peak_mib"] / row["plain_peak_mib"], 3)
        if row.get("plain_cpu_ms") and row.get("vectorized_cpu_ms"):
            row["vectorized_over_plain_cpu_time"] = round(row["vectorized_cpu_ms"] / row["plain_cpu_ms"], 3)
            row["naive_over_vectorized_cpu_time"] = round(row["naive_cpu_ms"] / row["vectorized_cpu_ms"], 2)
        if row["naive_ms"] and row["vectorized_ms"]:
            row["naive_over_vectorized_time"] = round(row["naive_ms"] / row["vectorized_ms"], 2)
            row["target_T_over_3"] = round(t / 3, 2)
        rows.append(row)
        if not args.json:
            print(json.dumps(row), file=sys.stderr, flush=True)

    import torch

    result = {
        "rows": rows,
        "machine": machine(args.device),
        "device": args.device,
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "model": {
            **model_config(shape_for(args.device), args.layers),
            "dtype": "bfloat16" if args.device == "cuda" else "float32",
        },
        "repeats": repeats,
        "date": datetime.date.today().isoformat(),
        "wall_s": round(time.time() - t_start, 1),
        "command": " ".join(["python", "scripts/bench_info_gain.py", *sys.argv[1:]]),
    }
    if args.json:
        print(json.dumps(result))
        return
    head = [
        "s",
        "T",
        "g",
        "plain ms",
        "vec ms",
        "naive ms",
        "plain MiB",
        "vec MiB",
        "naive MiB",
        "vec/plain t",
        "vec/plain mem",
        "naive/vec t",
    ]
    print(" | ".join(head))
    for r in rows:
        vals = (
            [r["seq_len"], r["turns"], r["answer_len"]]
            + [r.get(f) for f in FIELDS[3:]]
            + [
                r.get("vectorized_over_plain_time"),
                r.get("vectorized_over_plain_mem"),
                r.get("naive_over_vectorized_time"),
            ]
        )
        print(" | ".join(str(v) for v in vals))
    print(f"machine: {result['machine']}; torch {result['torch']}; {result['wall_s']} s")


if __name__ == "__main__":
    main()
