"""verl's real trainer end to end on the CPU test bed (igpo/verl/cpu): 2 workers with Ulysses SP 2,
FSDP2, the hf rollout, the igpo_search agent loop against a real handler on the synthetic task's
corpus, the warmed tiny policy; 2 IGPO steps, validation with its dump, a checkpoint; then a resume to
step 3; then evaluate.sh's verl path scores the dump and the checkpoint is exported to a Hugging Face
folder that transformers loads and generates with. Everything asserted comes from the trainer's own
metrics (verl's file logger) and files, and from the handler's counters. About 4-5 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
WORKERS = ["trainer.n_gpus_per_node=2"] + [
    f"actor_rollout_ref.{r}.ulysses_sequence_parallel_size=2" for r in ("actor", "ref")
]

pytestmark = pytest.mark.slow


def steps_of(run_dir: Path, exclude: set[Path] = frozenset()) -> tuple[Path, list[dict]]:
    """The newest metrics file of a run (not in ``exclude``) and its per-step records."""
    files = sorted(set(run_dir.glob("metrics-*.jsonl")) - set(exclude), key=lambda p: p.stat().st_mtime)
    assert files, f"no metrics file in {run_dir}"
    rows = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
    return files[-1], [{"step": r["step"], **r["data"]} for r in rows]


def retrieve_queries(url: str) -> float:
    """``handler_queries_total{endpoint="/retrieve"}`` from the handler's Prometheus text."""
    text = httpx.get(url + "/metrics", timeout=10).text
    m = re.search(r'handler_queries_total\{endpoint="/retrieve"\}\s+([0-9.e+]+)', text)
    return float(m.group(1)) if m else 0.0


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    """Assets (task, a policy warmed with a shorter warm-up) and a handler on the task's corpus."""
    from igpo.verl.cpu.run import asset_engine, prepare_assets

    work = tmp_path_factory.mktemp("cpu_bed")
    engine = asset_engine(
        work / "assets", overrides=("warmup_steps=300", "warmup_demos=1000", "progress=false")
    )
    engine.prepare_task()
    engine.start_handler()
    try:
        assets = prepare_assets(engine)
        yield work, assets, engine.handler_url
    finally:
        engine.close()


def run_trainer(work: Path, handler_url: str, *overrides: str, timeout: int = 420):
    env = {
        **os.environ,
        "HANDLER_URL": handler_url,
        "IGPO_CPU_ASSETS": str(work / "assets"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "igpo.verl.cpu.run", *WORKERS, "trainer.experiment_name=ci", *overrides]
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-6000:])
    return r


def test_real_verl_trainer_trains_validates_checkpoints_resumes_and_evaluates(bed):
    work, assets, url = bed
    run_dir = work / "checkpoints" / "igpo-verl-cpu" / "ci"
    before = retrieve_queries(url)

    r = run_trainer(work, url)
    assert "verl's trainer finished on the CPU test bed" in r.stdout
    first, steps = steps_of(run_dir)
    assert [s["step"] for s in steps] == [1, 2]
    for s in steps:
        # the copies forward reproduces the sampler's log-probs (fp32, SP 2)
        assert s["training/rollout_probs_diff_max"] < 1e-5, s["training/rollout_probs_diff_max"]
        assert s["igpo/ig_count"] > 0 and s["igpo/copy_token_share"] > 0
        assert s["igpo/tool_calls_mean"] > 0 and s["igpo/tool_error_rate"] == 0
        assert s["igpo/format_failure_rate"] < 1
        if s["igpo/zero_adv_group_share_grpo"] < 1:  # a group whose outcomes differ
            assert s["critic/advantages/max"] > 0 and s["critic/advantages/min"] < 0
    assert any(s["critic/advantages/max"] > 0 for s in steps)  # IG gives credit even in uniform groups
    assert retrieve_queries(url) > before  # the tool calls reached the handler
    assert "val-core/synthetic_multihop/reward/mean@1" in steps[-1]
    assert (run_dir / "global_step_2" / "actor").is_dir()
    assert (run_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert (run_dir / "validation" / "2.jsonl").is_file()

    run_trainer(work, url, "trainer.total_training_steps=3")  # resumes from global_step_2
    _, resumed = steps_of(run_dir, exclude={first})
    assert [s["step"] for s in resumed] == [3]
    assert resumed[0]["training/rollout_probs_diff_max"] < 1e-5
    assert (run_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    dump = run_dir / "validation" / "3.jsonl"
    assert dump.is_file()

    # trained weights out: verl's merger through our export command, loaded and run with transformers
    import torch

    from igpo.local.tiny_policy import load_policy

    hf = work / "exported"
    r = subprocess.run(
        [sys.executable, "-m", "igpo.verl.export", str(run_dir / "global_step_3"), str(hf)]
        + ["--tokenizer", str(assets.tokenizer)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    model, tok = load_policy(hf)
    warm, _ = load_policy(assets.model)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, warm.state_dict()[k])]
    assert changed  # three IGPO steps moved the weights away from the warmed policy
    prompt = tok.apply_chat_template(
        [
            {"role": "system", "content": "answer the question. search first."},
            {"role": "user", "content": "where was this person born? pabol deral"},
        ],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = tok(prompt, return_tensors="pt").input_ids
    text = tok.decode(model.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1] :])
    assert text.startswith("<think>"), text  # the agent's turn format, as trained

    name = f"cpu-bed-test-{os.getpid()}"  # evaluate.sh writes outputs/igpo/NAME in the repository
    env = {
        **os.environ,
        "IGPO_ENGINE": "verl",
        "IGPO_VAL_DUMP": str(dump),
        "IGPO_VAL_FILES": str(assets.test),
        "IGPO_EXPERIMENT": name,
    }
    out = REPO / "outputs" / "igpo" / name
    try:
        ev = subprocess.run(
            ["bash", "evaluate.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
        assert ev.returncode == 0, (ev.stdout[-2000:], ev.stderr[-3000:])
        assert "| synthetic_multihop |" in ev.stdout and "| **overall** |" in ev.stdout
        score = json.loads((out / "score_step_3.json").read_text())
        assert score  # the score JSON the table was printed from
    finally:
        shutil.rmtree(out, ignore_errors=True)
