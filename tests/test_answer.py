"""Answer extraction, normalization, EM/F1 and the turn-format check, against hand-computed values."""

import numpy as np
import pytest

from igpo.answer import (
    as_gold_list,
    check_format,
    cover_exact_match,
    exact_match,
    extract_answer,
    f1_score,
    normalize_answer,
    outcome_reward,
)

CALL = '<tool_call>{"name": "search", "arguments": {"query": ["x"]}}</tool_call>'


def test_extract_answer_takes_last_and_strips():
    assert extract_answer("<answer> a </answer> then <answer>\n Paris \n</answer>") == "Paris"
    assert extract_answer("no tags here") is None
    assert extract_answer("<answer>unclosed") is None
    assert extract_answer("<answer></answer>") == ""


def test_normalize_answer():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize_answer("theory") == "theory"  # article removal works on whole words only


def test_f1_hand_computed():
    # pred tokens {cat, sat}; gold {cat, sat, down}: P = 2/2, R = 2/3, F1 = 2PR/(P+R) = 0.8
    assert f1_score("the cat sat", "cat sat down") == pytest.approx(0.8)
    # repeated tokens count as a multiset: pred [a1 a1 a1], gold [a1]: common 1, P = 1/3, R = 1 -> 0.5
    assert f1_score("x x x", "x") == pytest.approx(0.5)
    assert f1_score("paris", "london") == 0.0
    assert f1_score(None, "paris") == 0.0
    # maximized over aliases
    assert f1_score("new york city", ["NYC", "New York City"]) == 1.0


@pytest.mark.parametrize(
    "golds",
    [
        ["Barack Obama", "Obama"],
        ("Barack Obama", "Obama"),
        np.array(["Barack Obama", "Obama"], dtype=object),
        {"target": ["Barack Obama", "Obama"]},
        {"target": np.array(["Barack Obama", "Obama"])},
        "Barack Obama<|answer_split|>Obama",
    ],
)
def test_gold_containers(golds):
    assert as_gold_list(golds) == ["Barack Obama", "Obama"]
    assert exact_match("obama", golds) == 1.0
    assert f1_score("president obama", golds) == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_bad_gold_is_a_clear_error():
    with pytest.raises(ValueError, match="target"):
        as_gold_list({"answers": ["x"]})
    with pytest.raises(ValueError, match="no non-empty"):
        as_gold_list(["", "  "])
    with pytest.raises(ValueError, match="ground_truth"):
        as_gold_list(42)


def test_exact_and_cover_match():
    assert exact_match("The Beatles", "beatles") == 1.0
    assert exact_match("Beatles band", "beatles") == 0.0
    assert cover_exact_match("it was the Beatles band", "beatles") == 1.0
    assert cover_exact_match("beatlesque", "beatles") == 0.0


@pytest.mark.parametrize(
    ("pred", "golds"),
    [
        ("A", ["A"]),  # the alias is an article: both normalize to ""
        ("the", ["An", "Beatles"]),
        ("?", "!"),
        ("The Beatles", ["beatles"]),
        ("a", ["b"]),
        ("Beatles", ["A"]),
        ("", ["the"]),
    ],
)
def test_cover_em_is_never_below_em(pred, golds):
    assert cover_exact_match(pred, golds) >= exact_match(pred, golds)


def test_cover_em_of_aliases_that_normalize_to_nothing():
    assert exact_match("A", ["A"]) == 1.0 and cover_exact_match("A", ["A"]) == 1.0
    assert cover_exact_match("Beatles", ["A"]) == 0.0  # an empty alias is not "in" every prediction
    assert cover_exact_match("Beatles", ["A", "the beatles"]) == 1.0


def test_f1_differs_from_flashrag_on_yes_no():
    """FlashRAG gives F1 0 when either side normalizes to yes/no/noanswer and they differ; we do not."""
    assert f1_score("no", "no way") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert f1_score("yes", "yes") == 1.0


@pytest.mark.parametrize(
    "response",
    [
        "<think>easy</think><answer>Paris</answer>",
        f"<think>need info</think>\n{CALL}\n<tool_response>doc</tool_response>\n"
        "<think>found</think>\n<answer>Paris</answer>\n",
        f"<think>a</think>{CALL}<tool_response>d1</tool_response><think>b</think>{CALL}"
        "<tool_response>d2</tool_response><think>c</think><answer>x</answer>",
    ],
)
def test_check_format_accepts_the_turn_grammar(response):
    assert check_format(response) == (True, "ok")


@pytest.mark.parametrize(
    "response, reason",
    [
        ("", "empty"),
        ("<answer>Paris</answer>", "expected <think>"),
        ("<think>x</think>", "no final <answer>"),
        ("<think>x<answer>y</answer></think>", "inside unclosed <think>"),
        ("<think>x</think><answer>y", "never closed"),
        ("<think>x</think></answer>", "without a matching"),
        ("<think>x</think><tool_call>{bad json}</tool_call>", "not valid JSON"),
        ('<think>x</think><tool_call>{"arguments": {}}</tool_call>', "no string 'name'"),
        ('<think>x</think><tool_call>{"name": "s"}</tool_call>', "no 'arguments'"),
        ('<think>x</think><tool_call>{"name": "s", "arguments": [1]}</tool_call>', "must be a JSON object"),
        ("<think>x</think><answer>y</answer><think>z</think>", "after the final <answer>"),
        ("<think>x</think> stray words <answer>y</answer>", "text outside tags"),
        ("<think>x</think><answer>y</answer> trailing", "text outside tags at the end"),
        ("<think> </think><answer>y</answer>", "empty <think>"),
        (f"<think>x</think>{CALL}<think>y</think><answer>z</answer>", "expected <tool_response>"),
    ],
)
def test_check_format_rejects_with_a_reason(response, reason):
    ok, why = check_format(response)
    assert not ok
    assert reason in why


def test_outcome_reward_eq2():
    good = "<think>t</think><answer>the cat sat</answer>"
    assert outcome_reward(good, "cat sat down") == pytest.approx(0.8)
    assert outcome_reward("<answer>cat sat down</answer>", "cat sat down", format_penalty=-0.5) == -0.5
    with pytest.raises(ValueError, match="format_penalty"):
        outcome_reward(good, "x", format_penalty=0.1)
