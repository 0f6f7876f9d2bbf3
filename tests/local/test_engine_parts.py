"""Pieces of the local engine against independent computations: reward encoding, log-probs, sampling."""

import asyncio

import pytest
import torch

from igpo.advantage import decode_turn_rewards
from igpo.local.engine import encode_turn_rewards, load_config, sequence_logprobs
from igpo.local.generation import LockstepBatcher, sample_batch
from igpo.local.tiny_policy import build_policy, build_tokenizer
from igpo.rollout import Episode, TurnRecord

TEXTS = ["<think>search kavo merin</think><answer>telrad</answer> kavo merin was born in telrad. a b c d e f"]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(TEXTS)


@pytest.fixture(scope="module")
def model(tok):
    m = build_policy(tok, hidden_size=32, layers=2, heads=2, seed=1)
    m.eval()
    return m


def _episode(mask, turn_spans):
    ep = Episode(
        prompt_ids=[1],
        response_ids=[5] * len(mask),
        response_mask=list(mask),
        response_logprobs=None,
        tool_turn_ends=[],
        response_text="",
        num_turns=len(turn_spans),
    )
    ep.turns = [TurnRecord(index=i, start=s, end=e, kind="") for i, (s, e) in enumerate(turn_spans)]
    return ep


def test_encode_turn_rewards_follows_the_contract():
    # turn spans [0,2) [4,6) [7,8): IG of turns 1 and 2 on positions 1 and 5, outcome on 7
    ep = _episode([1, 1, 0, 0, 1, 1, 0, 1], [(0, 2), (4, 6), (7, 8)])
    single = _episode([1, 1, 1], [(0, 3)])
    rewards, mask = encode_turn_rewards(
        [ep, single], [0.5, -1.0], [torch.tensor([0.0, 0.25]), torch.tensor([])], 9
    )
    expected = torch.zeros(2, 9)
    expected[0, 1], expected[0, 5], expected[0, 7] = 0.0, 0.25, 0.5
    expected[1, 2] = -1.0
    torch.testing.assert_close(rewards, expected)
    assert mask[0].tolist() == [1, 1, 0, 0, 1, 1, 0, 1, 0]
    turns = decode_turn_rewards(rewards, mask)  # the estimator reads back exactly what was written
    assert turns.n_turns.tolist() == [3, 1]
    torch.testing.assert_close(turns.outcome, torch.tensor([0.5, -1.0], dtype=torch.float64))
    assert turns.rewards[0, :2].tolist() == [0.0, 0.25]


def test_sequence_logprobs_equal_separate_forwards(model):
    seqs = [[3, 4, 5, 6, 7], [8, 9, 10], [3, 3, 3, 3, 3, 3, 3]]
    batched = sequence_logprobs(model, seqs, pad_id=1)
    for s, lp in zip(seqs, batched, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([s])).logits[0]
        ref = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(s[1:]).unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(lp.detach(), ref, atol=1e-5, rtol=1e-5)


def test_greedy_sample_batch_matches_step_by_step_argmax(model, tok):
    prompts = [[3, 4, 5], [6, 7, 8, 9, 10, 11]]  # different lengths: left padding must not change results
    out = sample_batch(model, prompts, [6, 4], [torch.Generator(), torch.Generator()], tok, temperature=0.0)
    for p, o, n in zip(prompts, out, [6, 4], strict=True):
        ids = list(p)
        for _ in range(n):
            with torch.no_grad():
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        assert o == ids[len(p) :]


def test_sampling_does_not_depend_on_batch_mates(model, tok):
    prompt = [3, 4, 5]
    alone = sample_batch(model, [prompt], [8], [torch.Generator().manual_seed(7)], tok, temperature=1.0)[0]
    with_mate = sample_batch(
        model,
        [[9, 9, 9, 9, 9], prompt],
        [8, 8],
        [torch.Generator().manual_seed(99), torch.Generator().manual_seed(7)],
        tok,
        temperature=1.0,
    )[1]
    assert alone == with_mate


class _Always(torch.nn.Module):
    """A stand-in LM whose next token is always ``token`` (cache-free)."""

    def __init__(self, token: int, vocab: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.token, self.vocab = token, vocab

    def forward(self, input_ids, **kwargs):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.token] = 10.0
        return type("Out", (), {"logits": logits, "past_key_values": None})()


def test_stop_string_and_eos_end_a_row(tok):
    stop_id = tok.convert_tokens_to_ids("</answer>")
    out = sample_batch(
        _Always(stop_id, len(tok)),
        [[3, 4]],
        [10],
        [torch.Generator()],
        tok,
        stop=["</answer>"],
        temperature=0.0,
    )
    assert out == [[stop_id]]
    eos = tok.eos_token_id
    out = sample_batch(_Always(eos, len(tok)), [[3]], [10], [torch.Generator()], tok, eos_token_ids=[eos])
    assert out == [[eos]]
    word = tok.convert_tokens_to_ids(" kavo")
    out = sample_batch(_Always(word, len(tok)), [[3]], [4], [torch.Generator()], tok, stop=["</answer>"])
    assert out == [[word] * 4]  # no stop: runs to its budget


def test_lockstep_batcher_batches_all_live_episodes(model, tok):
    batcher = LockstepBatcher(model, tok, {0: 1, 1: 2, 2: 3}, temperature=1.0)

    async def episode(k, turns):
        gen = batcher.for_episode(k)
        outs = []
        for _ in range(turns):
            outs.append(await gen([3, 4, 5], 3, []))
        batcher.finished(k)
        return outs

    async def main():
        return await asyncio.gather(episode(0, 2), episode(1, 1), episode(2, 3))

    outs = asyncio.run(main())
    assert [len(o) for o in outs] == [2, 1, 3]
    assert batcher.batches == 3  # rounds of 3, 2 and 1 live episodes
    # the same seeds give the same tokens when each episode runs alone
    solo = LockstepBatcher(model, tok, {2: 3}, temperature=1.0)

    async def alone():
        return await episode_solo(solo)

    async def episode_solo(b):
        gen = b.for_episode(2)
        res = [await gen([3, 4, 5], 3, []) for _ in range(3)]
        b.finished(2)
        return res

    assert asyncio.run(alone()) == outs[2]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(Exception, match="stepz"):
        load_config(None, ["stepz=3"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["steps"])
    with pytest.raises(ValueError, match="group_size"):
        load_config(None, ["group_size=0"])
    assert load_config(None, ["steps=3", "reward_mode=f1"]).steps == 3
