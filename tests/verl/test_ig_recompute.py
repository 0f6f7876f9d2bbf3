"""IG inside the old-log-prob recompute, on CPU: pure functions, the engine's forward step with a plain
HF module standing in for the FSDP one, the IG → reward step, the per-step metrics and the config.

Tiny random Qwen2 / Llama models in float64; references are a plain forward (old log-probs) and
``igpo.info_gain``'s naive method (a forward per prefix)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from transformers import AutoModelForCausalLM
from verl import DataProto
from verl.utils import tensordict_utils as tu

from igpo.advantage import decode_turn_rewards
from igpo.info_gain import packed_logprobs_with_copies
from igpo.verl.ig_recompute import (
    answer_logprobs_from_rows,
    answer_targets,
    extend_sequences,
    ig_request,
    ig_to_token_rewards,
    information_gains,
    old_log_probs_from_sequences,
    sequences_from_padded,
    trajectory_values,
)

_TESTS = Path(__file__).resolve().parents[1]
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from helpers.tiny import small_decoder_config  # noqa: E402

V = 97
_MODELS: dict[str, torch.nn.Module] = {}


def model_for(arch: str) -> torch.nn.Module:
    if arch not in _MODELS:
        torch.manual_seed(7)
        cfg = small_decoder_config(arch, V, max_positions=1024)
        _MODELS[arch] = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").double().eval()
    return _MODELS[arch]


def rand(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))


def batch_rows():
    """Three rollouts: (prompt_len, response_len, tool_turn_ends, copy_ids, score_mask)."""
    rows = []
    for i, (p, r, ends, g) in enumerate([(5, 14, [4, 9], 6), (7, 6, [], 4), (3, 20, [5, 11, 16], 5)]):
        c = rand(g, 100 + i)
        m = torch.zeros(g, dtype=torch.bool)
        m[2 : g - 1] = True  # wrapper prefix, answer, closing tag
        rows.append((p, r, ends, c, m))
    return rows


def sequences_and_request():
    rows = batch_rows()
    seqs = [rand(p + r, i) for i, (p, r, *_rest) in enumerate(rows)]
    pes = [[p] + [p + e for e in ends] for p, _r, ends, _c, _m in rows]
    return rows, seqs, pes, [r[3] for r in rows], [r[4] for r in rows]


@torch.no_grad()
def plain_logprobs(model, x: torch.Tensor) -> torch.Tensor:
    lg = model(input_ids=x[None]).logits[0].double()
    return torch.log_softmax(lg[:-1], -1).gather(-1, x[1:, None]).squeeze(-1)


# ------------------------------------------------------------------------------------------------
# pure functions
# ------------------------------------------------------------------------------------------------


class _Tok:
    """Character-level fast-tokenizer stand-in with offsets (enough for answer_copy)."""

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        return {
            "input_ids": [ord(ch) % V for ch in text],
            "offset_mapping": [(i, i + 1) for i in range(len(text))],
        }


def test_ig_request_prefix_ends_copies_and_padding_rows():
    extra = [
        {"tool_turn_ends": [4, 9], "ground_truth": ["Paris", "paris"]},
        {"tool_turn_ends": [], "ground_truth": ["Rome"]},
        {},
    ]
    req = ig_request([5, 7, 3], [14, 6, 2], extra, _Tok(), "<a>{answer}</a>", is_padding=[False, False, True])
    assert req.prefix_ends == [[5, 9, 14], [7], [3]]
    assert req.active == [True, True, False]
    assert req.copy_ids[0].tolist() == [ord(c) % V for c in "<a>Paris</a>"]
    assert req.score_mask[0].tolist() == [False] * 3 + [True] * 5 + [False] * 4
    with pytest.raises(ValueError, match="row 0: tool_turn_ends"):
        ig_request([5], [4], [{"tool_turn_ends": [9], "ground_truth": ["x"]}], _Tok(), "{answer}")
    with pytest.raises(ValueError, match="row 0: extra_fields lacks"):
        ig_request([5], [4], [{"ground_truth": ["x"]}], _Tok(), "{answer}")


def test_extend_sequences_is_the_packed_row_of_info_gain():
    _rows, seqs, pes, cids, masks = sequences_and_request()
    layout, ext, pos = extend_sequences(seqs, pes, cids, masks)
    assert torch.equal(
        torch.cat(ext), __import__("igpo.info_gain", fromlist=["x"]).pack_input_ids(layout, seqs, cids)
    )
    assert torch.equal(torch.cat(pos), layout.position_ids)
    for i, x in enumerate(seqs):
        assert torch.equal(ext[i][: x.numel()], x)
        assert pos[i][: x.numel()].tolist() == list(range(x.numel()))
    # with verl's tail pad: one copy-less dummy block at the end
    lp, _, _ = extend_sequences(seqs, pes, cids, masks, pad_len=3)
    assert lp.total_len == layout.total_len + 3 and lp.num_seqs == len(seqs) + 1


def test_sequences_from_padded_left_and_right_padding():
    prompts = torch.tensor([[0, 0, 5, 6], [1, 2, 3, 4]])
    responses = torch.tensor([[7, 8, 9], [9, 0, 0]])
    am = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]])
    seqs, pl, rl = sequences_from_padded(prompts, responses, am)
    assert [s.tolist() for s in seqs] == [[5, 6, 7, 8, 9], [1, 2, 3, 4, 9]]
    assert pl == [2, 4] and rl == [3, 1]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_split_outputs_give_plain_old_log_probs_and_naive_answer_logprobs(arch):
    model = model_for(arch)
    rows, seqs, pes, cids, masks = sequences_and_request()
    layout, ext, pos = extend_sequences(seqs, pes, cids, masks)
    # one forward over the packed row with the copies, as the engine runs it
    from igpo.info_gain import copy_attention_enabled

    with torch.no_grad(), copy_attention_enabled(model):
        logits = model(
            input_ids=torch.cat(ext)[None],
            position_ids=layout.position_ids[None],
            attention_mask=None,
            igpo_layout=layout,
            use_cache=False,
        ).logits[0]
    ids = torch.cat(ext)
    rolled = torch.roll(ids, -1)  # verl's labels: input_ids_rmpad_rolled
    lsm = torch.log_softmax(logits, -1)
    rolled_lp = lsm.gather(-1, rolled[:, None]).squeeze(-1)
    tgt = answer_targets(layout, cids)
    rows_lp = torch.zeros(layout.total_len, dtype=torch.float64)
    sel = tgt >= 0
    rows_lp[sel] = lsm[sel].gather(-1, tgt[sel][:, None]).squeeze(-1)

    traj = trajectory_values(layout, rolled_lp)
    old = old_log_probs_from_sequences(traj, [r[0] for r in rows], [r[1] for r in rows])
    ref_tok = [plain_logprobs(model, x) for x in seqs]
    ref_old = old_log_probs_from_sequences(ref_tok, [r[0] for r in rows], [r[1] for r in rows])
    assert old.shape == (3, 20)
    torch.testing.assert_close(old, ref_old, atol=1e-10, rtol=0)
    for i, (t, r) in enumerate(zip(traj, ref_tok, strict=True)):
        torch.testing.assert_close(t[:-1], r, atol=1e-10, rtol=0, msg=f"row {i}")

    ans = answer_logprobs_from_rows(layout, rows_lp, masks)
    _, naive = packed_logprobs_with_copies(
        model, seqs, pes, cids, masks, method="naive", with_token_logprobs=False
    )
    for a, b in zip(ans, naive, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_ig_lands_where_the_estimator_reads_it():
    # response mask of 3 model turns with tool responses between, padding at the end
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]])
    scores = torch.zeros(2, 12)
    scores[0, 9] = 0.5  # outcome on the last response token
    scores[1, 3] = -1.0
    lp = [torch.tensor([-3.0, -2.0, -2.5]), torch.tensor([-4.0])]
    ig = information_gains(lp)
    assert torch.allclose(ig[0], torch.tensor([1.0, -0.5], dtype=torch.float64)) and ig[1].numel() == 0
    tlr = ig_to_token_rewards(scores, mask, ig)
    assert torch.equal(scores[0, 9], torch.tensor(0.5))  # input untouched
    turns = decode_turn_rewards(tlr, mask)
    assert turns.rewards[0].tolist() == [1.0, -0.5, 0.5]
    assert turns.rewards[1, 0].item() == -1.0 and turns.is_outcome[1, 0]
    assert tlr[0, 1].item() == 1.0 and tlr[0, 6].item() == -0.5
    with pytest.raises(ValueError, match="row 0: 1 information gains need 2 model turns"):
        ig_to_token_rewards(scores, mask, [torch.tensor([0.1]), None])


# ------------------------------------------------------------------------------------------------
# the engine's forward step (verl's FSDPEngineWithLMHead code, a plain HF module in place of FSDP)
# ------------------------------------------------------------------------------------------------


def make_engine(model, monkeypatch):
    import verl.utils.device as vdev
    import verl.workers.engine.fsdp.transformer_impl as ti

    from igpo.verl.engine import IGPOFSDPEngineWithLMHead

    for mod in (ti, vdev):
        monkeypatch.setattr(mod, "get_device_id", lambda: "cpu", raising=False)
        monkeypatch.setattr(mod, "get_device_name", lambda: "cpu", raising=False)
    eng = object.__new__(IGPOFSDPEngineWithLMHead)
    eng.module = model
    eng.use_ulysses_sp = False
    eng.ulysses_sequence_parallel_size = 1
    eng.pad_to_length = False
    eng._autocast_dtype = torch.float32
    eng.engine_config = SimpleNamespace(entropy_checkpointing=False, entropy_from_logits_with_chunking=False)
    from verl.utils.torch_functional import entropy_from_logits

    eng.compute_entropy_from_logits = entropy_from_logits
    return eng


def micro_batch(seqs, rows, req_fields=None, ig=True):
    nt = lambda xs: torch.nested.as_nested_tensor(xs, layout=torch.jagged)  # noqa: E731
    td = TensorDict(
        {
            "input_ids": nt(seqs),
            "position_ids": nt([torch.arange(x.numel()) for x in seqs]),
            "temperature": torch.ones(len(seqs)),
        },
        batch_size=len(seqs),
    )
    if req_fields:
        for k, v in req_fields.items():
            td[k] = v
    tu.assign_non_tensor(td, use_remove_padding=True, calculate_entropy=True)
    if ig:
        tu.assign_non_tensor(td, igpo_with_copies=True)
    return td


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_engine_forward_step_with_copies_equals_plain_step_and_naive(arch, monkeypatch):
    from igpo.verl.trainer import ig_input_fields

    model = model_for(arch)
    eng = make_engine(model, monkeypatch)
    rows, seqs, pes, cids, masks = sequences_and_request()
    req = SimpleNamespace(prefix_ends=pes, copy_ids=cids, score_mask=masks)
    fields = ig_input_fields(req)
    with torch.no_grad():
        _, plain = eng.forward_step(micro_batch(seqs, rows, fields, ig=False), None, True)
        _, with_copies = eng.forward_step(micro_batch(seqs, rows, fields, ig=True), None, True)
    po, wo = plain["model_output"], with_copies["model_output"]
    assert "igpo_answer_lp" not in po
    for key in ("log_probs", "entropy"):
        for i, (a, b) in enumerate(zip(po[key].unbind(), wo[key].unbind(), strict=True)):
            assert a.shape == b.shape == (seqs[i].numel(),)
            torch.testing.assert_close(
                b[:-1].double(), a[:-1].double(), atol=1e-8, rtol=0, msg=f"{key} row {i}"
            )
    ref_tok = [plain_logprobs(model, x) for x in seqs]
    for a, r in zip(wo["log_probs"].unbind(), ref_tok, strict=True):
        torch.testing.assert_close(a[:-1].double(), r, atol=1e-8, rtol=0)
    _, naive = packed_logprobs_with_copies(
        model, seqs, pes, cids, masks, method="naive", with_token_logprobs=False
    )
    for a, b in zip(wo["igpo_answer_lp"].unbind(), naive, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a.double(), b, atol=1e-6, rtol=0)
    assert [t.numel() for t in wo["igpo_ig_time_s"].unbind()] == [1, 1, 1]


def test_engine_handles_verl_tail_padding(monkeypatch):
    """pad_to_length buckets append a tail pad to the packed row: the layout's dummy block covers it."""
    from igpo.verl.trainer import ig_input_fields

    model = model_for("qwen2")
    eng = make_engine(model, monkeypatch)
    eng.pad_to_length = True
    eng.pad_to_length_bucket = 64
    rows, seqs, pes, cids, masks = sequences_and_request()
    fields = ig_input_fields(SimpleNamespace(prefix_ends=pes, copy_ids=cids, score_mask=masks))
    with torch.no_grad():
        _, out = eng.forward_step(micro_batch(seqs, rows, fields, ig=True), None, True)
    _, naive = packed_logprobs_with_copies(
        model, seqs, pes, cids, masks, method="naive", with_token_logprobs=False
    )
    for a, b in zip(out["model_output"]["igpo_answer_lp"].unbind(), naive, strict=True):
        torch.testing.assert_close(a.double(), b, atol=1e-6, rtol=0)
    for a, r in zip(
        out["model_output"]["log_probs"].unbind(), [plain_logprobs(model, x) for x in seqs], strict=True
    ):
        torch.testing.assert_close(a[:-1].double(), r, atol=1e-8, rtol=0)


def test_engine_refuses_unsupported_settings(monkeypatch):
    eng = make_engine(model_for("qwen2"), monkeypatch)
    _rows, seqs, *_ = sequences_and_request()
    mb = micro_batch(seqs, None, None, ig=True)
    with pytest.raises(NotImplementedError, match="lacks"):
        eng.forward_step(mb, None, True)
    with pytest.raises(NotImplementedError, match="forward-only"):
        eng.forward_step(mb, None, False)


def test_engine_registered_for_fsdp_backends():
    from verl.workers.engine.base import EngineRegistry

    from igpo.verl.engine import IGPOFSDPEngineWithLMHead

    for backend in ("fsdp", "fsdp2"):
        assert IGPOFSDPEngineWithLMHead in EngineRegistry._engines["language_model"][backend].values()


# ------------------------------------------------------------------------------------------------
# trainer-side reward step and metrics on a real DataProto
# ------------------------------------------------------------------------------------------------


def test_rewards_and_metrics_on_a_dataproto():
    from igpo.verl.estimator import compute_igpo_advantage_verl
    from igpo.verl.ig_metrics import igpo_step_metrics, rewards_with_ig

    mask = torch.tensor(
        [
            [1, 1, 0, 0, 1, 1, 1, 0],
            [1, 1, 0, 0, 1, 1, 1, 0],
            [1, 1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0, 0],
            [1, 0, 0, 0, 0, 0, 0, 0],
        ]
    )
    rm = torch.zeros(5, 8)
    rm[0, 6], rm[1, 6], rm[2, 2], rm[3, 2] = 1.0, 1.0, 0.5, 0.5  # group a: same outcome; group b: same
    data = DataProto.from_dict(
        tensors={"rm_scores": rm, "response_mask": mask},
        non_tensors={"uid": np.array(["a", "a", "b", "b", "pad"], dtype=object)},
    )
    answer_lp = [
        torch.tensor([-3.0, -2.0]),
        torch.tensor([-3.0, -3.5]),
        torch.tensor([-1.0]),
        torch.tensor([-1.0]),
        torch.tensor([0.0]),
    ]
    active = [True, True, True, True, False]
    tlr, ig = rewards_with_ig(data.batch["rm_scores"], data.batch["response_mask"], answer_lp, active)
    assert ig[4] is None and torch.equal(data.batch["rm_scores"], rm)  # outcome untouched
    assert tlr[0, 1].item() == pytest.approx(1.0) and tlr[1, 1].item() == pytest.approx(-0.5)
    assert tlr.sum(-1)[2:].tolist() == rm.sum(-1)[2:].tolist()
    cfg = {"igpo": {"reward_mode": "f1+ig"}, "gamma": 1.0}
    adv, _ = compute_igpo_advantage_verl(tlr, mask, index=data.non_tensor_batch["uid"], config=cfg)
    extra = [
        {"reward_extra_info": {"f1": 1.0, "format_ok": 1.0}, "turns": 2, "tool_calls": 1, "tool_errors": 0},
        {"reward_extra_info": {"f1": 1.0, "format_ok": 1.0}, "turns": 2, "tool_calls": 1, "tool_errors": 1},
        {"reward_extra_info": {"f1": 0.5, "format_ok": 1.0}, "turns": 1, "tool_calls": 0, "tool_errors": 0},
        {"reward_extra_info": {"f1": 0.0, "format_ok": 0.0}, "turns": 1, "tool_calls": 0, "tool_errors": 0},
        {},
    ]
    m = igpo_step_metrics(
        tlr,
        mask,
        data.non_tensor_batch["uid"],
        adv,
        extra,
        answer_lp=answer_lp,
        active=active,
        seq_lens=[10, 10, 8, 8, 2],
        copy_tokens=9,
        timings={"driver": 0.25, "engine": 0.5},
    )
    assert m["igpo/outcome_f1_mean"] == pytest.approx(0.625)
    assert m["igpo/format_failure_rate"] == pytest.approx(0.25)
    assert m["igpo/ig_mean"] == pytest.approx(0.25) and m["igpo/ig_std"] == pytest.approx(math.sqrt(1.125))
    # both groups have equal outcomes: GRPO gets no signal; IG revives group a only
    assert m["igpo/zero_adv_group_share_grpo"] == 1.0 and m["igpo/zero_adv_group_share_igpo"] == 0.5
    assert m["igpo/gt_logprob_gain"] == pytest.approx(0.25)  # (1.0 + -0.5) / 2 rows with T >= 2
    assert m["igpo/turns_mean"] == 1.5 and m["igpo/tool_calls_mean"] == 0.5
    assert m["igpo/tool_error_rate"] == 0.5
    assert m["igpo/copy_token_share"] == pytest.approx(9 / 36)
    assert m["time/igpo_ig_s"] == pytest.approx(0.75)
    # ig_source: none -> rewards are the outcome alone, metrics still there
    tlr0, ig0 = rewards_with_ig(rm, mask, None, active)
    assert torch.equal(tlr0, rm) and ig0 == [None] * 5


# ------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------


def test_config_selects_the_igpo_trainer_and_engine():
    from verl.trainer.ppo.v1 import get_trainer_cls
    from verl.utils.config import omega_conf_to_dataclass

    from igpo.verl.trainer import IGPOTrainer, install_trainer
    from tests.verl.test_config import compose_trainer

    cfg = compose_trainer()
    assert cfg.trainer.v1.trainer_mode == "sync"
    import verl.trainer.ppo.v1.trainer_base as tb

    saved = dict(tb.TRAINER_REGISTRY)
    try:
        install_trainer()
        assert get_trainer_cls(cfg.trainer.v1.trainer_mode) is IGPOTrainer
    finally:
        tb.TRAINER_REGISTRY.clear()
        tb.TRAINER_REGISTRY.update(saved)
    assert get_trainer_cls("sync") is not IGPOTrainer  # only the task runner's process is changed
    assert cfg.actor_rollout_ref.model.external_lib == "igpo.verl.engine"
    assert cfg.actor_rollout_ref.model.use_remove_padding is True
    assert cfg.algorithm.igpo.ig_source == "recompute"
    algo = omega_conf_to_dataclass(compose_trainer(["algorithm.igpo.ig_source=none"]).algorithm)
    assert algo.igpo["ig_source"] == "none"


def test_trainer_sets_the_copy_flag_for_the_old_log_prob_call_only(monkeypatch):
    """The flag and the nested IG inputs reach verl's recompute; the flag is gone before the ref forward."""
    from transfer_queue import KVBatchMeta
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    import igpo.verl.trainer as tr
    from tests.verl.test_config import compose_trainer

    store: dict[str, dict] = {
        "u_0_0": {
            "prompts": rand(5, 1),
            "responses": rand(14, 2),
            "extra_fields": {"tool_turn_ends": [4, 9], "ground_truth": ["Paris"]},
        },
        "u_1_0": {
            "prompts": rand(5, 1),
            "responses": rand(6, 3),
            "extra_fields": {"tool_turn_ends": [], "ground_truth": ["Paris"]},
        },
    }

    def kv_batch_get(keys, partition_id, select_fields):
        out = {}
        for f in select_fields:
            vals = [store[k][f] for k in keys]
            out[f] = (
                torch.nested.as_nested_tensor(vals, layout=torch.jagged)
                if isinstance(vals[0], torch.Tensor)
                else np.array(vals, dtype=object)
            )
        return out

    def kv_batch_put(keys, partition_id, fields):
        for f in fields.keys():
            for k, v in zip(keys, fields[f].unbind(), strict=True):
                store[k][f] = v
        return None

    seen = {}

    def fake_recompute(self, batch, metrics):
        seen["flag"] = batch.extra_info.get("igpo_with_copies")
        seen["prefix_ends"] = [
            store[k]["igpo_prefix_ends"].tolist() for k in batch.keys if "igpo_prefix_ends" in store[k]
        ]
        return batch

    monkeypatch.setattr(tr, "tq", SimpleNamespace(kv_batch_get=kv_batch_get, kv_batch_put=kv_batch_put))
    monkeypatch.setattr(PPOTrainer, "_compute_old_log_prob", fake_recompute)
    trainer = object.__new__(tr.IGPOTrainer)
    trainer.config = compose_trainer()
    trainer.tokenizer = _Tok()
    trainer.tokenizer.eos_token_id = 0
    batch = KVBatchMeta(partition_id="train", keys=list(store), tags=[{}, {}], extra_info={})
    trainer._compute_old_log_prob(batch, {})
    assert seen == {"flag": True, "prefix_ends": [[5, 9, 14], [5]]}
    assert "igpo_with_copies" not in batch.extra_info
    assert trainer._igpo_state["active"] == [True, True]

    seen.clear()
    trainer.config = compose_trainer(["algorithm.igpo.ig_source=none"])
    for k in store:
        store[k].pop("igpo_prefix_ends")
    trainer._compute_old_log_prob(batch, {})  # ig_source=none: plain recompute, no flag, no IG inputs
    assert seen == {"flag": None, "prefix_ends": []}


def _bare_trainer(overrides=()):
    """An IGPOTrainer with the composed config and nothing else (no Ray, no workers)."""
    import igpo.verl.trainer as tr
    from tests.verl.test_config import compose_trainer

    trainer = object.__new__(tr.IGPOTrainer)
    trainer.config = compose_trainer(list(overrides))
    trainer.trainer_mode = trainer.config.trainer.v1.trainer_mode
    return trainer


def test_igpo_runs_verl_sync_semantics_replay_buffer_and_batch_size():
    """verl picks the replay buffer by the mode's name: IGPO must get the sync one (no endless refills,
    the dataloader fetches whole train batches)."""
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync

    trainer = _bare_trainer(["data.train_batch_size=4"])
    buf = trainer._build_replay_buffer()
    assert type(buf) is ReplayBuffer and buf.trainer_mode == "sync"
    assert buf.gen_batch_size == 4 and buf.train_batch_size == 4
    assert buf.sync_refill_failed_groups is False
    # what the previous name "igpo" gave: the async buffer, which evicts and refills failed groups
    old = _bare_trainer(["data.train_batch_size=4", "trainer.v1.trainer_mode=igpo"])
    assert type(old._build_replay_buffer()) is ReplayBufferAsync


def test_a_batch_of_failed_rollouts_stops_with_a_message(monkeypatch):
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    def all_failed(self, metrics, timing_raw, sample_batch_size):
        raise RuntimeError("Sync replay buffer selected terminal groups with no materializable trajectories.")

    monkeypatch.setattr(PPOTrainerSync, "_step_once", all_failed)
    trainer = _bare_trainer()
    trainer.global_steps = 7
    with pytest.raises(
        RuntimeError, match=r"every rollout of step 7 failed.*Error in _run_prompt.*ground_truth"
    ):
        trainer._step_once({}, {}, 4)

    def other(self, metrics, timing_raw, sample_batch_size):
        raise RuntimeError("something else")

    monkeypatch.setattr(PPOTrainerSync, "_step_once", other)
    with pytest.raises(RuntimeError, match="^something else$"):
        trainer._step_once({}, {}, 4)


def test_dynamic_micro_batches_count_the_answer_copies():
    """verl's dynamic batching sees the un-extended lengths; with the copies appended a micro-batch
    would exceed its token budget. Ours partitions by the extended lengths (verl's own partitioner)."""
    from verl.workers.engine.utils import prepare_micro_batches

    from igpo.verl.engine import micro_batches_counting_copies
    from igpo.verl.ig_recompute import copy_token_counts

    lens, budget = [60, 60, 60, 60], 240
    # 3 copies per row (prompt + 2 tool turns); a copy is fed up to its last scored token, which is
    # only predicted (index 9 here): 9 tokens each
    mask = torch.tensor([False, False] + [True] * 8 + [False, False, False])
    pes = [[20, 35, 50]] * 4
    assert copy_token_counts(pes, [mask] * 4) == [27, 27, 27, 27]
    data = TensorDict(
        {
            "input_ids": torch.nested.as_nested_tensor(
                [torch.arange(n) + 100 * i for i, n in enumerate(lens)], layout=torch.jagged
            ),
            "igpo_prefix_ends": torch.nested.as_nested_tensor(
                [torch.tensor(p) for p in pes], layout=torch.jagged
            ),
            "igpo_score_mask": torch.nested.as_nested_tensor([mask.long()] * 4, layout=torch.jagged),
            "igpo_copy_ids": torch.nested.as_nested_tensor(
                [torch.ones(13, dtype=torch.long)] * 4, layout=torch.jagged
            ),
        },
        batch_size=[4],
    )
    tu.assign_non_tensor(data, use_dynamic_bsz=True, max_token_len_per_gpu=budget, sp_size=1)

    plain, _ = prepare_micro_batches(data=data, same_micro_num_in_dp=False)
    assert len(plain) == 1  # verl alone: 240 tokens fit; with copies the forward would run 348

    micro, idx = micro_batches_counting_copies(data, same_micro_num_in_dp=False)
    assert sorted(i for part in idx for i in part) == [0, 1, 2, 3]
    for mb, part in zip(micro, idx, strict=True):
        assert sum(lens[i] + 27 for i in part) <= budget
        assert [int(r[0]) for r in mb["input_ids"].unbind()] == [100 * i for i in part]  # the real rows
    assert len(micro) == 2

    tu.assign_non_tensor(data, use_dynamic_bsz=False, micro_batch_size_per_gpu=2)
    fixed, _ = micro_batches_counting_copies(data, same_micro_num_in_dp=False)
    assert len(fixed) == 2  # fixed micro-batch sizes: verl's behaviour unchanged


def test_copy_aware_batching_patch_is_scoped_to_the_block():
    import verl.workers.engine.fsdp.transformer_impl as impl

    from igpo.verl.engine import copy_aware_micro_batching

    original = impl.prepare_micro_batches
    with copy_aware_micro_batching():
        assert impl.prepare_micro_batches is not original
    assert impl.prepare_micro_batches is original
