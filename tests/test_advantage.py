"""IGPO estimator: hand-computed cases, a naive per-rollout reference, and equality with verl's GRPO."""

import math
import statistics

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, get_adv_estimator_fn

import igpo.verl  # noqa: F401  (registers the estimator)
from igpo.advantage import compute_igpo_advantage, decode_turn_rewards

EPS = 1e-6
S2 = math.sqrt(0.5)  # z-score of {1, 0}: (1 - 0.5) / sqrt(0.5)


def encode(rows: list[tuple[list[int], list[float], int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """rows: (mask, turn rewards, L). Puts turn t's reward on the last token of run t (the contract)."""
    L = max(len(m) for m, _, _ in rows)
    mask = torch.zeros(len(rows), L)
    rew = torch.zeros(len(rows), L)
    for b, (m, r, _) in enumerate(rows):
        mask[b, : len(m)] = torch.tensor(m, dtype=torch.float32)
        ends = [j for j in range(len(m)) if m[j] == 1 and (j + 1 == len(m) or m[j + 1] == 0)]
        assert len(ends) == len(r)
        for j, v in zip(ends, r, strict=True):
            rew[b, j] = v
    return rew, mask


# Two rollouts of one prompt. A: 3 turns, IG = [0.5, -0.3], outcome 1.0; B: 2 turns, IG = [0.1], outcome 0.
MASK_A = [1, 1, 0, 0, 1, 1, 0, 1, 1]
MASK_B = [1, 1, 1, 0, 0, 1, 1, 0, 0]


def two_rollouts():
    return encode([(MASK_A, [0.5, -0.3, 1.0], 9), (MASK_B, [0.1, 0.0], 9)])


def test_hand_computed_separate_gamma_1():
    rew, mask = two_rollouts()
    adv, ret = compute_igpo_advantage(rew, mask, np.array(["q", "q"], dtype=object))
    # IG set {0.5, -0.3, 0.1}: mean 0.1, unbiased std 0.4 -> z = 1, -1, 0 (up to eps)
    # outcome set {1, 0}: z = +S2, -S2
    # A: r~ = [1, -1, S2] -> R = [S2, S2 - 1, S2];  B: r~ = [0, -S2] -> R = [-S2, -S2]
    a1, a2, a3 = S2, S2 - 1, S2
    exp_a = [a1, a1, 0, 0, a2, a2, 0, a3, a3]
    exp_b = [-S2, -S2, -S2, 0, 0, -S2, -S2, 0, 0]
    torch.testing.assert_close(adv, torch.tensor([exp_a, exp_b]), atol=1e-5, rtol=0)
    assert ret is adv  # as verl's GRPO: returns == advantages


def test_hand_computed_gamma_half():
    rew, mask = two_rollouts()
    adv, _ = compute_igpo_advantage(rew, mask, ["q", "q"], gamma=0.5)
    # A: R3 = S2; R2 = -1 + 0.5 S2; R1 = 1 - 0.5 + 0.25 S2.  B: R2 = -S2; R1 = 0 + 0.5 (-S2)
    r1, r2, r3 = 1 - 0.5 + 0.25 * S2, -1 + 0.5 * S2, S2
    assert adv[0, 0].item() == pytest.approx(r1, abs=1e-5)
    assert adv[0, 4].item() == pytest.approx(r2, abs=1e-5)
    assert adv[0, 8].item() == pytest.approx(r3, abs=1e-5)
    assert adv[1, 0].item() == pytest.approx(-0.5 * S2, abs=1e-5)
    assert adv[1, 6].item() == pytest.approx(-S2, abs=1e-5)


def test_joint_normalization_hand_computed():
    rew, mask = two_rollouts()
    adv, _ = compute_igpo_advantage(rew, mask, ["q", "q"], norm="joint")
    xs = [0.5, -0.3, 1.0, 0.1, 0.0]  # all five rewards of the group in one set
    m, s = statistics.mean(xs), statistics.stdev(xs)
    z = [(x - m) / (s + EPS) for x in xs]
    assert adv[0, 0].item() == pytest.approx(z[0] + z[1] + z[2], abs=1e-5)
    assert adv[0, 4].item() == pytest.approx(z[1] + z[2], abs=1e-5)
    assert adv[1, 0].item() == pytest.approx(z[3] + z[4], abs=1e-5)


def test_ig_only_mode_zeroes_the_answer_turn():
    rew, mask = two_rollouts()
    adv, _ = compute_igpo_advantage(rew, mask, ["q", "q"], reward_mode="ig")
    # IG z = [1, -1] for A and [0] for B; answer turns get 0
    assert adv[0, 0].item() == pytest.approx(0.0, abs=1e-5)  # 1 + (-1) + 0
    assert adv[0, 4].item() == pytest.approx(-1.0, abs=1e-5)
    assert adv[0, 8].item() == 0.0
    assert adv[1, 0].item() == pytest.approx(0.0, abs=1e-5)
    assert adv[1, 6].item() == 0.0


def test_group_of_one_uses_mean_0_std_1():
    rew, mask = encode([([1, 1, 0, 1], [0.4, 0.7], 4)])
    adv, _ = compute_igpo_advantage(rew, mask, ["solo"])
    # single IG value 0.4 -> (0.4 - 0) / (1 + eps); single outcome 0.7 -> 0.7 / (1 + eps)
    assert adv[0, 0].item() == pytest.approx((0.4 + 0.7) / (1 + EPS), abs=1e-6)
    assert adv[0, 3].item() == pytest.approx(0.7 / (1 + EPS), abs=1e-6)
    assert adv[0, 2].item() == 0.0


def test_all_equal_outcomes_collapse_in_f1_but_not_with_ig():
    rows = [([1, 0, 1], [0.2, 1.0], 3), ([1, 0, 1], [-0.2, 1.0], 3), ([1, 0, 1], [0.0, 1.0], 3)]
    rew, mask = encode(rows)
    grpo, _ = compute_igpo_advantage(rew, mask, ["g"] * 3, reward_mode="f1")
    assert torch.count_nonzero(grpo) == 0
    igpo, _ = compute_igpo_advantage(rew, mask, ["g"] * 3)
    # IG {0.2, -0.2, 0}: mean 0, std 0.2 -> z = 1, -1, 0; outcome z = 0
    torch.testing.assert_close(igpo[:, 0], torch.tensor([1.0, -1.0, 0.0]), atol=1e-5, rtol=0)
    assert torch.count_nonzero(igpo[:, 2]) == 0


def test_answer_at_once_and_exact_zero_ig_keeps_turns():
    # row 0 answers at once (one run); row 1 has IG exactly 0.0, which must not merge its two turns
    rew, mask = encode([([1, 1, 1, 0], [1.0], 4), ([1, 0, 1, 1], [0.0, 0.0], 4)])
    turns = decode_turn_rewards(rew, mask)
    assert turns.n_turns.tolist() == [1, 2]
    assert turns.is_ig.tolist() == [[False, False], [True, False]]
    adv, _ = compute_igpo_advantage(rew, mask, ["g", "g"])
    # outcomes {1, 0}: z = +-S2; IG set {0.0} single -> 0/(1+eps) = 0
    torch.testing.assert_close(adv[0], torch.tensor([S2, S2, S2, 0.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(adv[1], torch.tensor([-S2, 0.0, -S2, -S2]), atol=1e-5, rtol=0)


def test_truncated_rollout_outcome_on_trailing_env_token():
    # A truncated rollout ends with a tool response: the loop wrote the outcome (format penalty) on the
    # last response token, which is an environment token. It still belongs to the last turn.
    mask = torch.tensor([[1, 1, 0, 1, 0, 0], [1, 0, 1, 1, 0, 0]], dtype=torch.float32)
    rew = torch.zeros(2, 6)
    rew[0, 1], rew[0, 5] = 0.3, -1.0  # IG of turn 1, outcome after the last run
    rew[1, 0], rew[1, 3] = 0.1, 0.5
    turns = decode_turn_rewards(rew, mask)
    torch.testing.assert_close(turns.outcome, torch.tensor([-1.0, 0.5], dtype=torch.float64))
    adv, _ = compute_igpo_advantage(rew, mask, ["g", "g"])
    assert adv[0, 4].item() == 0.0 and adv[0, 5].item() == 0.0  # env tokens get nothing
    assert adv[0, 3].item() == pytest.approx(-S2, abs=1e-5)


def test_row_without_model_tokens_keeps_its_outcome_in_the_group():
    mask = torch.tensor([[0, 0, 0], [1, 1, 0]], dtype=torch.float32)
    rew = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    adv, _ = compute_igpo_advantage(rew, mask, ["g", "g"])
    assert torch.count_nonzero(adv[0]) == 0
    assert adv[1, 0].item() == pytest.approx(S2, abs=1e-5)


def naive_igpo(rew, mask, index, gamma, mode="f1+ig", norm="separate"):
    """Per-rollout Python reference, written from the paper's Eq. 5-6 independently of the module."""
    bs, L = rew.shape
    per_row = []
    for b in range(bs):
        m = mask[b].tolist()
        runs, cur = [], None
        for j, v in enumerate(m):
            if v and cur is None:
                cur = [j, j]
            elif v:
                cur[1] = j
            if not v and cur is not None:
                runs.append(cur)
                cur = None
        if cur is not None:
            runs.append(cur)
        vals = [rew[b, e].item() for _, e in runs]
        per_row.append((runs, vals[:-1], vals[-1] if vals else 0.0))

    def z(values):
        if len(values) == 1:
            return [values[0] / (1 + EPS)]
        mu, sd = statistics.mean(values), statistics.stdev(values)
        return [(v - mu) / (sd + EPS) for v in values]

    normed = [None] * bs
    for g in set(index):
        rows = [b for b in range(bs) if index[b] == g]
        igs = [(b, t, v) for b in rows for t, v in enumerate(per_row[b][1])]
        outs = [(b, per_row[b][2]) for b in rows]
        for b in rows:
            normed[b] = [0.0] * len(per_row[b][0])
        if mode in ("f1+ig", "ig") and norm == "separate" or mode == "ig":
            for (b, t, _), zz in zip(igs, z([v for _, _, v in igs]) if igs else [], strict=True):
                normed[b][t] = zz
        if mode in ("f1+ig", "f1") and (norm == "separate" or mode == "f1"):
            for (b, _), zz in zip(outs, z([v for _, v in outs]), strict=True):
                if normed[b]:
                    normed[b][-1] = zz
        if mode == "f1+ig" and norm == "joint":
            allv = [(b, t, v) for b, t, v in igs] + [(b, len(per_row[b][0]) - 1, v) for b, v in outs]
            for (b, t, _), zz in zip(allv, z([v for _, _, v in allv]), strict=True):
                if normed[b]:
                    normed[b][t] = zz
    adv = torch.zeros(bs, L)
    for b in range(bs):
        runs, r = per_row[b][0], normed[b]
        for t, (s, e) in enumerate(runs):
            ret = sum(gamma ** (k - t) * r[k] for k in range(t, len(runs)))
            adv[b, s : e + 1] = ret
    return adv


def random_batch(seed, bs=12, L=40, groups=3):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(bs, L)
    for b in range(bs):
        j = 0
        n_turns = int(torch.randint(1, 5, (1,), generator=g))
        for _ in range(n_turns):
            gen = int(torch.randint(1, 5, (1,), generator=g))
            env = int(torch.randint(1, 4, (1,), generator=g))
            if j + gen > L:
                break
            mask[b, j : j + gen] = 1
            j += gen + env
    _, ends = __import__("igpo.turns", fromlist=["x"]).run_starts_ends(mask)
    rew = torch.where(ends, torch.randn(bs, L, generator=g), torch.zeros(bs, L))
    index = np.array([f"p{b % groups}" for b in range(bs)], dtype=object)
    return rew, mask, index


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("gamma", [1.0, 0.9])
@pytest.mark.parametrize(
    "mode,norm", [("f1+ig", "separate"), ("f1+ig", "joint"), ("f1", "separate"), ("ig", "separate")]
)
def test_matches_naive_reference(seed, gamma, mode, norm):
    rew, mask, index = random_batch(seed)
    adv, _ = compute_igpo_advantage(rew, mask, index, gamma=gamma, reward_mode=mode, norm=norm)
    torch.testing.assert_close(
        adv, naive_igpo(rew, mask, list(index), gamma, mode, norm), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("seed", range(3))
def test_f1_mode_equals_verl_grpo(seed):
    rew, mask, index = random_batch(seed)
    # GRPO scores the sum of rewards: give it the outcome-only batch (IG zeroed, as ig_source=none does)
    turns = decode_turn_rewards(rew, mask)
    outcome_only = torch.zeros_like(rew)
    _, ends = __import__("igpo.turns", fromlist=["x"]).run_starts_ends(mask)
    last_end = (ends.long() * torch.arange(rew.shape[1])).argmax(dim=1)
    outcome_only[torch.arange(rew.shape[0]), last_end] = turns.outcome.float()
    grpo, _ = compute_grpo_outcome_advantage(outcome_only, mask, index)
    ours_same, _ = compute_igpo_advantage(outcome_only, mask, index, reward_mode="f1")
    ours_with_ig, _ = compute_igpo_advantage(rew, mask, index, reward_mode="f1")
    torch.testing.assert_close(ours_same, grpo, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_with_ig, grpo, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "config",
    [
        {"gamma": 0.5, "igpo": {"reward_mode": "f1+ig", "norm": "separate"}},
        OmegaConf.create({"gamma": 0.5, "use_kl_in_reward": False, "igpo": {"norm": "separate"}}),
    ],
)
def test_registered_estimator_reads_config(config):
    rew, mask = two_rollouts()
    fn = get_adv_estimator_fn("igpo")
    adv, ret = fn(
        token_level_rewards=rew, response_mask=mask, index=np.array(["q", "q"], dtype=object), config=config
    )
    expected, _ = compute_igpo_advantage(rew, mask, ["q", "q"], gamma=0.5)
    torch.testing.assert_close(adv, expected)
    assert adv.shape == ret.shape == (2, 9)


def test_registered_estimator_with_verl_algo_config_defaults():
    rew, mask = two_rollouts()
    adv, _ = get_adv_estimator_fn("igpo")(
        token_level_rewards=rew,
        response_mask=mask,
        index=np.array(["q", "q"], dtype=object),
        config=AlgoConfig(),
    )
    torch.testing.assert_close(adv, compute_igpo_advantage(rew, mask, ["q", "q"])[0])


def test_clear_errors():
    rew, mask = two_rollouts()
    fn = get_adv_estimator_fn("igpo")
    idx = np.array(["q", "q"], dtype=object)
    with pytest.raises(ValueError, match="use_kl_in_reward"):
        fn(token_level_rewards=rew, response_mask=mask, index=idx, config={"use_kl_in_reward": True})
    with pytest.raises(
        ValueError, match=r"algorithm.igpo.reward_mode='bogus' is not allowed: expected one of 'f1\+ig'"
    ):
        fn(token_level_rewards=rew, response_mask=mask, index=idx, config={"igpo": {"reward_mode": "bogus"}})
    with pytest.raises(ValueError, match="unknown keys.*normm"):
        fn(token_level_rewards=rew, response_mask=mask, index=idx, config={"igpo": {"normm": "joint"}})
    with pytest.raises(ValueError, match="gamma"):
        compute_igpo_advantage(rew, mask, idx, gamma=0.0)
    with pytest.raises(ValueError, match="index has 3 entries"):
        compute_igpo_advantage(rew, mask, ["a", "b", "c"])
    with pytest.raises(ValueError, match="uid"):
        fn(token_level_rewards=rew, response_mask=mask, config=None)
