"""Train IGPO on the embedded default: ``python -m igpo.local.train [--config FILE] [key=value ...]``.

Builds the synthetic task and its BM25 index, starts the handler, warms up the tiny policy, trains
with IGPO (or GRPO / IG-only via ``reward_mode=``), evaluates on the held-out questions every
``eval_every`` steps, saves checkpoints (and resumes from the latest), and logs to the console (a
progress bar with step, reward and ETA), ``metrics.jsonl`` and TensorBoard. Ends by writing the
final rollout JSON and the learning curve, and printing where everything is.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from igpo.info_gain import AnswerTemplateError
from igpo.local.engine import LocalEngine, MetricsLog, load_config, open_run
from igpo.rollout_io import rollout_dir, write_rollouts
from igpo.settings import SettingError

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "local.yaml"


def plot_curve(metrics_path: Path, out_png: Path, title: str) -> Path:
    """Learning curve from ``metrics.jsonl``: train F1, eval F1 and the zero-advantage group shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "igpo/outcome_f1_mean" in r]
    evals = [r for r in rows if "eval/f1" in r]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    if train:
        a1.plot(
            [r["step"] for r in train],
            [r["igpo/outcome_f1_mean"] for r in train],
            label="train F1 (sampled)",
            alpha=0.7,
        )
    if evals:
        a1.plot([r["step"] for r in evals], [r["eval/f1"] for r in evals], "o-", label="test F1 (greedy)")
    a1.set_xlabel("step")
    a1.set_ylabel("F1")
    a1.set_ylim(0, 1)
    a1.legend()
    a1.set_title(title)
    if train:
        a2.plot(
            [r["step"] for r in train],
            [r["igpo/zero_adv_group_share_grpo"] for r in train],
            label="outcome-only (GRPO)",
        )
        a2.plot(
            [r["step"] for r in train], [r["igpo/zero_adv_group_share_igpo"] for r in train], label="IGPO"
        )
    a2.set_xlabel("step")
    a2.set_ylabel("share of zero-advantage groups")
    a2.set_ylim(0, 1)
    a2.legend()
    # both lines score the same sampled batches, once with each estimator (not two training runs)
    a2.set_title("same batches, two estimators")
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def run(cfg, log=print) -> dict:
    """Run the whole job; returns the paths it wrote and the final evaluation."""
    from tqdm import tqdm

    open_run(cfg, log)  # refuses to resume a run made with other settings, before any work
    engine = LocalEngine(cfg, log=log)
    sink = MetricsLog(engine.out, tensorboard=cfg.tensorboard)
    try:
        engine.prepare_task()
        log(
            f"[igpo-local] task: {len(engine.train_q)} train / {len(engine.test_q)} test questions, "
            f"{len(engine.task.passages)} passages in {engine.corpus}"
        )
        engine.start_handler()
        log(f"[igpo-local] handler at {engine.handler_url}")
        engine.build_policy()
        if engine.step == 0:
            _, ev = engine.evaluate()
            sink.write(0, {"step": 0, **ev})
            log(f"[igpo-local] step 0 (after warm-up): test F1 {ev['eval/f1']:.3f}")
        bar = tqdm(
            total=cfg.steps,
            initial=engine.step,
            desc="igpo",
            unit="step",
            disable=not cfg.progress,
            file=sys.stdout,
            dynamic_ncols=True,
        )
        last_eval = None  # (step, records, metrics) of the latest evaluation, reused at the end
        while engine.step < cfg.steps:
            m = engine.train_step()
            if engine.step % cfg.eval_every == 0 or engine.step == cfg.steps:
                records, ev = engine.evaluate()
                last_eval = (engine.step, records, ev)
                m.update(ev)
            sink.write(engine.step, m)
            bar.set_postfix(
                f1=f"{m['igpo/outcome_f1_mean']:.2f}",
                reward=f"{m['igpo/outcome_mean']:.2f}",
                zero_adv=f"{m['igpo/zero_adv_group_share_igpo']:.2f}",
                test_f1=f"{m['eval/f1']:.2f}" if "eval/f1" in m else "-",
            )
            bar.update(1)
            if engine.step % cfg.save_every == 0 or engine.step == cfg.steps:
                engine.save_checkpoint()
        bar.close()
        if last_eval is not None and last_eval[0] == engine.step:
            _, records, ev = last_eval
        else:
            records, ev = engine.evaluate()
        rollout = write_rollouts(records, rollout_dir(cfg.project, cfg.experiment, cfg.out_root), engine.step)
        ckpt = engine.latest_checkpoint() or engine.save_checkpoint()
        png = plot_curve(
            sink.path, engine.out / "learning_curve.png", f"{cfg.experiment} ({cfg.reward_mode})"
        )
        result = {
            "checkpoint": str(ckpt),
            "rollout": str(rollout),
            "metrics": str(sink.path),
            "learning_curve": str(png),
            "final_test_f1": ev["eval/f1"],
            "steps": engine.step,
        }
        (engine.out / "result.json").write_text(json.dumps(result, indent=1))
        return result
    finally:
        sink.close()
        engine.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML with LocalConfig fields")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=10 reward_mode=f1")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config if Path(args.config).exists() else None, args.overrides)
        result = run(cfg)  # first checks the experiment folder (open_run)
    except (SettingError, AnswerTemplateError) as e:  # names the bad key and value, the run it would mix
        # with, or the answer template's offending token; no traceback
        for line in str(e).splitlines():
            print(f"igpo.local.train: {line}", file=sys.stderr)
        return 2
    print("\n[igpo-local] done:")
    for k, v in result.items():
        print(f"  {k:>15}: {v:.3f}" if isinstance(v, float) and not math.isnan(v) else f"  {k:>15}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
