"""The whole embedded-default loop on a small task: real handler process, warm-up, IGPO steps,
checkpoint/resume, and an update that lowers the loss on a fixed batch."""

import math

import pytest
import torch

from igpo.answer import check_format
from igpo.local.engine import LocalEngine, load_config

SMALL = [
    "n_people=8",
    "n_companies=4",
    "n_cities=4",
    "n_countries=2",
    "hidden_size=128",
    "layers=2",
    "heads=4",
    "warmup_steps=100",
    "warmup_demos=96",
    "warmup_batch=16",
    "warmup_lr=0.003",
    "prompts_per_step=3",
    "group_size=4",
    "max_turns=4",
    "steps=2",
    "micro_batch=16",
    "tensorboard=false",
    "progress=false",
    "lr=0.0001",
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    cfg = load_config(None, [*SMALL, f"out_root={out}"])
    eng = LocalEngine(cfg, log=lambda *a: None)
    eng.prepare_task()
    eng.start_handler()
    eng.build_policy()
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def first_batch(engine):
    return engine.collect(0)


def test_warm_policy_writes_well_formed_rollouts(engine, first_batch):
    ok = [check_format(ep.response_text)[0] for ep in first_batch.episodes]
    assert sum(ok) >= len(ok) // 4, [ep.response_text for ep in first_batch.episodes[:3]]
    assert any(ep.num_tool_calls > 0 for ep in first_batch.episodes)
    assert all(len(ep.response_mask) == len(ep.response_ids) for ep in first_batch.episodes)


def test_rewards_and_information_gain_are_finite(first_batch):
    assert torch.isfinite(first_batch.rewards).all()
    assert all(torch.isfinite(a).all() for a in first_batch.answer_lp)
    assert all(
        a.numel() == ep.num_turns for a, ep in zip(first_batch.answer_lp, first_batch.episodes, strict=True)
    )
    assert torch.isfinite(first_batch.adv).all() and torch.isfinite(first_batch.old_lp).all()
    may_be_nan = {"igpo/gt_logprob_gain", "igpo/credit_gold_turn_positive_share"}  # over possibly no rows
    assert all(not math.isnan(v) for k, v in first_batch.metrics.items() if k not in may_be_nan)


def test_mixed_outcome_groups_have_nonzero_advantages(engine, first_batch):
    b, n = first_batch, engine.cfg.group_size
    outcomes = [
        float(b.rewards[i][b.mask[i] > 0].sum()) for i in range(len(b.episodes))
    ]  # per-row total reward
    for g in range(len(b.episodes) // n):
        rows = range(g * n, (g + 1) * n)
        turns_out = [float(b.rewards[i, (b.mask[i] > 0).nonzero().max()]) for i in rows]
        if len(set(turns_out)) > 1:
            assert any(float(b.adv[i].abs().max()) > 0 for i in rows)
    assert len(outcomes) == len(b.episodes)


def test_old_log_probs_equal_the_policy_before_the_update(engine, first_batch):
    from igpo.local.engine import response_logprobs

    with torch.no_grad():
        lp = response_logprobs(
            engine.policy,
            first_batch.episodes,
            first_batch.mask.shape[1],
            engine.tokenizer.pad_token_id,
            engine.cfg.temperature,
        )
    torch.testing.assert_close(
        lp * first_batch.mask, first_batch.old_lp * first_batch.mask, atol=2e-4, rtol=0
    )


def test_checkpoint_resume_continues_identically(engine, tmp_path):
    import copy
    import shutil

    # continuous: step 1, checkpoint, step 2
    engine.step = 0
    state0 = copy.deepcopy(engine.policy.state_dict())
    opt0 = copy.deepcopy(engine.optimizer.state_dict())
    m1 = engine.train_step()
    ckpt = engine.save_checkpoint()
    m2 = engine.train_step()
    params2 = {k: v.clone() for k, v in engine.policy.state_dict().items()}
    # resumed: a fresh engine on the same folder picks up step_1 and runs step 2
    engine2 = LocalEngine(engine.cfg, log=lambda *a: None)
    engine2.prepare_task()
    engine2.handler_url = engine.handler_url
    assert engine2.latest_checkpoint() == ckpt
    engine2.build_policy()
    assert engine2.step == 1
    m2b = engine2.train_step()
    for k in m2:
        if not k.startswith("time/"):
            assert m2[k] == pytest.approx(m2b[k], nan_ok=True, rel=1e-5, abs=1e-6), k
    for k, v in engine2.policy.state_dict().items():
        torch.testing.assert_close(v, params2[k])
    assert m1["step"] == 1 and m2["step"] == 2
    shutil.rmtree(ckpt)
    engine.policy.load_state_dict(state0)
    engine.optimizer.load_state_dict(opt0)


def test_updates_lower_the_loss_on_a_fixed_batch(engine, first_batch):
    from verl.trainer.ppo import core_algos

    from igpo.local.engine import response_logprobs

    b = first_batch
    assert b.adv.abs().sum() > 0

    def surrogate() -> float:
        with torch.no_grad():
            lp = response_logprobs(
                engine.policy,
                b.episodes,
                b.mask.shape[1],
                engine.tokenizer.pad_token_id,
                engine.cfg.temperature,
            )
        loss, _ = core_algos.get_policy_loss_fn("vanilla")(
            b.old_lp, lp, b.adv, b.mask, "token-mean", engine._actor_config(float(b.mask.sum()))
        )
        return float(loss)

    before = surrogate()
    for _ in range(3):
        engine.update(b)
    assert surrogate() < before


def test_evaluation_scores_each_question_depth(engine):
    """eval/f1 is the question-weighted mean of the per-depth F1s, recomputed from the records."""
    from igpo.answer import f1_score

    records, m = engine.evaluate()
    hops = sorted({r["hops"] for r in records})
    assert hops and all(f"eval/f1_hops{h}" in m for h in hops)
    for h in hops:
        mine = [f1_score(r["prediction"], [r["ground_truth"][0]]) for r in records if r["hops"] == h]
        assert m[f"eval/f1_hops{h}"] == pytest.approx(sum(mine) / len(mine))
    weighted = sum(m[f"eval/f1_hops{h}"] * sum(r["hops"] == h for r in records) for h in hops) / len(records)
    assert m["eval/f1"] == pytest.approx(weighted)
    # Fig. 5 on the test rollouts: the gain is the last minus the first gold log-prob, over the same rows
    assert m["eval/gt_logprob_gain"] == pytest.approx(m["eval/gt_logprob_last"] - m["eval/gt_logprob_turn0"])


def test_gold_turn_is_the_first_search_that_returned_the_last_hop_fact(engine, first_batch):
    """Checked by plain lower-case substring search over the decoded tool responses."""
    qs = [q for q in engine.batch_questions(0) for _ in range(engine.cfg.group_size)]
    found = 0
    for ep, q in zip(first_batch.episodes, qs, strict=True):
        texts = [
            engine.tokenizer.decode(ep.response_ids[t.end : t.tool_end]).lower() if t.tool_end else ""
            for t in ep.turns
        ]
        hits = [
            i
            for i, x in enumerate(texts)
            if q.answer.strip().lower() in x and q.path[-1].strip().lower() in x
        ]
        assert engine.gold_turn(ep, q) == (hits[0] if hits else None)
        found += bool(hits)
    assert found > 0  # the warm policy finds the evidence in some rollouts
    assert first_batch.metrics["igpo/credit_gold_turn_count"] <= found


def test_local_engine_writes_the_verl_paths_igpo_metric_names(first_batch):
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    shared = set(re.findall(r"^\| `(igpo/[^`]+)` \| (?!\*verl\*)", doc, re.M))
    assert len(shared) >= 15 and "igpo/copy_token_share" in shared
    assert shared <= set(first_batch.metrics), shared - set(first_batch.metrics)
    assert 0 < first_batch.metrics["igpo/copy_token_share"] < 1
