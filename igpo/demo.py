"""A one-minute look at the IGPO core on CPU: outcome rewards, turn-level IG, GRPO vs IGPO advantages.

Four questions, four rollouts each, written as text the way an agent would; per-turn information gains
are given (the real ones come from the policy's forward pass, :mod:`igpo.info_gain`). Prints, per
group, the outcome F1 and the advantage each turn receives under GRPO and under IGPO, and the share of
groups whose advantages collapse to zero (the paper's Fig. 1 quantity).

Run: ``python -m igpo.demo``
"""

from __future__ import annotations

import numpy as np
import torch

from igpo.advantage import compute_igpo_advantage
from igpo.answer import outcome_reward
from igpo.metrics import zero_advantage_group_share
from igpo.turns import turn_index

CALL = '<think>search it</think><tool_call>{"name": "search", "arguments": {"query": ["q"]}}</tool_call>'
RESP = "<tool_response>...</tool_response>"

# (question id, gold, [(n_search_turns, final answer, IG per search turn)] x 4 rollouts)
GROUPS = [
    (
        "q1 all correct",
        "Canberra",
        [(1, "Canberra", [0.9]), (2, "Canberra", [0.1, 0.8]), (1, "Canberra", [0.2]), (0, "Canberra", [])],
    ),
    (
        "q2 all wrong",
        "1912",
        [(1, "1915", [0.6]), (2, "1921", [-0.2, 0.1]), (1, "1911", [0.3]), (0, "1900", [])],
    ),
    (
        "q3 mixed",
        "Marie Curie",
        [
            (2, "Marie Curie", [0.4, 1.1]),
            (1, "Pierre Curie", [0.2]),
            (1, "Curie", [0.7]),
            (0, "Einstein", []),
        ],
    ),
    (
        "q4 malformed",
        "blue whale",
        [(1, "blue whale", [0.5]), (1, "whale", [0.2]), (1, "blue whale", [0.6]), (0, None, [])],
    ),
]


def build_batch():
    """Encode the rollouts per igpo.advantage's contract: 3 tokens per model turn, 2 per tool response."""
    rows, uids, texts = [], [], []
    for uid, gold, rollouts in GROUPS:
        for n_search, answer, igs in rollouts:
            text = (CALL + RESP) * n_search
            text += f"<think>done</think><answer>{answer}</answer>" if answer else "I think it is blue."
            r_out = outcome_reward(text, gold)
            mask, rew = [], []
            for ig in igs:
                mask += [1, 1, 1, 0, 0]
                rew += [0, 0, ig, 0, 0]
            mask += [1, 1, 1]
            rew += [0, 0, r_out]
            rows.append((mask, rew))
            uids.append(uid)
            texts.append((gold, answer, r_out))
    L = max(len(m) for m, _ in rows)
    mask = torch.zeros(len(rows), L)
    rew = torch.zeros(len(rows), L)
    for b, (m, r) in enumerate(rows):
        mask[b, : len(m)] = torch.tensor(m, dtype=torch.float32)
        rew[b, : len(r)] = torch.tensor(r)
    return rew, mask, np.array(uids, dtype=object), texts


def main() -> None:
    rew, mask, index, texts = build_batch()
    grpo, _ = compute_igpo_advantage(rew, mask, index, reward_mode="f1")
    igpo, _ = compute_igpo_advantage(rew, mask, index)
    run_id, n_turns = turn_index(mask)
    print("IGPO core demonstration (python -m igpo.demo): 4 groups x 4 rollouts\n")
    print(f"{'group':<16}{'answer':<14}{'F1/penalty':>11}  {'GRPO adv per turn':<24}{'IGPO adv per turn'}")
    for b in range(len(texts)):
        gold, answer, r = texts[b]
        cols = [
            " ".join(f"{adv[b][run_id[b] == t][0].item():+.2f}" for t in range(int(n_turns[b])))
            for adv in (grpo, igpo)
        ]
        print(f"{index[b]:<16}{str(answer):<14}{r:>11.2f}  {cols[0]:<24}{cols[1]}")
    g = zero_advantage_group_share(grpo, mask, index)
    i = zero_advantage_group_share(igpo, mask, index)
    print(f"\nzero-advantage groups: GRPO {g:.0%}, IGPO {i:.0%}  (groups whose rollouts all score the same")
    print("give GRPO no gradient; IGPO still ranks their turns by information gain)")


if __name__ == "__main__":
    main()
