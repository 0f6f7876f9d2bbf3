"""Learning benchmark: IGPO vs GRPO vs IG only (and options) on a named grid of task variants, 5 seeds.

Usage::

    python scripts/bench_learning.py [--grid full|quick] [--variants a,b] [--arms IGPO,GRPO]
        [--seeds 0,1,2,3,4] [--jobs 2] [--out outputs/bench_learning] [key=value ...]

Each *variant* is a set of overrides of ``configs/local.yaml`` (the task and its teacher's noise), each
*arm* a reward mode (plus options); ``key=value`` arguments apply to every run. Per variant one warm-up
(task, index, warmed policy) serves every arm and seed, so paired runs (same seed, different arm) start
from the same policy and see the same questions at every step. Every run records per step the sampled
train F1, the advantage-collapse diagnostics (``igpo/outcome_tie_group_share``,
``igpo/uninformative_group_share``, the run's own zero-advantage share), credit assignment
(``igpo/credit_gold_turn_positive_share``), the update tokens, and at each evaluation the test F1 and the
gold answer's log-prob before and after the search (``eval/gt_logprob_*``, Fig. 5); see docs/metrics.md.

Written under ``--out``: one folder per run (kept: a rerun skips runs that finished), ``bench_learning.json``
(every curve and the summary), one PNG per variant (mean curve with min-max seed band, F1 against
update tokens, collapse, credit) and the paired comparison of every arm with GRPO per seed: the
difference of mean train F1 over fixed step windows and of final test F1, with a percentile-bootstrap
95% interval over seeds and an exact two-sided sign test.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from igpo.local.train import DEFAULT_CONFIG

#: task variants: overrides of configs/local.yaml (the pilots behind them: docs/benchmarks.md)
VARIANTS: dict[str, list[str]] = {
    # the embedded default: 1-3 hops, the teacher stops early half of the time
    "default": [],
    # compound difficulty: unreliable answer step and unreliable search depth
    "compound": ["p_answer=0.5", "p_search=0.3"],
    # 3-hop questions only, the teacher rarely searches to the end
    "3hop": ["hops=[3]", "p_search=0.3"],
    # the same with a noisy answer step: the pilot where IGPO lost
    "3hop-noisy": ["hops=[3]", "p_search=0.3", "p_answer=0.7"],
}

#: arms: a reward mode and options; "IGPO" is the paper's method, "IGPO tol" zeroes near-tied IG
ARMS: dict[str, list[str]] = {
    "IGPO": ["reward_mode=f1+ig"],
    "GRPO": ["reward_mode=f1"],
    "IG only": ["reward_mode=ig"],
    "IGPO tol": ["reward_mode=f1+ig", "ig_tol=0.05"],
}

#: the grid each --grid runs: variants, arms, seeds, extra overrides, and the arms run only on some variants
GRIDS: dict[str, dict] = {
    "full": {
        "variants": list(VARIANTS),
        "arms": ["IGPO", "GRPO", "IG only", "IGPO tol"],
        "seeds": [0, 1, 2, 3, 4],
        # 65 runs of 20 steps: about an hour on the 2-core machine, two runs at a time
        "overrides": ["steps=20", "eval_every=20", "eval_size=100"],
        # the option is measured where IGPO lost in the pilots
        "only": {"IGPO tol": ["3hop-noisy"]},
    },
    "quick": {
        "variants": ["default", "3hop-noisy"],
        "arms": ["IGPO", "GRPO"],
        "seeds": [0, 1],
        "overrides": ["steps=12", "eval_every=12", "eval_size=50"],
        "only": {},
    },
}

#: step windows (1-based, inclusive) of the paired comparison of mean train F1
WINDOWS = ((1, 10), (11, 20), (21, 30))


def smooth(x: list[float], k: int = 5) -> np.ndarray:
    """Trailing moving average (window k) of a curve, same length."""
    a = np.asarray(x, dtype=float)
    c = np.cumsum(np.insert(a, 0, 0.0))
    n = np.minimum(np.arange(1, len(a) + 1), k)
    return (c[1:] - c[np.maximum(np.arange(1, len(a) + 1) - k, 0)]) / n


def steps_to_reach(curve: np.ndarray, target: float) -> int | None:
    """First step (1-based) at which ``curve`` reaches ``target``; None if never."""
    hit = np.nonzero(curve >= target - 1e-12)[0]
    return int(hit[0]) + 1 if hit.size else None


def summarize(results: dict[str, dict[int, dict]], k: int = 5) -> dict:
    """Does IGPO learn faster: its steps to GRPO's final (smoothed) F1 and the zero-advantage ratio."""
    out: dict = {}
    if "f1" in results and "f1+ig" in results:
        seeds = sorted(set(results["f1"]) & set(results["f1+ig"]))
        g = np.mean([smooth(results["f1"][s]["train_f1"], k) for s in seeds], axis=0)
        i = np.mean([smooth(results["f1+ig"][s]["train_f1"], k) for s in seeds], axis=0)
        target = float(g[-1])
        reach = steps_to_reach(i, target)
        out["grpo_first_f1_smoothed"] = float(g[min(k, len(g)) - 1])
        out["grpo_final_f1_smoothed"] = target
        out["igpo_steps_to_grpo_final"] = reach
        out["igpo_steps_share_of_grpo"] = None if reach is None else reach / len(g)
        z_g = np.mean([np.mean(results["f1"][s]["zero_adv_share"]) for s in seeds])
        z_i = np.mean([np.mean(results["f1+ig"][s]["zero_adv_share"]) for s in seeds])
        out["zero_adv_share_grpo"] = float(z_g)
        out["zero_adv_share_igpo"] = float(z_i)
        out["zero_adv_ratio_igpo_over_grpo"] = None if z_g == 0 else float(z_i / z_g)
        if target <= out["grpo_first_f1_smoothed"]:
            # GRPO did not improve: "steps to reach GRPO's final F1" is then trivially small and says nothing
            out["goal_met"] = None
            out["goal_note"] = (
                "GRPO's smoothed F1 did not rise over the run; the step comparison is undefined"
            )
        else:
            out["goal_met"] = bool(
                reach is not None and reach <= 0.6 * len(g) and (z_g == 0 or z_i <= 0.5 * z_g)
            )
    return out


def window_means(curve: list[float], windows=WINDOWS) -> dict[str, float]:
    """Mean of ``curve`` over each 1-based inclusive step window that lies within it, keyed ``"a-b"``."""
    out = {}
    for a, b in windows:
        if b <= len(curve):
            out[f"{a}-{b}"] = float(np.mean(curve[a - 1 : b]))
    return out


def sign_test_p(diffs: list[float], tol: float = 1e-12) -> float:
    """Exact two-sided sign test of median 0 (ties dropped); 1.0 when every difference is a tie."""
    pos = sum(d > tol for d in diffs)
    neg = sum(d < -tol for d in diffs)
    n = pos + neg
    if n == 0:
        return 1.0
    k = min(pos, neg)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return float(min(1.0, 2 * tail))


def paired_stats(diffs: list[float], n_boot: int = 10_000, seed: int = 0) -> dict:
    """Mean of per-seed differences, its percentile-bootstrap 95% interval, wins/losses and sign-test p."""
    d = np.asarray(diffs, dtype=float)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    return {
        "mean": float(d.mean()),
        "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
        "wins": int((d > 1e-12).sum()),
        "losses": int((d < -1e-12).sum()),
        "sign_p": sign_test_p(list(d)),
        "per_seed": [float(x) for x in d],
    }


def compare(runs: dict[str, dict[int, dict]], base: str = "GRPO") -> dict[str, dict]:
    """Paired per-seed comparison of every arm with ``base``: train-F1 windows and final test F1."""
    out: dict[str, dict] = {}
    if base not in runs:
        return out
    for arm, by_seed in runs.items():
        if arm == base:
            continue
        seeds = sorted(set(by_seed) & set(runs[base]))
        if not seeds:
            continue
        res: dict[str, dict] = {}
        mine = [window_means(by_seed[s]["train_f1"]) for s in seeds]
        theirs = [window_means(runs[base][s]["train_f1"]) for s in seeds]
        for w in mine[0]:
            res[f"train_f1_steps_{w}"] = paired_stats(
                [m[w] - t[w] for m, t in zip(mine, theirs, strict=True)]
            )
        finals = [(final_test(by_seed[s]), final_test(runs[base][s])) for s in seeds]
        if all(a is not None and b is not None for a, b in finals):
            res["test_f1_final"] = paired_stats([a - b for a, b in finals])
        out[f"{arm} - {base}"] = res
    return out


def final_test(run: dict) -> float | None:
    """Test F1 at the last evaluated step of a run."""
    t = run.get("test_f1") or {}
    return float(t[max(t, key=int)]) if t else None


def run_result(metrics_path: Path, wall_s: float) -> dict:
    """The per-step curves a run's ``metrics.jsonl`` holds (the fields the summary and the plots read)."""
    rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    train = [r for r in rows if "igpo/outcome_f1_mean" in r]
    evals = [r for r in rows if "eval/f1" in r]

    def col(key: str) -> list[float]:
        return [math.nan if r.get(key) is None else float(r[key]) for r in train]  # NaN is logged as null

    return {
        "train_f1": col("igpo/outcome_f1_mean"),
        "zero_adv_share": col("igpo/zero_adv_group_share_igpo"),  # the run's own estimator, whatever its mode
        "outcome_tie_share": col("igpo/outcome_tie_group_share"),
        "uninformative_share": col("igpo/uninformative_group_share"),
        "credit_share": col("igpo/credit_gold_turn_positive_share"),
        "credit_count": col("igpo/credit_gold_turn_count"),
        "ig_std": col("igpo/ig_std"),
        "format_failure": col("igpo/format_failure_rate"),
        "tokens": col("tokens/update"),
        "test_f1": {str(r["step"]): r["eval/f1"] for r in evals},
        "test_f1_by_hops": {
            str(r["step"]): {
                k.removeprefix("eval/f1_hops"): v for k, v in r.items() if k.startswith("eval/f1_hops")
            }
            for r in evals
        },
        "eval_gt": {
            str(r["step"]): {
                k: math.nan if r.get(f"eval/gt_logprob_{k}") is None else r[f"eval/gt_logprob_{k}"]
                for k in ("turn0", "last", "gain")
            }
            for r in evals
        },
        "wall_s": wall_s,
    }


def _config(overrides: list[str], out: Path, experiment: str):
    from igpo.local.engine import load_config

    return load_config(
        DEFAULT_CONFIG,
        [
            *overrides,
            f"out_root={out}",
            f"experiment={experiment}",
            "progress=false",
            "tensorboard=false",
            "resume=false",
            "save_every=100000",
        ],
    )


def _quiet_log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def warm_variant(overrides: list[str], out: Path) -> str:
    """Build a variant's task, index and warmed-up policy once (under ``out/warm``); returns the folder."""
    torch_threads()
    from igpo.local.engine import LocalEngine

    cfg = _config([*overrides, "seed=0"], out, "warm")
    if (cfg.out_dir / "policy_warm" / "config.json").exists():
        return str(cfg.out_dir)
    engine = LocalEngine(cfg, log=_quiet_log)
    try:
        engine.prepare_task()
        engine.start_handler()
        engine.build_policy()
    finally:
        engine.close()
    return str(cfg.out_dir)


def run_arm(overrides: list[str], out: Path, experiment: str, warm: Path, train: bool = True) -> dict | None:
    """One training run from the variant's warm folder; reuses a finished run's ``bench_result.json``
    (``train=False``: only that, None if the run has not finished)."""
    torch_threads()
    from igpo.local.train import run

    cfg = _config(overrides, out, experiment)
    done = cfg.out_dir / "bench_result.json"
    if done.exists():
        res = json.loads(done.read_text())
        if res.get("overrides") == overrides:  # the same run: reuse it
            return res
    if not train:
        return None
    if cfg.out_dir.exists():  # an interrupted run: start it over
        shutil.rmtree(cfg.out_dir)
    shutil.copytree(warm / "data", cfg.out_dir / "data")
    shutil.copytree(warm / "policy_warm", cfg.out_dir / "policy_warm")
    t0 = time.perf_counter()
    _quiet_log(f"[bench_learning] {experiment} ...")
    run(cfg, log=lambda *a: None)
    res = run_result(cfg.out_dir / "metrics.jsonl", time.perf_counter() - t0)
    res["overrides"] = overrides
    done.write_text(json.dumps(res))
    _quiet_log(
        f"[bench_learning] {experiment}: {res['wall_s']:.0f} s, train F1 last 5 {np.mean(res['train_f1'][-5:]):.3f}"
    )
    return res


def torch_threads() -> None:
    """One intra-op thread per run: the tiny policy gains nothing from more, and runs go in parallel."""
    import torch

    torch.set_num_threads(int(os.environ.get("IGPO_BENCH_THREADS", "1")))


ARM_COLORS = {"IGPO": "C0", "GRPO": "C1", "IG only": "C2", "IGPO tol": "C3"}


def plot_variant(name: str, runs: dict[str, dict[int, dict]], path: Path, k: int = 5) -> None:
    """Four panels: smoothed train F1 per step (mean, min-max band over seeds), F1 against cumulative
    update tokens (Fig. 6), advantage collapse (outcome ties dashed, uninformative groups solid), credit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(15, 3.4))
    for arm, by_seed in runs.items():
        c = ARM_COLORS.get(arm)
        f1 = np.array([smooth(r["train_f1"], k) for r in by_seed.values()])
        x = np.arange(1, f1.shape[1] + 1)
        lab = f"{arm} ({len(by_seed)} seeds)"
        ax[0].plot(x, f1.mean(0), color=c, label=lab)
        ax[0].fill_between(x, f1.min(0), f1.max(0), color=c, alpha=0.15)
        tok = np.array([np.cumsum(r["tokens"]) for r in by_seed.values()]).mean(0)
        ax[1].plot(tok / 1e3, f1.mean(0), color=c, label=arm)
        tie = np.array([smooth(r["outcome_tie_share"], k) for r in by_seed.values()]).mean(0)
        uninf = np.array([smooth(r["uninformative_share"], k) for r in by_seed.values()]).mean(0)
        ax[2].plot(x, tie, color=c, ls="--")
        ax[2].plot(x, uninf, color=c, label=arm)
        # pooled over seeds, weighted by how many rollouts each share is over, then a NaN-aware moving sum
        cr = np.nan_to_num(np.array([r["credit_share"] for r in by_seed.values()], dtype=float))
        cn = np.array([r["credit_count"] for r in by_seed.values()], dtype=float)
        pos, cnt = smooth(list((cr * cn).sum(0)), k), smooth(list(cn.sum(0)), k)
        ax[3].plot(x, np.where(cnt > 0, pos / np.maximum(cnt, 1e-12), np.nan), color=c, label=arm)

    ax[0].set(xlabel="step", ylabel=f"train F1 (moving avg {k})", title=f"{name}: F1")
    ax[1].set(xlabel="update tokens (thousands)", ylabel="train F1", title="F1 vs tokens")
    ax[2].set(
        xlabel="step", ylabel="share of groups", title="outcome ties (--), uninformative (-)", ylim=(0, 1)
    )
    ax[3].set(xlabel="step", ylabel="share", title="wrong rollouts: gold turn credited", ylim=(0, 1))
    for a in ax:
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def variant_summary(runs: dict[str, dict[int, dict]]) -> dict:
    """Per arm the means over seeds of every diagnostic; then the paired comparisons with GRPO."""
    per_arm = {}
    for arm, by_seed in runs.items():
        rs = list(by_seed.values())

        def m(key: str, rs=rs) -> float:
            return float(np.nanmean([np.nanmean(r[key]) if len(r[key]) else np.nan for r in rs]))

        first = min(rs[0]["eval_gt"], key=int) if rs[0]["eval_gt"] else None
        last = max(rs[0]["eval_gt"], key=int) if rs[0]["eval_gt"] else None
        per_arm[arm] = {
            "seeds": sorted(by_seed),
            "train_f1_windows": {
                w: float(np.mean([window_means(r["train_f1"])[w] for r in rs]))
                for w in window_means(rs[0]["train_f1"])
            },
            "test_f1_first": float(np.mean([r["test_f1"][first] for r in rs])) if first else None,
            "test_f1_final": float(np.mean([final_test(r) for r in rs])) if first else None,
            "outcome_tie_share": m("outcome_tie_share"),
            "uninformative_share": m("uninformative_share"),
            "zero_adv_share_own": m("zero_adv_share"),
            "credit_share": m("credit_share"),
            "update_tokens": float(np.mean([sum(r["tokens"]) for r in rs])),
            "eval_gt_gain_first": float(np.nanmean([r["eval_gt"][first]["gain"] for r in rs]))
            if first
            else None,
            "eval_gt_gain_final": float(np.nanmean([r["eval_gt"][last]["gain"] for r in rs]))
            if last
            else None,
            "wall_s_mean": float(np.mean([r["wall_s"] for r in rs])),
        }
    out = {"arms": per_arm, "paired": compare(runs)}
    if "GRPO" in runs and "IGPO" in runs:
        out["igpo_vs_grpo_steps"] = summarize({"f1": runs["GRPO"], "f1+ig": runs["IGPO"]})
    return out


def _f(x: float | None, nd: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def markdown(report: dict) -> str:
    """The docs' tables: per variant the arms' means over seeds, then the paired differences with GRPO."""
    lines = []
    for v, summ in report["summary"].items():
        arms = summ["arms"]
        windows = list(next(iter(arms.values()))["train_f1_windows"])
        lines += [
            f"**{v}** (`{' '.join(report['variants'][v]) or 'configs/local.yaml'}`)",
            "",
            "| arm | seeds | "
            + " | ".join(f"train F1 {w}" for w in windows)
            + " | test F1 start → end | outcome ties | uninformative | zero-adv (own) | credit | gold lp gain start → end"
            " | update tokens |",
            "|---|---:|" + "---:|" * len(windows) + "---|---:|---:|---:|---:|---|---:|",
        ]
        for arm, a in arms.items():
            lines.append(
                f"| {arm} | {len(a['seeds'])} | "
                + " | ".join(_f(a["train_f1_windows"][w], 3) for w in windows)
                + f" | {_f(a['test_f1_first'])} → {_f(a['test_f1_final'])} | {_f(a['outcome_tie_share'])}"
                f" | {_f(a['uninformative_share'])} | {_f(a['zero_adv_share_own'])} | {_f(a['credit_share'])}"
                f" | {_f(a['eval_gt_gain_first'])} → {_f(a['eval_gt_gain_final'])} | {a['update_tokens']:,.0f} |"
            )
        lines.append("")
        for pair, res in summ["paired"].items():
            cells = []
            for k, st in res.items():
                label = k.replace("train_f1_steps_", "train F1 ").replace("test_f1_final", "final test F1")
                cells.append(
                    f"{label}: **{st['mean']:+.3f}** [{st['ci95'][0]:+.3f}, {st['ci95'][1]:+.3f}], "
                    f"{st['wins']}–{st['losses']}, p = {st['sign_p']:.2f}"
                )
            lines.append(f"- {pair}: " + "; ".join(cells))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", choices=sorted(GRIDS), default="full")
    ap.add_argument("--variants", help=f"comma-separated, from {list(VARIANTS)} (default: the grid's)")
    ap.add_argument("--arms", help=f"comma-separated, from {list(ARMS)} (default: the grid's)")
    ap.add_argument("--seeds", help="comma-separated integers (default: the grid's)")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel, one torch thread each (default 2)")
    ap.add_argument("--out", default="outputs/bench_learning")
    ap.add_argument("--json", action="store_true", help="print the whole result JSON on stdout")
    ap.add_argument(
        "--markdown", action="store_true", help="print the docs' tables instead of the summary JSON"
    )
    ap.add_argument(
        "--report-only", action="store_true", help="summarize the runs that finished; start no new one"
    )
    ap.add_argument("overrides", nargs="*", help="key=value overrides of configs/local.yaml for every run")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)  # nan-means over steps without a credit-assignment case
    grid = GRIDS[args.grid]
    variants = args.variants.split(",") if args.variants else grid["variants"]
    arms = args.arms.split(",") if args.arms else grid["arms"]
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else grid["seeds"]
    except ValueError:
        ap.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    for flag, got, known in (("--variants", variants, VARIANTS), ("--arms", arms, ARMS)):
        bad = [x for x in got if x not in known]
        if bad:
            ap.error(f"{flag}: unknown {bad}; choose from {list(known)}")
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    out = Path(args.out)
    common = [*grid["overrides"], *args.overrides]
    cells = [(v, a) for v in variants for a in arms if v in grid["only"].get(a, variants)]
    t0 = time.perf_counter()
    results: dict[str, dict[str, dict[int, dict]]] = {
        v: {a: {} for vv, a in cells if vv == v} for v in variants
    }
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        warm = {v: pool.submit(warm_variant, [*common, *VARIANTS[v]], out / v) for v in variants}
        warm_dirs = {v: Path(f.result()) for v, f in warm.items()}
        futures = {}
        for seed in seeds:  # seed-major: a grid cut short still has balanced, paired seeds
            for v in variants:
                for arm in results[v]:
                    name = f"{arm.replace(' ', '_')}-seed{seed}"
                    over = [*common, *VARIANTS[v], *ARMS[arm], f"seed={seed}"]
                    futures[(v, arm, seed)] = pool.submit(
                        run_arm, over, out / v, name, warm_dirs[v], not args.report_only
                    )
        failed = []
        for (v, arm, seed), f in futures.items():
            try:
                r = f.result()
            except Exception as e:  # one broken run must not lose the others' results
                failed.append(f"{v}/{arm}/seed{seed}: {type(e).__name__}: {e}")
                print(f"[bench_learning] FAILED {failed[-1]}", file=sys.stderr, flush=True)
                continue
            if r is not None:
                results[v][arm][seed] = r
    results = {v: {a: by for a, by in rv.items() if by} for v, rv in results.items()}
    report = {
        "grid": args.grid,
        "variants": {v: VARIANTS[v] for v in variants},
        "arms": {a: ARMS[a] for a in arms},
        "seeds": seeds,
        "overrides": common,
        "wall_s": time.perf_counter() - t0,
        "failed": failed,
        "summary": {},
        "results": {
            v: {a: {str(s): r for s, r in by.items()} for a, by in rv.items()} for v, rv in results.items()
        },
    }
    for v in variants:
        if not results[v]:
            continue
        png = out / f"learning_{v}.png"
        plot_variant(v, results[v], png)
        report["summary"][v] = {**variant_summary(results[v]), "png": str(png)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_learning.json").write_text(json.dumps(report, indent=1))
    if args.markdown:
        print(markdown(report))
    else:
        print(json.dumps(report if args.json else report["summary"], indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
