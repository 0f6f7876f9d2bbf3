"""docs/metrics.md documents exactly the igpo/* and time/igpo_* names the code emits."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from igpo.metrics import gold_turn_credit
from igpo.verl.ig_metrics import ig_time_share, igpo_step_metrics

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def emitted_names() -> set[str]:
    """Every name the verl trainer's metric functions emit, with every optional input given, and the
    embedded default's credit-assignment ones."""
    mask = torch.tensor([[1, 1, 0, 1], [1, 1, 0, 1]])
    tlr = torch.zeros(2, 4)
    tlr[0, 1], tlr[0, 3], tlr[1, 1], tlr[1, 3] = 0.2, 1.0, -0.2, 0.0
    extra = [
        {"reward_extra_info": {"f1": 1.0, "format_ok": 1.0}, "turns": 2, "tool_calls": 1, "tool_errors": 0}
    ] * 2
    m = igpo_step_metrics(
        tlr,
        mask,
        np.array(["a", "a"], dtype=object),
        tlr.clone(),
        extra,
        answer_lp=[torch.tensor([-2.0, -1.0])] * 2,
        seq_lens=[10, 10],
        copy_tokens=8,
        timings={"driver": 0.1, "engine": 0.2},
    )
    m.update(ig_time_share(m, 3.0))
    m.update(gold_turn_credit(tlr, mask, [0, None], [True, False]))
    return set(m)


def documented_names() -> set[str]:
    return set(re.findall(r"^\| `((?:igpo|time)/[^`]+)` \|", DOC.read_text(), re.M))


def test_every_emitted_metric_is_documented_and_every_documented_one_emitted():
    emitted, documented = emitted_names(), documented_names()
    assert emitted - documented == set(), "document these in docs/metrics.md"
    assert documented - emitted == set(), "docs/metrics.md names metrics nobody emits"
    assert ig_time_share({}, 3.0) == {}  # no IG this step: no share
