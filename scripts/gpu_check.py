"""One-shot check of the information-gain forward on a GPU node: exactness, speed, memory, attention.

Usage:
    PYTHONPATH=. python scripts/gpu_check.py [--cpu] [--out REPORT.json] [--layers N] [--repeats N]

Needs only torch and transformers (no vLLM, Ray or flash-attn, no network); runs from the source tree.
``bash scripts/gpu_check.sh`` wraps it. Sections (the JSON report is rewritten after each one, so a
run cut short still leaves what it measured):

* **backends** — which ``torch.nn.attention.SDPBackend`` (flash / efficient / cudnn / math) runs the
  two attention calls the copies forward makes (the trajectory: causal, GQA; the copies: a boolean
  mask, GQA) when forced one at a time, and which one torch dispatches to unforced (read from the
  profiler's op names), also inside a real plain and vectorized model forward.
* **exactness** — the vectorized answer log-probs (one forward, copies appended) against the naive
  per-prefix reference (a forward per prefix), on a packed row of 3 trajectories, T ∈ {1, 5, 10},
  in float32 and bfloat16. float32: |vectorized − naive| ≤ 1e-4 nats (the two differ only in the
  summation order of the attention kernels). bfloat16: both methods round differently, so the bound
  is measured, not fixed: 2 × the naive bf16 error against the float32 reference + 2e-3 nats; a
  layout error (a copy seeing a wrong prefix) moves a value by the turn-to-turn spread of the
  log-probs, which is reported beside it as ``signal``.
* **speed** — plain forward (+ token log-probs) vs ONE forward with the T copies vs T forwards, at
  s ∈ {8k, 32k}, T = 10, bfloat16: CUDA-event times (min and median of ``--repeats``) and the peak of
  ``max_memory_allocated`` above the model's own memory. Goal: vectorized/plain ≤ 1.05 in time and
  memory at s = 8k, T = 10 (the paper reports ≤ 0.4 % recompute overhead).

``--cpu``: tiny shapes on the CPU (seconds; what CI runs so this script cannot rot). Default: CUDA,
Qwen2.5-7B dims (hidden 3584, 28 heads / 4 KV heads, MLP 18944, vocab 152064) with ``--layers``
layers (default 4), random weights; about 2-4 minutes on one H100/H200.
Exit status 1 when an exactness check fails; speed goals are reported, not enforced.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the source tree (igpo)
sys.path.insert(0, str(HERE))  # bench_info_gain: model shapes, cases, methods

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_info_gain import SHAPES, build_model, make_case, model_config, run_method  # noqa: E402

from igpo.info_gain import packed_logprobs_with_copies  # noqa: E402

#: Turns of the exactness check and the turn count of the speed rows.
EXACT_TURNS = (1, 5, 10)
SPEED_TURNS = 10
#: Answer copy length (the last 6 tokens before ``</answer>`` scored), as in bench_info_gain.
ANSWER_LEN = 16
FP32_TOL = 1e-4
BF16_SLACK = 2e-3
#: Goal of the issue: vectorized / plain at s = 8k, T = 10, in time and in memory.
GOAL_RATIO = 1.05

#: Per mode: model shape, layers, packed trajectory lengths (exactness), speed lengths, repeats.
MODES = {
    "gpu": dict(
        shape="qwen2.5-7b", layers=4, exact_lens=(1024, 2048, 3072), speed_lens=(8192, 32768), repeats=5
    ),
    "cpu": dict(shape="tiny", layers=2, exact_lens=(32, 48, 64), speed_lens=(128, 256), repeats=2),
}
BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
#: Substrings of the aten ops each SDPA backend runs as (``aten::_scaled_dot_product_<...>``).
BACKEND_OPS = (
    ("flash", "FLASH_ATTENTION"),
    ("efficient", "EFFICIENT_ATTENTION"),
    ("cudnn", "CUDNN_ATTENTION"),
    ("attention_math", "MATH"),
)


# --------------------------------------------------------------------------------------------------
# Device helpers: the only CUDA-specific parts (events, peak memory, synchronize)
# --------------------------------------------------------------------------------------------------


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed_ms(fn: Callable[[], object], dev: torch.device) -> float:
    """Milliseconds of one call of ``fn``: CUDA events on a GPU, ``perf_counter`` on the CPU."""
    if dev.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(dev)
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_mib(fn: Callable[[], object], dev: torch.device) -> float | None:
    """Peak memory of one call of ``fn`` above the level before it, MiB: ``max_memory_allocated`` on
    a GPU; on the CPU the resident-set high-water mark (reset through ``/proc/self/clear_refs``;
    allocator caching makes it coarse), None where the OS offers no reset."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        fn()
        torch.cuda.synchronize(dev)
        return (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = _rss_kib("VmRSS")
    fn()
    hwm = _rss_kib("VmHWM")
    return None if base is None or hwm is None else (hwm - base) / 1024


# --------------------------------------------------------------------------------------------------
# Attention backends
# --------------------------------------------------------------------------------------------------


def dispatched_backends(fn: Callable[[], object]) -> list[str]:
    """SDPA backends ``fn`` ran through, from the aten op names the profiler records."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = {
        e.name for e in prof.events() if "scaled_dot_product" in e.name or "efficient_attention" in e.name
    }
    found = [b for key, b in BACKEND_OPS if any(key in n for n in names)]
    return sorted(set(found), key=[b for _, b in BACKEND_OPS].index)


def attention_calls(cfg: dict, dev: torch.device, dtype: torch.dtype, s: int, c: int) -> dict:
    """The two SDPA calls of ``igpo.info_gain.copy_attention`` at the model's head shapes: the
    trajectory (causal, GQA) and the ``c`` copy tokens (boolean mask over ``s + c`` keys, GQA)."""
    h, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg["hidden_size"] // h
    q = torch.randn(1, h, s + c, d, device=dev, dtype=dtype)
    k = torch.randn(1, kv, s + c, d, device=dev, dtype=dtype)
    mask = torch.ones(c, s + c, dtype=torch.bool, device=dev).tril(diagonal=s)
    gqa = h != kv
    return {
        "trajectory": lambda: F.scaled_dot_product_attention(
            q[:, :, :s], k[:, :, :s], k[:, :, :s], is_causal=True, enable_gqa=gqa
        ),
        "copies": lambda: F.scaled_dot_product_attention(q[:, :, s:], k, k, attn_mask=mask, enable_gqa=gqa),
    }


def check_backends(cfg: dict, dev: torch.device, dtype: torch.dtype, model, case: dict) -> dict:
    """Per call kind: which backends run it when forced alone, and which torch picks unforced."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    calls = attention_calls(cfg, dev, dtype, s=1024, c=SPEED_TURNS * (ANSWER_LEN - 2))
    out: dict = {"dtype": str(dtype).replace("torch.", ""), "calls": {}}
    for kind, fn in calls.items():
        forced = {}
        for name in BACKENDS:
            backend = getattr(SDPBackend, name, None)
            if backend is None:
                forced[name] = "absent in this torch"
                continue
            try:
                with sdpa_kernel([backend]):
                    fn()
                sync(dev)
                forced[name] = "ok"
            except RuntimeError as e:  # torch raises RuntimeError when no kernel fits the inputs
                forced[name] = "no: " + (str(e).strip().splitlines() or ["?"])[0][:160]
        out["calls"][kind] = {"forced": forced, "dispatched": dispatched_backends(fn)}
    with torch.no_grad():
        out["model_forward"] = {
            m: dispatched_backends(lambda m=m: run_method(model, case, m)) for m in ("plain", "vectorized")
        }
    return out


# --------------------------------------------------------------------------------------------------
# Exactness
# --------------------------------------------------------------------------------------------------


def packed_case(vocab: int, lens: tuple[int, ...], turns: int, dev: torch.device) -> dict:
    """Several trajectories (lengths ``lens``) with ``turns`` prefix ends each, to pack in one row."""
    cases = [make_case(vocab, n, turns, ANSWER_LEN, dev, seed=100 * turns + i) for i, n in enumerate(lens)]
    return {k: [c[k] for c in cases] for k in ("x", "prefix_ends", "copy", "mask")}


def answer_lp(model, pc: dict, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(answer log-probs, token log-probs) of a packed case by ``method``, concatenated, float64 CPU."""
    with torch.no_grad():
        tok, ans = packed_logprobs_with_copies(
            model, pc["x"], pc["prefix_ends"], pc["copy"], pc["mask"], method
        )
    return torch.cat(ans).double().cpu(), torch.cat(tok).double().cpu()


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def check_exactness(model, vocab: int, lens: tuple[int, ...], dev: torch.device) -> list[dict]:
    """Vectorized vs naive per T, in float32 then bfloat16 (``model`` is cast in place to bf16).

    float32 rows pass at ``|vec − naive| ≤ FP32_TOL`` for answer and token log-probs; bfloat16 rows
    at ``≤ 2 · |naive_bf16 − naive_fp32| + BF16_SLACK`` (the measured rounding of bf16 itself).
    ``signal`` = largest turn-to-turn change of a trajectory's answer log-prob (what IG is made of)."""
    cases = {t: packed_case(vocab, lens, t, dev) for t in EXACT_TURNS}
    ref = {t: answer_lp(model.float(), pc, "naive") for t, pc in cases.items()}
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        for t, pc in cases.items():
            vec = answer_lp(model, pc, "vectorized")
            nai = ref[t] if dtype == torch.float32 else answer_lp(model, pc, "naive")
            per_seq = vec[0].view(len(lens), t)
            signal = float((per_seq[:, 1:] - per_seq[:, :-1]).abs().max()) if t > 1 else None
            row = {
                "dtype": str(dtype).replace("torch.", ""),
                "turns": t,
                "seq_lens": list(lens),
                "answer_maxdiff": _maxdiff(vec[0], nai[0]),
                "token_maxdiff": _maxdiff(vec[1], nai[1]),
                "signal": signal,
            }
            if dtype == torch.float32:
                row["tolerance"] = FP32_TOL
            else:
                row["naive_bf16_vs_fp32"] = _maxdiff(nai[0], ref[t][0])
                row["vectorized_bf16_vs_fp32"] = _maxdiff(vec[0], ref[t][0])
                row["token_naive_bf16_vs_fp32"] = _maxdiff(nai[1], ref[t][1])
                row["tolerance"] = 2 * row["naive_bf16_vs_fp32"] + BF16_SLACK
                row["token_tolerance"] = 2 * row["token_naive_bf16_vs_fp32"] + BF16_SLACK
            row["ok"] = bool(
                row["answer_maxdiff"] <= row["tolerance"]
                and row["token_maxdiff"] <= row.get("token_tolerance", row["tolerance"])
            )
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------
# Speed and memory
# --------------------------------------------------------------------------------------------------


def measure_speed(model, vocab: int, s: int, dev: torch.device, repeats: int, naive_repeats: int) -> dict:
    """plain / vectorized / naive at length ``s``, T = SPEED_TURNS: one warm-up each, then
    ``repeats`` interleaved rounds (``naive_repeats`` for the T-forward reference); min and median
    times, and one peak-memory run each."""
    case = make_case(vocab, s, SPEED_TURNS, ANSWER_LEN, dev, seed=s)
    methods = ("plain", "vectorized", "naive")
    times: dict[str, list[float]] = {m: [] for m in methods}
    row: dict = {"seq_len": s, "turns": SPEED_TURNS, "answer_len": ANSWER_LEN}
    with torch.no_grad():
        for m in methods:
            run_method(model, case, m)  # warm-up
            sync(dev)
        for r in range(repeats):
            for m in methods:
                if m != "naive" or r < naive_repeats:
                    times[m].append(timed_ms(lambda m=m: run_method(model, case, m), dev))
        for m in methods:
            row[f"{m}_ms_min"] = round(min(times[m]), 2)
            row[f"{m}_ms_median"] = round(statistics.median(times[m]), 2)
            row[f"{m}_runs"] = len(times[m])
            mib = peak_mib(lambda m=m: run_method(model, case, m), dev)
            row[f"{m}_peak_mib"] = None if mib is None else round(mib, 1)
    row["vectorized_over_plain_time"] = round(row["vectorized_ms_min"] / row["plain_ms_min"], 4)
    row["naive_over_vectorized_time"] = round(row["naive_ms_min"] / row["vectorized_ms_min"], 3)
    if row["plain_peak_mib"] and row["vectorized_peak_mib"] is not None:
        row["vectorized_over_plain_mem"] = round(row["vectorized_peak_mib"] / row["plain_peak_mib"], 4)
    row["copy_token_share"] = round(SPEED_TURNS * (ANSWER_LEN - 2) / s, 5)
    return row


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def environment(dev: torch.device) -> dict:
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if dev.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(dev)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(dev)))
        env["cuda"] = torch.version.cuda
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 1)
    return env


def write(report: dict, out: Path | None) -> None:
    if out is None:
        return
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out)


def table(report: dict) -> str:
    """The report as plain-text tables (what ``docs/benchmarks.md`` gets)."""
    lines = [
        f"device: {report['env'].get('gpu', 'cpu')}; torch {report['env']['torch']}; mode {report['mode']}"
    ]
    b = report.get("backends")
    if b:
        lines.append(f"\nattention backends ({b['dtype']}): forced one at a time / dispatched unforced")
        for kind, v in b["calls"].items():
            forced = ", ".join(
                f"{k.split('_')[0].lower()} {'ok' if r == 'ok' else 'no'}" for k, r in v["forced"].items()
            )
            lines.append(f"  {kind:<10} {forced}; dispatched: {', '.join(v['dispatched']) or '?'}")
        for m, v in b["model_forward"].items():
            lines.append(f"  {m} model forward dispatches: {', '.join(v) or '?'}")
    if report.get("exactness"):
        lines.append("\ndtype | T | answer max|vec-naive| | tolerance | token max diff | signal | ok")
        for r in report["exactness"]:
            sig = "-" if r["signal"] is None else f"{r['signal']:.3g}"
            lines.append(
                f"{r['dtype']} | {r['turns']} | {r['answer_maxdiff']:.3g} | {r['tolerance']:.3g} | "
                f"{r['token_maxdiff']:.3g} | {sig} | {r['ok']}"
            )
    if report.get("speed"):
        lines.append(
            "\ns | T | plain ms min/med | vec ms min/med | naive ms min/med | plain MiB | vec MiB | naive MiB"
            " | vec/plain t | vec/plain mem"
        )
        for r in report["speed"]:
            lines.append(
                " | ".join(
                    str(x)
                    for x in (
                        r["seq_len"],
                        r["turns"],
                        f"{r['plain_ms_min']}/{r['plain_ms_median']}",
                        f"{r['vectorized_ms_min']}/{r['vectorized_ms_median']}",
                        f"{r['naive_ms_min']}/{r['naive_ms_median']}",
                        r["plain_peak_mib"],
                        r["vectorized_peak_mib"],
                        r["naive_peak_mib"],
                        r["vectorized_over_plain_time"],
                        r.get("vectorized_over_plain_mem"),
                    )
                )
            )
    if "goal" in report:
        lines.append(f"\ngoal (vec/plain ≤ {GOAL_RATIO} time and memory, s = 8k, T = 10): {report['goal']}")
    lines.append(f"exactness ok: {report.get('exactness_ok')}; wall {report.get('wall_s')} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="tiny shapes on the CPU (seconds; CI)")
    ap.add_argument("--out", type=Path, help="write the JSON report here")
    ap.add_argument("--layers", type=int, help="decoder layers (default: 4 on GPU, 2 with --cpu)")
    ap.add_argument("--repeats", type=int, help="timed rounds per method (default 5 GPU, 2 CPU)")
    ap.add_argument("--seq-lens", type=int, nargs="+", help="speed lengths (default 8192 32768)")
    args = ap.parse_args(argv)
    mode = "cpu" if args.cpu else "gpu"
    spec = dict(MODES[mode])
    if mode == "gpu" and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device visible (torch.cuda.is_available() is False); use --cpu",
            file=sys.stderr,
        )
        return 2
    for name, v in (("--layers", args.layers), ("--repeats", args.repeats)):
        if v is not None and v < 1:
            print(f"gpu_check: {name} must be >= 1, got {v}", file=sys.stderr)
            return 2
    spec["layers"] = args.layers or spec["layers"]
    spec["repeats"] = args.repeats or spec["repeats"]
    if args.seq_lens:
        bad = [s for s in args.seq_lens if s < 2 * SPEED_TURNS + 2]
        if bad:
            print(f"gpu_check: --seq-lens must be >= {2 * SPEED_TURNS + 2}, got {bad}", file=sys.stderr)
            return 2
        spec["speed_lens"] = tuple(args.seq_lens)
    dev = torch.device("cuda" if mode == "gpu" else "cpu")
    t0 = time.perf_counter()
    report: dict = {
        "mode": mode,
        "command": " ".join(["scripts/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
        "env": environment(dev),
        "model": {"shape": spec["shape"], **model_config(spec["shape"], spec["layers"])},
        "tolerances": {"fp32": FP32_TOL, "bf16": f"2 * |naive_bf16 - naive_fp32| + {BF16_SLACK}"},
    }
    vocab = SHAPES[spec["shape"]]["vocab_size"]
    model = build_model(spec["shape"], spec["layers"], dev, torch.float32)

    def section(name: str, value) -> None:
        report[name] = value
        report["wall_s"] = round(time.perf_counter() - t0, 1)
        write(report, args.out)
        print(f"[gpu_check] {name} done at {report['wall_s']} s", file=sys.stderr, flush=True)

    section("exactness", check_exactness(model, vocab, spec["exact_lens"], dev))  # leaves the model in bf16
    report["exactness_ok"] = all(r["ok"] for r in report["exactness"])
    small = make_case(vocab, 256, SPEED_TURNS, ANSWER_LEN, dev)
    section("backends", check_backends(model_config(spec["shape"], 1), dev, torch.bfloat16, model, small))
    speed = []
    for s in spec["speed_lens"]:
        naive_repeats = spec["repeats"] if s <= 8192 else min(2, spec["repeats"])
        speed.append(measure_speed(model, vocab, s, dev, spec["repeats"], naive_repeats))
        section("speed", speed)
    at8k = [r for r in speed if r["seq_len"] == 8192]
    if at8k:
        r = at8k[0]
        report["goal"] = {
            "time_ratio": r["vectorized_over_plain_time"],
            "mem_ratio": r.get("vectorized_over_plain_mem"),
            "met": bool(
                r["vectorized_over_plain_time"] <= GOAL_RATIO
                and (r.get("vectorized_over_plain_mem") or float("inf")) <= GOAL_RATIO
            ),
        }
    section("speed", speed)
    print(table(report))
    return 0 if report["exactness_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
