"""IGPO's settings: defaults, allowed values and ranges, defined once and checked by both engines.

The local engine (``configs/local.yaml``) and the verl path (``algorithm.igpo.*`` and the trainer keys
that map onto the same settings) call :func:`check_settings` when their config is loaded, so a bad value
stops the job within seconds, before any data, handler or model is touched, with one line per bad key.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from igpo.prompts import ANSWER_WRAPPER

#: Defaults of the ``algorithm.igpo`` block on the verl path (the local engine has the same fields).
IGPO_DEFAULTS: dict[str, Any] = {
    "reward_mode": "f1+ig",
    "norm": "separate",
    "epsilon": 1e-6,
    "ig_source": "recompute",
    "ig_basis": "logprob",
    "format_penalty": -1.0,
    # options off by default (docs/benchmarks.md measures them): zero the IG advantages of a group whose IG
    # values span less than ig_tol nats; scale the normalized IG part by ig_weight
    "ig_tol": 0.0,
    "ig_weight": 1.0,
    # the layout the system prompt asks for; igpo.prompts.INLINE_ANSWER_WRAPPER is the paper's inline example
    "answer_template": ANSWER_WRAPPER,
}


class SettingError(ValueError):
    """One or more settings are out of their allowed values; one line per setting, naming key and value."""


@dataclass(frozen=True)
class Rule:
    """What one setting may be: one of ``choices``, or a number (``integer`` or real) within bounds."""

    choices: tuple[Any, ...] | None = None
    integer: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # ``low`` itself is excluded
    high_open: bool = False
    placeholder: str | None = None  # a string that must contain this text

    def allowed(self) -> str:
        """The allowed values in words, for the error line."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.placeholder is not None:
            return f"a string containing {self.placeholder!r}"
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {_num(self.high)}"
        return kind

    def accepts(self, value: Any) -> bool:
        if self.choices is not None:
            return isinstance(value, str | int | float) and value in self.choices
        if self.placeholder is not None:
            return isinstance(value, str) and self.placeholder in value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.integer and not isinstance(value, numbers.Integral):
            return False
        if not math.isfinite(float(value)):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _int(low: int) -> Rule:
    return Rule(integer=True, low=low)


def _positive() -> Rule:
    return Rule(low=0.0, low_open=True)


def _share() -> Rule:
    return Rule(low=0.0, high=1.0)


#: Every checked setting by its canonical name (the local engine's key; the verl path maps its own keys).
RULES: dict[str, Rule] = {
    # IGPO (algorithm.igpo.* and algorithm.gamma on the verl path)
    "reward_mode": Rule(choices=("f1+ig", "f1", "ig")),
    "norm": Rule(choices=("separate", "joint")),
    "ig_source": Rule(choices=("recompute", "none")),
    "ig_basis": Rule(choices=("logprob", "prob")),
    "gamma": _share(),
    "epsilon": _positive(),
    "ig_tol": Rule(low=0.0),
    "ig_weight": Rule(low=0.0),
    "format_penalty": Rule(high=0.0),  # a penalty: a positive value would reward malformed responses
    "answer_template": Rule(placeholder="{answer}"),
    # optimisation and batch shape
    "lr": _positive(),
    "steps": _int(1),
    "epochs": _int(1),
    "prompts_per_step": _int(1),
    "group_size": _int(2),  # a group of one has no baseline: every advantage is 0
    "clip_ratio": _positive(),
    "kl_coef": Rule(low=0.0),
    "kl_type": Rule(choices=("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")),
    "loss_agg_mode": Rule(
        choices=(
            "token-mean",
            "token-sum",
            "seq-mean-token-sum",
            "seq-mean-token-mean",
            "seq-mean-token-sum-norm",
        )
    ),
    "micro_batch": _int(1),
    "grad_clip": _positive(),
    # rollout
    "temperature": _positive(),
    "max_turns": _int(1),
    "max_turn_tokens": _int(1),
    "max_tool_response_tokens": _int(1),
    "topk": _int(1),
    # the local engine's task, policy, warm-up and bookkeeping
    "n_people": _int(1),
    "n_companies": _int(1),
    "n_cities": _int(1),
    "n_countries": _int(1),
    "test_fraction": Rule(low=0.0, high=1.0, low_open=True, high_open=True),
    "hidden_size": _int(1),
    "layers": _int(1),
    "heads": _int(1),
    "warmup_steps": _int(0),
    "warmup_demos": _int(1),
    "warmup_lr": _positive(),
    "warmup_batch": _int(1),
    "warmup_name_weight": _positive(),
    "p_follow": _share(),
    "p_answer": _share(),
    "p_search": _share(),
    "p_recall": _share(),
    "eval_every": _int(1),
    "eval_size": _int(1),
    "save_every": _int(1),
}

#: Allowed values of the enumerated IGPO settings (derived from :data:`RULES`).
IGPO_CHOICES: dict[str, tuple[str, ...]] = {
    k: RULES[k].choices for k in ("reward_mode", "norm", "ig_source", "ig_basis") if RULES[k].choices
}


def check_settings(
    values: Mapping[str, Any], names: Mapping[str, str] | None = None, optional: Collection[str] = ()
) -> None:
    """Raise :class:`SettingError` naming every setting in ``values`` that breaks its rule.

    ``values`` maps canonical names (keys of :data:`RULES`; others are ignored) to values; ``names`` gives
    the key as the user writes it (e.g. ``algorithm.igpo.reward_mode``); a key in ``optional`` may be None.
    """
    names = names or {}
    problems = []
    for key, value in values.items():
        rule = RULES.get(key)
        if rule is None or (value is None and key in optional) or rule.accepts(value):
            continue
        problems.append(f"{names.get(key, key)}={value!r} is not allowed: expected {rule.allowed()}")
    if problems:
        raise SettingError("\n".join(problems))
