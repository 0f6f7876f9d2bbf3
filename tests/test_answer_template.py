"""The answer wrapper information gain scores: the default follows the system prompt's layout, and the
start-up check refuses a template under which a scored token holds tag text (Qwen2-style BPE built here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from igpo.info_gain import (
    AnswerTemplateError,
    answer_copy,
    check_answer_template,
    information_gain,
    packed_logprobs_with_copies,
    sample_answers,
    token_logprobs,
)
from igpo.prompts import ANSWER_WRAPPER, INLINE_ANSWER_WRAPPER, system_prompt, wrap_answer

_TESTS = Path(__file__).resolve().parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from helpers.qwen2_bpe import qwen2_bpe_tokenizer, scored_pieces  # noqa: E402
from helpers.tiny import small_decoder_config  # noqa: E402

ANSWERS = ["Paris", "Pa", "Washington, D.C.", "1984", "Paris Hilton", '"Hey Jude"']


@pytest.fixture(scope="module")
def tok():
    return qwen2_bpe_tokenizer()


# ------------------------------------------------------------------------------------------------
# The default wrapper
# ------------------------------------------------------------------------------------------------


def test_default_wrapper_follows_the_system_prompts_layout():
    """Each tag on its own line, as the '# Rollout' block of the system prompt shows it."""
    prompt = system_prompt(today="2025-01-01")
    shown = prompt[prompt.index("# Rollout\n") + len("# Rollout\n") :].split("\n")[:6]
    ours = ANSWER_WRAPPER.split("\n")
    assert [ln for ln in ours if ln.startswith("<")] == [ln for ln in shown if ln.startswith("<")]
    assert ours == [
        "<think>",
        "Now there's enough information to answer",
        "</think>",
        "<answer>",
        "{answer}",
        "</answer>",
    ]
    # the paper's inline example stays available
    assert (
        INLINE_ANSWER_WRAPPER
        == "<think>Now there's enough information to answer</think><answer>{answer}</answer>"
    )
    text, (s, e) = wrap_answer("Paris", INLINE_ANSWER_WRAPPER)
    assert text[s:e] == "Paris" and text.endswith("<answer>Paris</answer>")


def test_answer_copy_defaults_to_the_wrapper(tok):
    ids, mask = answer_copy(tok, "Paris")
    text, _ = wrap_answer("Paris")
    assert tok.decode(ids) == text
    assert tok.convert_ids_to_tokens(ids[mask].tolist()) == ["Paris"]


# ------------------------------------------------------------------------------------------------
# The check
# ------------------------------------------------------------------------------------------------


def test_inline_template_is_caught_naming_template_answer_and_token(tok):
    text, (s, e) = wrap_answer("Paris", INLINE_ANSWER_WRAPPER)
    assert (
        scored_pieces(tok, text, s, e)[0] == ">Pa"
    )  # the problem: the first scored token holds the tag's '>'
    with pytest.raises(AnswerTemplateError) as err:
        check_answer_template(tok, INLINE_ANSWER_WRAPPER, ["1984", "Paris"], "algorithm.igpo.answer_template")
    msg = str(err.value)
    assert "algorithm.igpo.answer_template=" + repr(INLINE_ANSWER_WRAPPER) in msg
    assert "'Paris'" in msg and "'>Pa'" in msg and "'>'" in msg
    assert "line break" in msg and repr(ANSWER_WRAPPER) in msg
    assert isinstance(err.value, ValueError)


def test_default_passes_and_its_line_breaks_block_every_straddling_merge(tok):
    check_answer_template(tok, ANSWER_WRAPPER, ANSWERS)
    text, (s, e) = wrap_answer("Paris")
    assert scored_pieces(tok, text, s, e) == ["Paris"]
    # The merges "\n"+"P" and "s"+"\n" are in the vocabulary and live: without Qwen2's split regex
    # they straddle the line breaks. With it, "\n" is its own pre-token (or ends ">\n"), so they cannot.
    plain = qwen2_bpe_tokenizer(split=False)
    assert scored_pieces(plain, text, s, e) == ["\nP", "a", "r", "i", "s\n"]
    for answer in ANSWERS:  # the scored tokens are the answer's own (".\n" is the whitespace case below)
        if not answer.endswith("."):
            ids, mask = answer_copy(tok, answer)
            assert ids[mask].tolist() == tok(answer, add_special_tokens=False)["input_ids"]


def test_whitespace_next_to_the_answer_is_allowed(tok):
    """A trailing '.\\n' (Qwen2 keeps line breaks with punctuation) or a word's leading space is how the
    agent writes the answer, not tag text."""
    text, (s, e) = wrap_answer("Washington, D.C.")
    assert scored_pieces(tok, text, s, e)[-1] == ".\n"
    spaced = "<answer> {answer} </answer>"
    text, (s, e) = wrap_answer("Paris", spaced)
    assert scored_pieces(tok, text, s, e)[0] == " Pa"
    check_answer_template(tok, spaced, ["Paris", "Washington, D.C."])


def test_scored_tokens_that_differ_from_the_answers_own_are_caught():
    """A WordPiece tokenizer: "xParis" gives "x", "##Paris" (no token straddles, but the answer's token
    differs from "Paris", its token on its own)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "x", "Paris", "##Paris", "<", ">", "/", "answer"])}
    wp = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok = PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]")
    check_answer_template(tok, "<answer> {answer} </answer>", ["Paris"])
    with pytest.raises(
        AnswerTemplateError, match=r"scored tokens \['##Paris'\] differ .* own tokens \['Paris'\]"
    ):
        check_answer_template(tok, "x{answer}</answer>", ["Paris"])


def test_check_input_errors(tok):
    with pytest.raises(AnswerTemplateError, match="no gold answer"):
        check_answer_template(tok, ANSWER_WRAPPER, [])
    with pytest.raises(AnswerTemplateError, match="algorithm.igpo.answer_template must contain '{answer}'"):
        check_answer_template(tok, "<answer></answer>", ["Paris"], "algorithm.igpo.answer_template")


def test_sample_answers_is_distinct_and_fixed():
    answers = [f"a{i % 300}" for i in range(1000)] + ["", "  "]
    assert sample_answers(answers, k=500) == [f"a{i}" for i in range(300)]
    one = sample_answers(answers, k=20, seed=3)
    assert one == sample_answers(answers, k=20, seed=3) and len(set(one)) == 20


# ------------------------------------------------------------------------------------------------
# Information gain with the default: unchanged against the naive reference
# ------------------------------------------------------------------------------------------------


def _reference_lp(model, x: torch.Tensor, prefix_ends: list[int], tok, answer: str, template: str):
    """Eq. 3 from its definition: per prefix, a fresh forward over prefix + the template's text before
    the answer + the answer tokenized on its own; the mean log-prob of those answer tokens."""
    head = tok(template.partition("{answer}")[0], add_special_tokens=False)["input_ids"]
    own = tok(answer, add_special_tokens=False)["input_ids"]
    vals = []
    for p in prefix_ends:
        ids = torch.cat([x[:p], torch.tensor(head + own)])
        with torch.no_grad():
            logits = model(input_ids=ids[None]).logits[0]
        n = len(own)
        vals.append(token_logprobs(logits[-n - 1 : -1], ids[-n:]).mean())
    return torch.stack(vals)


def test_information_gain_of_the_default_equals_the_reference(tok):
    torch.manual_seed(0)
    cfg = small_decoder_config("qwen2", len(tok))
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").to(torch.float64).eval()
    g = torch.Generator().manual_seed(5)
    seqs = [torch.randint(0, len(tok), (n,), generator=g) for n in (23, 31)]
    pes = [[5, 12, 23], [9, 20, 26, 31]]
    for answer in ("Paris", "Paris Hilton"):
        copies, masks = zip(*[answer_copy(tok, answer) for _ in seqs], strict=True)
        with torch.no_grad():
            _, vec = packed_logprobs_with_copies(
                model, seqs, pes, list(copies), list(masks), with_token_logprobs=False
            )
            _, naive = packed_logprobs_with_copies(
                model, seqs, pes, list(copies), list(masks), method="naive", with_token_logprobs=False
            )
        for i, x in enumerate(seqs):
            ref = _reference_lp(model, x, pes[i], tok, answer, ANSWER_WRAPPER)
            torch.testing.assert_close(vec[i], naive[i], atol=1e-6, rtol=0)
            torch.testing.assert_close(vec[i], ref, atol=1e-6, rtol=0)
            torch.testing.assert_close(information_gain(vec[i]), information_gain(ref), atol=1e-6, rtol=0)
    # The inline template scores ">Pa" instead of the answer's own tokens: its values are not Eq. 3's.
    c, m = answer_copy(tok, "Paris", INLINE_ANSWER_WRAPPER)
    with torch.no_grad():
        _, inline = packed_logprobs_with_copies(model, seqs[:1], pes[:1], [c], [m], with_token_logprobs=False)
    ref = _reference_lp(model, seqs[0], pes[0], tok, "Paris", INLINE_ANSWER_WRAPPER)
    assert (inline[0] - ref).abs().max() > 1e-3
