"""Does the warm-up teach the tiny policy to *read*? Teacher-forced copy accuracy during the warm-up.

Usage::

    python scripts/bench_warmup.py --json [--every 100] [--system-prompt TEXT] [key=value ...]

Warms up a fresh policy exactly as the embedded default does (``configs/local.yaml`` plus overrides)
and, every ``--every`` steps, scores 200 gold demonstrations of *test* questions (people never seen in
training) by teacher forcing: the share whose answer token the policy predicts (argmax) right — a copy
from the last passage — and the share of name tokens in its queries it predicts right (copies from
the question, from its own think and from passages). Names are made up and test people unseen, so
above-chance accuracy means the policy reads. ``--system-prompt`` swaps the task's system prompt (a
diagnostic: its length decides whether the copy circuit forms in the budget). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time

import torch

import igpo.local.synthetic as synthetic
from igpo.local.engine import LocalEngine, load_config, right_padded
from igpo.local.train import DEFAULT_CONFIG


def copy_accuracy(engine: LocalEngine, episodes, names: set[int]) -> tuple[float, float]:
    """Teacher-forced argmax accuracy on the answer's name tokens and on the earlier name tokens."""
    answer_tag = engine.tokenizer.convert_tokens_to_ids("<answer>")
    pad = engine.tokenizer.pad_token_id
    answers, queries = [], []
    engine.policy.eval()
    with torch.no_grad():
        for s in range(0, len(episodes), 50):
            batch = episodes[s : s + 50]
            ids, att = right_padded([e.prompt_ids + e.response_ids for e in batch], pad)
            pred = engine.policy(input_ids=ids, attention_mask=att).logits.argmax(-1)
            for i, e in enumerate(batch):
                p0 = len(e.prompt_ids) - 1  # logits at p0 + j predict response token j
                start = max(j for j, t in enumerate(e.response_ids) if t == answer_tag)
                hits = [
                    bool(pred[i, p0 + j] == t)
                    for j, t in enumerate(e.response_ids)
                    if t in names and e.response_mask[j]
                ]
                ans = [j for j, t in enumerate(e.response_ids) if j > start and t in names]
                answers.append(all(pred[i, p0 + j] == e.response_ids[j] for j in ans))
                queries += hits[: len(hits) - len(ans)]
    engine.policy.train()
    return sum(answers) / len(answers), sum(queries) / max(1, len(queries))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a zero probe interval or probe set would divide by zero)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--every", type=positive_int, default=100)
    ap.add_argument("--probe-size", type=positive_int, default=200)
    ap.add_argument("--system-prompt", help="replace the task's system prompt (diagnostic)")
    ap.add_argument("--json", action="store_true", help="print the result JSON on stdout")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    if args.system_prompt is not None:
        synthetic.SYSTEM_PROMPT = args.system_prompt
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(DEFAULT_CONFIG, [*args.overrides, f"out_root={tmp}", "progress=false"])
        engine = LocalEngine(cfg, log=lambda *a: print(*a, file=sys.stderr))
        engine.prepare_task()
        engine.start_handler()
        try:
            engine.new_policy()
            rng = random.Random(1)
            test = engine.test_q[: args.probe_size]
            gold = engine.demonstrations(
                [(q, synthetic.teacher_turns(q, engine.task, rng)) for q in test], seed=10**6
            )
            names = engine.name_token_ids()
            curve = []
            t0 = time.perf_counter()

            def probe(step: int, loss: float) -> None:
                if step % args.every == 0 or step == cfg.warmup_steps:
                    answer, query = copy_accuracy(engine, gold, names)
                    curve.append({"step": step, "loss": loss, "answer_acc": answer, "query_name_acc": query})
                    print(
                        f"[bench_warmup] step {step}: answer {answer:.3f} query names {query:.3f}",
                        file=sys.stderr,
                    )

            engine.warmup(callback=probe)
            report = {
                "overrides": args.overrides,
                "system_prompt": synthetic.SYSTEM_PROMPT,
                "prompt_tokens": len(engine.prompt_ids(test[0].question)),
                "curve": curve,
                "wall_s": time.perf_counter() - t0,
            }
        finally:
            engine.close()
    print(json.dumps(report) if args.json else json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
