"""A byte-level BPE tokenizer with Qwen2's pre-tokenizer and hand-picked merges (built locally).

Qwen2 / Qwen2.5 split text with the regex below, then map bytes to the ByteLevel alphabet without a
second regex split (``use_regex=False``); offsets index the original characters. The merges are given
explicitly so a test decides which pairs *could* join, e.g. ``">" + "P"``: whether they do then depends
only on the pre-tokenizer, as with the real tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence

#: The split regex of Qwen2 / Qwen2.5's ``tokenizer.json``.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: Merges in rank order (ByteLevel symbols: "Ċ" is "\n", "Ġ" is " "). The first three could straddle a
#: tag and an answer: ">P" in "<answer>Paris", "ĊP" in ">\nParis", "sĊ" in "Paris\n<".
DEFAULT_MERGES: tuple[tuple[str, str], ...] = (
    (">", "P"),
    ("Ċ", "P"),
    ("s", "Ċ"),
    (">P", "a"),
    ("Ġ", "P"),
    ("ĠP", "a"),
    ("P", "a"),
    ("Pa", "r"),
    ("Par", "i"),
    ("Pari", "s"),
    (".", "Ċ"),
    (">", "Ċ"),
)


def qwen2_bpe_tokenizer(merges: Sequence[tuple[str, str]] = DEFAULT_MERGES, split: bool = True):
    """A ``PreTrainedTokenizerFast``: the 256 byte symbols, one token per merge and ``<|endoftext|>``.

    ``split=False`` drops the regex split (the whole text is one pre-token), to show which merges the
    regex is what prevents.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if split:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens(["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def scored_pieces(tokenizer, text: str, start: int, end: int) -> list[str]:
    """The text of every token overlapping ``text[start:end]`` (what the score mask takes)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [text[s:e] for s, e in enc["offset_mapping"] if s < end and e > start]
