"""Tiny, locally built stand-ins for a Qwen-style tokenizer, model and rollout server (CPU tests).

Nothing is downloaded:

* :func:`tiny_tokenizer` trains a byte-level BPE (a few hundred tokens) on a built-in corpus with the
  ``tokenizers`` library, adds the turn-grammar tags as single non-special tokens and the chat tokens
  ``<|im_start|>``/``<|im_end|>``/``<|endoftext|>`` as special ones, and wraps it in a transformers fast
  tokenizer with a Qwen-style chat template. Byte-level, so ``decode(encode(s)) == s`` for any text
  (JSON tool calls survive a round trip, unlike a whitespace word-level tokenizer).
* :func:`tiny_model` is a random-weight ``Qwen2ForCausalLM`` (hidden size 32, 2 layers).
* :class:`TinyServerManager` serves the model through the interface verl's agent loops call:
  ``await generate(request_id, prompt_ids=…, sampling_params=…) -> TokenOutput``; it honours
  ``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``stop`` (strings), ``logprobs``, ``seed`` and
  ``logit_bias`` (vLLM's spelling, used by tests to make a random model close its tags often).
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from igpo.local.tiny_policy import (  # the same tags and chat format as the embedded default
    CHAT_TEMPLATE,
    TAGS,
)

SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

_CORPUS = [
    "The capital of France is Paris. The capital of Australia is Canberra.",
    "Who wrote the novel? Search the local corpus for the answer and think about the question.",
    '{"name": "search", "arguments": {"query": ["capital of france", "paris population"]}}',
    '{"name": "web_search", "arguments": {"query": ["nobel prize physics"]}}',
    '{"name": "browse_webpage", "arguments": {"url_list": ["https://en.wikipedia.org/wiki/Paris"], "goal": "x"}}',
    "I need to search for more information. Now there's enough information to answer.",
    "Doc 1 (Title: Paris) Paris is the capital and largest city of France.",
    "You are an AI Assistant. Today is 2025-01-01. Use the tools to research the question.",
    "yes no one two three four five 1 2 3 4 5 6 7 8 9 0 [ ] { } ( ) : , . ; ! ? - _ / \" '",
]


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(SPECIAL),
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    return tok.to_str()


def tiny_tokenizer():
    """A fresh Qwen-style fast tokenizer (byte-level BPE, tags as single tokens, chat template)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def tiny_model(tokenizer, seed: int = 0, max_positions: int = 8192):
    """A random-weight ``Qwen2ForCausalLM`` sized for the tiny tokenizer (float32, eval mode)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.eval()
    return model


@dataclass
class _Output:
    """Duck type of verl's ``TokenOutput`` (token_ids, log_probs, stop_reason, …) for code that must
    not import verl (importing verl takes seconds); pass ``output_cls=TokenOutput`` for the real one."""

    token_ids: list[int]
    log_probs: list[float] | None = None
    stop_reason: str | None = None
    num_preempted: int | None = None
    routed_experts: Any = None
    extra_fields: dict[str, Any] = field(default_factory=dict)


class TinyServerManager:
    """Serves a (tiny) Hugging Face causal LM with the ``generate`` interface of verl's server manager.

    Sampling runs token by token with a KV cache in a worker thread, so the event loop stays free for
    tool calls. ``calls`` records every request (prompt length and the sampling params) for tests.
    ``output_cls``: the class of the returned object (default: a verl-free ``TokenOutput`` look-alike).
    """

    def __init__(self, model, tokenizer, default_max_tokens: int = 64, output_cls: type | None = None):
        self.model = model
        self.output_cls = output_cls or _Output
        self.tokenizer = tokenizer
        self.default_max_tokens = default_max_tokens
        self.calls: list[dict[str, Any]] = []

    async def generate(
        self, request_id: str, *, prompt_ids: Sequence[int], sampling_params: dict[str, Any], **kwargs: Any
    ):
        self.calls.append({"request_id": request_id, "prompt_len": len(prompt_ids), **sampling_params})
        ids, lps, reason = await asyncio.to_thread(self._sample, list(prompt_ids), dict(sampling_params))
        return self.output_cls(token_ids=ids, log_probs=lps, stop_reason=reason)

    def _sample(self, prompt_ids: list[int], sp: dict[str, Any]) -> tuple[list[int], list[float] | None, str]:
        import torch

        max_tokens = int(sp.get("max_tokens", sp.get("max_new_tokens", self.default_max_tokens)))
        if max_tokens < 1:
            raise ValueError(f"sampling_params.max_tokens must be >= 1, got {max_tokens}")
        temperature = float(sp.get("temperature", 1.0))
        top_p = float(sp.get("top_p", 1.0))
        top_k = int(sp.get("top_k", -1) or -1)
        stop = [s for s in (sp.get("stop") or []) if s]
        want_lp = bool(sp.get("logprobs", False))
        bias = {int(k): float(v) for k, v in (sp.get("logit_bias") or {}).items()}
        eos = {self.tokenizer.eos_token_id}
        gen = torch.Generator().manual_seed(int(sp.get("seed", 0)))

        out: list[int] = []
        lps: list[float] = []
        past = None
        inp = torch.tensor([prompt_ids])
        with torch.no_grad():
            for _ in range(max_tokens):
                res = self.model(input_ids=inp, past_key_values=past, use_cache=True)
                past = res.past_key_values
                logits = res.logits[0, -1].float()
                for k, v in bias.items():
                    logits[k] += v
                logp = torch.log_softmax(logits, dim=-1)
                if temperature <= 0:
                    tok = int(torch.argmax(logits))
                else:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    if top_k > 0:
                        kth = torch.topk(probs, min(top_k, probs.numel())).values[-1]
                        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
                    if top_p < 1.0:
                        sorted_p, order = torch.sort(probs, descending=True)
                        keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p * sorted_p.sum()
                        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
                    tok = int(torch.multinomial(probs / probs.sum(), 1, generator=gen))
                out.append(tok)
                lps.append(float(logp[tok]) if math.isfinite(float(logp[tok])) else -1e9)
                if tok in eos:
                    break
                if stop:
                    text = self.tokenizer.decode(out, skip_special_tokens=False)
                    if any(s in text for s in stop):
                        break
                inp = torch.tensor([[tok]])
        return out, (lps if want_lp else None), "completed"


#: a tiny decoder shared by the information-gain tests; a large init range gives peaked outputs, so
#: differences between turns stand far above float tolerances
SMALL_DECODER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    initializer_range=0.3,
)


def small_decoder_config(arch: str, vocab_size: int, max_positions: int = 4096, **extra):
    """A ``SMALL_DECODER``-sized config of ``arch`` (qwen2, llama, mistral or qwen3)."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    kw = dict(SMALL_DECODER, vocab_size=vocab_size, max_position_embeddings=max_positions, **extra)
    if arch == "mistral":
        kw.setdefault("sliding_window", None)
    if arch == "qwen3":
        kw.setdefault("head_dim", 8)
    classes = {"qwen2": Qwen2Config, "llama": LlamaConfig, "mistral": MistralConfig, "qwen3": Qwen3Config}
    return classes[arch](**kw)
