"""The embedded default's policy: a word-level tokenizer and a small random-init Qwen2 model, built
locally (nothing is downloaded) and saved in the Hugging Face format, so the same loading code serves
a real checkpoint.

The tokenizer is word-level with exact round trips: the pre-tokenizer splits text into words with an
optional leading space (``" kavo"``), single punctuation marks with an optional leading space and runs
of whitespace; the decoder concatenates. (Keeping the space inside the word matters: with a separate
space token, the token before every name is the same space, and the tiny policy never learned to copy
a name from a passage within the warm-up budget.) The turn tags are single tokens. Text made of the task's
vocabulary decodes back to itself, so JSON tool calls survive generation; anything else becomes
``[UNK]``.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch

TAGS = (
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<answer>",
    "</answer>",
)
SPECIAL = ("[UNK]", "<|endoftext|>", "<|im_start|>", "<|im_end|>")
PIECE_RE = r" ?[A-Za-z0-9_]+| ?[^\sA-Za-z0-9_]|\s+"
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
_SPLIT_TAGS = re.compile("(" + "|".join(re.escape(t) for t in TAGS + SPECIAL) + ")")


def word_pieces(text: str) -> list[str]:
    """The pre-tokenizer's pieces of ``text`` (tags and special tokens kept whole)."""
    out: list[str] = []
    for part in _SPLIT_TAGS.split(text):
        if part in TAGS or part in SPECIAL:
            out.append(part)
        elif part:
            out.extend(re.findall(PIECE_RE, part))
    return out


def build_tokenizer(texts: Iterable[str], min_count: int = 1):
    """A word-level ``PreTrainedTokenizerFast`` whose vocabulary covers every piece of ``texts``.

    Args:
        texts: all text the task can show or ask the model to write.
        min_count: pieces seen fewer times become ``[UNK]``.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(p for p in word_pieces(text) if p not in TAGS and p not in SPECIAL)
    base = [c for c in string.punctuation] + [" " + c for c in string.punctuation] + [" ", "\n", "\n\n", "  "]
    vocab: dict[str, int] = {}
    for piece in list(SPECIAL) + base + sorted(p for p, n in counts.items() if n >= min_count):
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE_RE), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAGS])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def build_policy(
    tokenizer,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    max_positions: int = 4096,
):
    """A random-init ``Qwen2ForCausalLM`` sized for ``tokenizer`` (float32)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if hidden_size % heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of heads ({heads})")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def save_policy(model, tokenizer, path: str | Path) -> Path:
    """Save model and tokenizer in the Hugging Face layout (``from_pretrained`` loads it)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


#: The files of a saved tokenizer (``save_pretrained``), without the model's ``config.json``.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def copy_tokenizer(src: str | Path, dst: str | Path) -> list[Path]:
    """Copy the tokenizer files present in ``src`` into ``dst`` (created); returns the copies."""
    import shutil

    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(src / n, dst / n)) for n in TOKENIZER_FILES if (src / n).exists()]


def load_policy(path: str | Path, dtype: torch.dtype = torch.float32):
    """Load a saved policy and its tokenizer from a local folder (no hub access)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no Hugging Face model at {path} (config.json missing)")
    tokenizer_class = json.loads((path / "tokenizer_config.json").read_text()).get("tokenizer_class", "")
    if tokenizer_class in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        # A generic tokenizer.json (ours): AutoTokenizer would pick the model type's class (Qwen2Tokenizer)
        # and rebuild a byte-level BPE around our word vocabulary, which decodes words to nothing.
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    return model, tokenizer
