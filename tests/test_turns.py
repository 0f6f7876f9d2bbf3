"""Hand-computed checks of igpo.turns (the encoding contract shared with igpo.advantage)."""

import pytest
import torch

from igpo.turns import (
    prefix_ends_from_mask,
    prefix_ends_from_turn_ends,
    run_starts_ends,
    segment_index,
    turn_index,
    turn_spans,
)

MASK = torch.tensor(
    [
        # 0  1  2  3  4  5  6  7  8  9 10 11
        [0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    ]
)


def test_run_starts_ends():
    starts, ends = run_starts_ends(MASK)
    assert starts[0].nonzero().reshape(-1).tolist() == [1, 5, 7]
    assert ends[0].nonzero().reshape(-1).tolist() == [2, 5, 9]
    assert starts[1].nonzero().reshape(-1).tolist() == [0]
    assert ends[1].nonzero().reshape(-1).tolist() == [3]
    s1, e1 = run_starts_ends(MASK[0])  # 1-D input
    assert torch.equal(s1, starts[0]) and torch.equal(e1, ends[0])


def test_turn_index():
    run_id, n = turn_index(MASK)
    assert run_id[0].tolist() == [-1, 0, 0, -1, -1, 1, -1, 2, 2, 2, -1, -1]
    assert run_id[1].tolist() == [0, 0, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1]
    assert n.tolist() == [3, 1]
    _, n0 = turn_index(torch.zeros(1, 4))
    assert n0.tolist() == [0]


def test_segment_index():
    seg = segment_index(MASK)
    assert seg[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    assert seg[1].tolist() == [0] * 12
    assert segment_index(torch.zeros(1, 3)).tolist() == [[0, 0, 0]]


def test_turn_spans():
    assert turn_spans(MASK[0]) == [(1, 3), (5, 6), (7, 10)]
    assert turn_spans([1, 1, 0, 1]) == [(0, 2), (3, 4)]
    assert turn_spans([0, 0]) == []


def test_prefix_ends_from_mask():
    # prompt of 4 tokens; turns start at 1, 5, 7 -> prefix ends 4, 4 + 5, 4 + 7
    assert prefix_ends_from_mask(MASK[0], prompt_len=4) == [4, 9, 11]
    assert prefix_ends_from_mask(MASK[1], prompt_len=4) == [4]
    assert prefix_ends_from_mask([0, 0, 0], prompt_len=2) == [2]
    with pytest.raises(ValueError, match="prompt_len"):
        prefix_ends_from_mask(MASK[0], prompt_len=-1)


def test_prefix_ends_from_turn_ends():
    assert prefix_ends_from_turn_ends(4, [5, 7], 12) == [4, 9, 11]
    assert prefix_ends_from_turn_ends(3, [], 5) == [3]
    # consistent with the mask form: tool turn k ends where turn k + 1 starts
    assert prefix_ends_from_turn_ends(
        4, [s for s, _ in turn_spans(MASK[0])[1:]], 12
    ) == prefix_ends_from_mask(MASK[0], 4)
    with pytest.raises(ValueError, match=r"tool_turn_ends\[1\] = 5"):
        prefix_ends_from_turn_ends(4, [5, 5], 12)
    with pytest.raises(ValueError, match=r"tool_turn_ends\[0\] = 13"):
        prefix_ends_from_turn_ends(4, [13], 12)
    with pytest.raises(ValueError, match="integer"):
        prefix_ends_from_turn_ends(4, [2.5], 12)
    with pytest.raises(ValueError, match="prompt_len"):
        prefix_ends_from_turn_ends(-2, [1], 12)
