"""Single-process IGPO engine: the embedded default on a CPU (or one GPU), and the CI test bed.

Only the driver loop is its own. Everything else is the code the verl path runs: the multi-turn
episode (:func:`igpo.rollout.run_episode`) against a real handler process through
:class:`handler.client.HandlerClient`, the outcome reward (:mod:`igpo.answer`), per-turn ground-truth
log-probs from ONE forward with answer copies appended (:func:`igpo.info_gain.packed_logprobs_with_copies`,
which also yields the old log-probs), the ``igpo`` estimator (:mod:`igpo.advantage`), and verl's own
policy loss, KL penalty and loss aggregation (``verl.trainer.ppo.core_algos``), with a plain AdamW.

One step: sample ``prompts_per_step`` questions × ``group_size`` rollouts → rewards → recompute with
copies (old log-probs + IG) → reference log-probs → advantages → one clipped-surrogate update with a
KL loss (the paper's mini-batch equals its batch, so one update per step).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from igpo.advantage import compute_igpo_advantage, ig_to_token_rewards
from igpo.answer import as_gold_list, check_format, extract_answer, f1_score, normalize_answer, outcome_reward
from igpo.info_gain import (
    answer_copy,
    check_answer_template,
    ground_truth_gain,
    information_gain,
    packed_logprobs_with_copies,
    sample_answers,
)
from igpo.local.generation import LockstepBatcher
from igpo.local.synthetic import ANSWER_TEMPLATE
from igpo.metrics import gold_turn_credit
from igpo.rollout import Episode, call_handler_tool, run_episode
from igpo.settings import SettingError, check_settings
from igpo.turns import prefix_ends_from_turn_ends


@dataclass
class LocalConfig:
    """Settings of the single-process engine (``configs/local.yaml``; ``key=value`` overrides)."""

    project: str = "igpo-local"
    experiment: str = "embedded-default"
    out_root: str = "outputs"
    seed: int = 0
    # synthetic task
    task_seed: int = 0
    n_people: int = 1000
    n_companies: int = 60
    n_cities: int = 40
    n_countries: int = 8
    hops: list[int] = field(default_factory=lambda: [1, 2, 3])
    test_fraction: float = 0.1
    # policy
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    # warm-up (supervised fine-tuning on noisy teacher demonstrations)
    warmup_steps: int = 600
    warmup_demos: int = 3000
    warmup_lr: float = 3e-3
    warmup_batch: int = 16
    #: loss weight of entity-name tokens against the turn format's (copying names is what is hard)
    warmup_name_weight: float = 10.0
    # the teacher's noise (igpo.local.synthetic.teacher_turns)
    p_follow: float = 1.0
    p_answer: float = 1.0
    p_search: float = 0.5
    p_recall: float = 0.0
    # rollout
    max_turns: int = 4
    max_turn_tokens: int = 48
    max_tool_response_tokens: int = 96
    topk: int = 1
    temperature: float = 0.7
    # RL
    steps: int = 30
    prompts_per_step: int = 8
    group_size: int = 8
    lr: float = 5e-5
    clip_ratio: float = 0.2
    kl_coef: float = 0.001
    kl_type: str = "low_var_kl"
    loss_agg_mode: str = "token-mean"
    micro_batch: int = 32
    grad_clip: float = 1.0
    # IGPO (algorithm.igpo.* on the verl path)
    reward_mode: str = "f1+ig"
    norm: str = "separate"
    gamma: float = 1.0
    ig_basis: str = "logprob"
    format_penalty: float = -1.0
    ig_tol: float = 0.0
    ig_weight: float = 1.0
    # the answer copies information gain scores are written as the task's final turn (igpo.local.synthetic)
    answer_template: str = ANSWER_TEMPLATE
    # evaluation, checkpoints, logging
    eval_every: int = 10
    eval_size: int = 200
    save_every: int = 10
    resume: bool = True
    handler_url: str | None = None
    tensorboard: bool = True
    progress: bool = True

    @property
    def out_dir(self) -> Path:
        return Path(self.out_root) / self.project / self.experiment


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> LocalConfig:
    """Merge ``configs/local.yaml`` (or ``path``) and ``key=value`` overrides into a checked config.

    Every setting is checked here (types, and values against :data:`igpo.settings.RULES`), so a bad
    value stops the job before the task, the handler or the policy is built; the
    :class:`~igpo.settings.SettingError` has one line per bad key, naming the key, the value and what
    is allowed.
    """
    import difflib

    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise SettingError(f"overrides must look like key=value, got {bad}")
    base = OmegaConf.structured(LocalConfig)
    layers = [base]
    try:
        if path is not None:
            layers.append(OmegaConf.load(path))
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        cfg: LocalConfig = OmegaConf.to_object(OmegaConf.merge(*layers))
    except ConfigKeyError as e:
        key = str(e.full_key or e.key)
        near = difflib.get_close_matches(key, [f.name for f in fields(LocalConfig)], n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise SettingError(f"unknown setting {key!r} (not a field of configs/local.yaml){hint}") from None
    except OmegaConfBaseException as e:
        msg = str(getattr(e, "msg", None) or e).splitlines()[0]
        raise SettingError(f"{e.full_key or 'configuration'}: {msg}") from None
    check_settings(asdict(cfg))
    problems = []
    if cfg.hidden_size % cfg.heads:
        problems.append(
            f"hidden_size={cfg.hidden_size} is not allowed: expected a multiple of heads={cfg.heads}"
        )
    if not cfg.hops or not set(cfg.hops) <= {1, 2, 3}:
        problems.append(f"hops={list(cfg.hops)} is not allowed: expected a non-empty subset of [1, 2, 3]")
    if problems:
        raise SettingError("\n".join(problems))
    return cfg


#: Settings that do not change what training computes: a run may be resumed with other values of these.
RESUMABLE_KEYS = frozenset(
    {
        "project",
        "experiment",
        "out_root",
        "steps",
        "eval_every",
        "eval_size",
        "save_every",
        "resume",
        "handler_url",
        "tensorboard",
        "progress",
        "micro_batch",
    }
)
#: The settings of the run an experiment folder holds, written when the run starts.
RUN_SETTINGS = "config.json"


class RunMismatch(SettingError):
    """The experiment folder holds a run made with other training settings than the ones asked for."""


def saved_settings(out: Path) -> dict[str, Any] | None:
    """The settings of the run in ``out``: its ``config.json``, else its latest checkpoint's, else None."""
    if (out / RUN_SETTINGS).is_file():
        return json.loads((out / RUN_SETTINGS).read_text())
    steps = sorted((out / "checkpoints").glob("step_*/trainer.pt"), key=lambda p: int(p.parent.name[5:]))
    if steps:
        return dict(torch.load(steps[-1], weights_only=False).get("config") or {})
    return None


def settings_differences(saved: dict[str, Any], cfg: LocalConfig) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, value now)`` for each training setting that differs (missing: its default)."""
    defaults = asdict(LocalConfig())
    now = asdict(cfg)
    return [
        (k, saved.get(k, defaults[k]), v)
        for k, v in now.items()
        if k not in RESUMABLE_KEYS and saved.get(k, defaults[k]) != v
    ]


def check_same_run(cfg: LocalConfig, fix: str | None = None) -> None:
    """Raise :class:`RunMismatch` when ``cfg.out_dir`` holds a run whose training settings differ from cfg.

    The message names each differing key with both values, then ``fix`` (default: the two ways on when
    training, a new experiment name or ``resume=false`` to set the old run aside).
    """
    saved = saved_settings(cfg.out_dir)
    diffs = settings_differences(saved, cfg) if saved is not None else []
    if diffs:
        lines = [f"experiment {cfg.experiment!r} ({cfg.out_dir}) holds a run made with other settings:"]
        lines += [f"  {k}: the run has {old!r}, asked for {new!r}" for k, old, new in diffs]
        lines.append(
            fix
            or "Resuming it would mix two runs. Use experiment=NAME to start a new run beside it, or "
            f"resume=false to move the old run aside (to {cfg.out_dir.name}.replaced-DATE) and start afresh."
        )
        raise RunMismatch("\n".join(lines))


def open_run(cfg: LocalConfig, log: Callable[[str], None] = print) -> None:
    """Make ``cfg.out_dir`` ready for a run of ``cfg`` before any work, and record cfg there.

    ``resume=true``: a run already there must have the same training settings (else :class:`RunMismatch`);
    ``resume=false``: a run already there is moved aside to a sibling ``NAME.replaced-DATE`` folder.
    """
    out = cfg.out_dir
    holds_run = (
        (out / RUN_SETTINGS).is_file() or (out / "checkpoints").is_dir() or (out / "metrics.jsonl").exists()
    )
    if cfg.resume:
        check_same_run(cfg)
    elif holds_run:
        aside = out.with_name(f"{out.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(aside)
        log(f"[igpo-local] resume=false: moved the previous run in {out} to {aside}")
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_SETTINGS).write_text(json.dumps(asdict(cfg), indent=1) + "\n")


# ----------------------------------------------------------------------------------------------------
# Pure helpers (tested on their own)
# ----------------------------------------------------------------------------------------------------


def encode_turn_rewards(
    episodes: Sequence[Episode], outcomes: Sequence[float], igs: Sequence[torch.Tensor], length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(token_level_rewards, response_mask)``, both ``(bs, length)``, per igpo.advantage's contract.

    The outcome goes on the last token of the last turn (as verl's agent loop puts ``reward_score``),
    then :func:`igpo.advantage.ig_to_token_rewards` writes the IG of turn t on the last token of turn t.
    """
    scores = torch.zeros(len(episodes), length)
    mask = pad_right([ep.response_mask for ep in episodes], length)
    for i, ep in enumerate(episodes):
        if ep.turns:  # an episode without a model turn has no token to carry its outcome
            scores[i, ep.turns[-1].end - 1] = float(outcomes[i])
    return ig_to_token_rewards(scores, mask, igs), mask


def pad_right(rows: Sequence[Sequence[float]], length: int, value: float = 0.0) -> torch.Tensor:
    """Stack ragged rows into a ``(len(rows), length)`` float tensor."""
    out = torch.full((len(rows), length), value)
    for i, r in enumerate(rows):
        t = torch.as_tensor(list(r)[:length], dtype=torch.float32)
        out[i, : t.numel()] = t
    return out


def right_padded(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``(n, max_len)`` right-padded with ``pad_id``, and the matching attention mask."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        attn[i, : len(s)] = 1
    return ids, attn


def sequence_logprobs(
    model: torch.nn.Module, sequences: Sequence[Sequence[int]], pad_id: int, temperature: float = 1.0
) -> list[torch.Tensor]:
    """Log-prob of every next token of each sequence (``(n_i - 1,)``), one right-padded forward.

    Logits are divided by ``temperature`` (the sampling temperature, as verl's actor does), so the
    log-probs are those of the distribution the rollouts were drawn from. Gradients flow when called
    outside ``torch.no_grad``.
    """
    ids, attn = right_padded(sequences, pad_id)
    dev = next(model.parameters()).device
    logits = model(input_ids=ids.to(dev), attention_mask=attn.to(dev)).logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].to(dev).unsqueeze(-1)).squeeze(-1)
    return [lp[i, : len(s) - 1] for i, s in enumerate(sequences)]


def response_logprobs(
    model: torch.nn.Module, episodes: Sequence[Episode], length: int, pad_id: int, temperature: float = 1.0
) -> torch.Tensor:
    """``(bs, length)`` log-probs of the response tokens of each episode under ``model``."""
    seqs = [ep.prompt_ids + ep.response_ids for ep in episodes]
    lps = sequence_logprobs(model, seqs, pad_id, temperature)
    out = torch.zeros(len(episodes), length, device=lps[0].device)
    for i, ep in enumerate(episodes):
        r = lps[i][len(ep.prompt_ids) - 1 :][:length]
        out[i, : r.numel()] = r
    return out


# ----------------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One step's training data: episodes and ``(bs, L)`` tensors aligned on their responses."""

    episodes: list[Episode]
    uids: np.ndarray
    rewards: torch.Tensor
    mask: torch.Tensor
    adv: torch.Tensor
    old_lp: torch.Tensor
    ref_lp: torch.Tensor
    answer_lp: list[torch.Tensor]
    metrics: dict[str, float]


class LocalEngine:
    """Builds or loads everything for one experiment and runs warm-up, training and evaluation."""

    def __init__(self, cfg: LocalConfig, log=print):
        self.cfg = cfg
        self.log = log
        self.out = cfg.out_dir  # created by prepare_task (or open_run): a failed start leaves no folder
        self.handler = None
        self.handler_url = cfg.handler_url
        self.step = 0
        self.policy = self.ref = self.tokenizer = self.optimizer = None
        self._actor_cfg = None

    # -- setup --------------------------------------------------------------------------------------
    def prepare_task(self):
        """Write (or reuse) the synthetic task under ``out/data``."""
        from igpo.local.synthetic import load_task, make_task, write_task

        data = self.out / "data"
        self.out.mkdir(parents=True, exist_ok=True)
        if (data / "task.json").exists():
            self.task = load_task(data)
        else:
            self.task = make_task(
                seed=self.cfg.task_seed,
                n_people=self.cfg.n_people,
                n_companies=self.cfg.n_companies,
                n_cities=self.cfg.n_cities,
                n_countries=self.cfg.n_countries,
                hops=tuple(self.cfg.hops),
            )
            write_task(self.task, data, self.cfg.test_fraction)
        self.train_q, self.test_q = self.task.split(self.cfg.test_fraction)
        self.corpus = data / "corpus.jsonl"
        return self.task

    def start_handler(self, log_name: str = "handler.log"):
        """Start a local handler over the task corpus, unless ``handler_url`` names a running one.

        Its output goes to ``log_name`` in the experiment folder (evaluation uses its own name, so the
        training handler's log is kept).
        """
        if self.handler_url:
            return self.handler_url
        from handler.launch import HandlerProcess

        self.handler = HandlerProcess(self.corpus, log_path=self.out / log_name, extra_args=["--no-cache"])
        self.handler.start()
        self.handler_url = self.handler.url
        return self.handler_url

    def close(self) -> None:
        if self.handler is not None:
            self.handler.stop()
            self.handler = None

    def _tokenizer_texts(self) -> list[str]:
        from handler.client import format_hits
        from igpo.local.synthetic import SYSTEM_PROMPT, teacher_turns
        from igpo.rollout import TOOL_RESPONSE_HEAD, TOOL_RESPONSE_TAIL, TRUNCATION_MARKER

        rng = random.Random(0)
        texts = [
            SYSTEM_PROMPT,
            TOOL_RESPONSE_HEAD,
            TOOL_RESPONSE_TAIL,
            TRUNCATION_MARKER,
            "system user assistant",
        ]
        texts += [f"<|im_start|>{role}\n" for role in ("system", "user", "assistant")]
        texts += [
            self.cfg.answer_template.replace("{answer}", " ".join(v)) for v in self.task.entities.values()
        ]
        for p in self.task.passages:
            title = p["contents"].split("\n")[0].strip('"')
            texts.append(format_hits([title], [[{"document": p, "score": 1.0}]]))
        for q in self.task.questions:
            texts.append(q.question)
            texts.extend(teacher_turns(q, self.task, rng))
        return texts

    def build_policy(self) -> None:
        """Load the latest checkpoint, or build tokenizer + policy and warm the policy up."""
        from igpo.local.tiny_policy import load_policy, save_policy

        ckpt = self.latest_checkpoint() if self.cfg.resume else None
        warm = self.out / "policy_warm"
        if ckpt is not None:
            self.policy, self.tokenizer = load_policy(ckpt / "policy")
            self.check_answer_template()
            self.ref, _ = load_policy(warm)
            state = torch.load(ckpt / "trainer.pt", weights_only=False)
            self._make_optimizer()
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = int(state["step"])
            torch.set_rng_state(state["torch_rng"])
            random.setstate(state["py_rng"])
            self.log(f"[igpo-local] resumed from {ckpt} at step {self.step}")
        else:
            if (warm / "config.json").exists():
                self.policy, self.tokenizer = load_policy(warm)
                self.check_answer_template()
                self.log(f"[igpo-local] reusing the warmed-up policy in {warm}")
            else:
                self.new_policy()
                self.check_answer_template()  # before the warm-up spends its time
                self.warmup()
                save_policy(self.policy, self.tokenizer, warm)
            self.ref = copy.deepcopy(self.policy)
            self._make_optimizer()
        self.ref.eval()
        for p in self.ref.parameters():
            p.requires_grad_(False)

    def new_policy(self) -> None:
        """Build the word-level tokenizer over the task's text and a random-init policy (no warm-up)."""
        from igpo.local.tiny_policy import build_policy, build_tokenizer

        self.tokenizer = build_tokenizer(self._tokenizer_texts())
        torch.manual_seed(self.cfg.seed)
        self.policy = build_policy(
            self.tokenizer, self.cfg.hidden_size, self.cfg.layers, self.cfg.heads, seed=self.cfg.seed
        )

    def check_answer_template(self) -> None:
        """Refuse an ``answer_template`` whose scored tokens would hold template text (see
        :func:`igpo.info_gain.check_answer_template`), on a sample of the training answers."""
        answers = sample_answers(q.answer for q in self.train_q)
        check_answer_template(self.tokenizer, self.cfg.answer_template, answers)

    def _make_optimizer(self) -> None:
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=self.cfg.lr, weight_decay=0.0)

    # -- rollouts -----------------------------------------------------------------------------------
    def prompt_ids(self, question: str) -> list[int]:
        from igpo.local.synthetic import SYSTEM_PROMPT

        msgs = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
        out = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    async def _episodes(self, prompts: list[list[int]], seeds: list[int], temperature: float, scripted=None):
        from handler.client import HandlerClient

        client = HandlerClient(
            [self.handler_url], timeout_s=10.0, max_retries=2, backoff_s=0.2, topk=self.cfg.topk
        )
        tools = functools.partial(call_handler_tool, client)
        batcher = LockstepBatcher(
            self.policy,
            self.tokenizer,
            {i: s for i, s in enumerate(seeds)},
            temperature=temperature,
            eos_token_ids=[self.tokenizer.eos_token_id],
        )

        async def one(i: int) -> Episode:
            gen = scripted(i) if scripted is not None else batcher.for_episode(i)
            try:
                return await run_episode(
                    gen,
                    tools,
                    prompts[i],
                    self.tokenizer,
                    max_turns=self.cfg.max_turns,
                    max_turn_tokens=self.cfg.max_turn_tokens,
                    max_tool_response_tokens=self.cfg.max_tool_response_tokens,
                    tool_names=["search"],
                    eos_token_ids=[self.tokenizer.eos_token_id],
                )
            finally:
                if scripted is None:
                    batcher.finished(i)

        try:
            return await asyncio.gather(*(one(i) for i in range(len(prompts))))
        finally:
            await client.aclose()

    def rollouts(self, questions, n: int, temperature: float, seed: int, scripted=None) -> list[Episode]:
        """``n`` episodes per question (grouped, question-major) with per-episode seeded sampling."""
        prompts = [self.prompt_ids(q.question) for q in questions for _ in range(n)]
        seeds = [seed * 1_000_003 + i for i in range(len(prompts))]
        self.policy.eval()
        with torch.no_grad():
            return asyncio.run(self._episodes(prompts, seeds, temperature, scripted))

    # -- warm-up ------------------------------------------------------------------------------------
    def demonstrations(self, plans: Sequence[tuple[Any, list[str]]], seed: int = 0) -> list[Episode]:
        """Play planned model turns (``(question, turns)`` pairs) against the real handler.

        The tool responses and the token layout are exactly those of RL; the model is not called.
        """
        demos: list[Episode] = []
        chunk = 512  # episodes in flight at once against the handler
        for s in range(0, len(plans), chunk):

            def scripted(i: int, s=s):
                turns = iter(plans[s + i][1])

                async def generate(prompt_ids, max_new_tokens, stop):
                    return self.tokenizer.encode(next(turns), add_special_tokens=False)

                return generate

            questions = [q for q, _ in plans[s : s + chunk]]
            demos += self.rollouts(questions, 1, 0.0, seed=seed + s, scripted=scripted)
        return demos

    def warmup(self, callback: Callable[[int, float], None] | None = None) -> dict[str, float]:
        """Supervised fine-tuning on noisy teacher demonstrations (format and search habit, not answers).

        ``warmup_demos`` noisy plans (training questions in shuffled rounds) are played against the real
        handler, then ``warmup_steps`` AdamW steps on random batches of them (one-cycle learning rate),
        loss on model tokens only, with entity-name tokens weighted ``warmup_name_weight`` times: the
        format is learned in a few dozen steps, and without the weight the few name tokens hardly move
        the tiny policy off its plateau (``scripts/bench_warmup.py``). ``callback(step, loss)`` is
        called after every step (the warm-up benchmark probes the policy there).
        """
        from igpo.local.synthetic import teacher_turns

        cfg = self.cfg
        rng = random.Random(cfg.seed + 7)
        order = [q for _ in range(math.ceil(cfg.warmup_demos / len(self.train_q))) for q in self.train_q]
        rng.shuffle(order)
        order = order[: cfg.warmup_demos]
        demos = self.demonstrations(
            [
                (q, teacher_turns(q, self.task, rng, cfg.p_follow, cfg.p_answer, cfg.p_search, cfg.p_recall))
                for q in order
            ]
        )
        from tqdm import tqdm

        opt = torch.optim.AdamW(self.policy.parameters(), lr=cfg.warmup_lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.warmup_lr, total_steps=max(1, cfg.warmup_steps), pct_start=0.1
        )
        self.policy.train()
        pad = self.tokenizer.pad_token_id
        names = torch.tensor(sorted(self.name_token_ids()))
        losses = []

        bar = tqdm(
            range(cfg.warmup_steps), desc="warm-up", unit="step", disable=not cfg.progress, dynamic_ncols=True
        )
        for k in bar:
            batch = rng.sample(demos, min(cfg.warmup_batch, len(demos)))
            length = max(len(e.response_ids) for e in batch)
            lp = response_logprobs(self.policy, batch, length, pad)
            mask = pad_right([e.response_mask for e in batch], length)
            ids = pad_right([e.response_ids for e in batch], length, value=pad).long()
            weight = mask * torch.where(torch.isin(ids, names), cfg.warmup_name_weight, 1.0)
            loss = -(lp * weight).sum() / weight.sum()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            if callback is not None:
                callback(k + 1, losses[-1])
            if k % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
        bar.close()
        self.policy.eval()
        if losses:
            self.log(
                f"[igpo-local] warm-up: {cfg.warmup_steps} steps on {len(demos)} demonstrations, "
                f"loss {losses[0]:.3f} -> {np.mean(losses[-10:]):.3f}"
            )
        return {
            "warmup/loss_first": losses[0] if losses else math.nan,
            "warmup/loss_last": float(np.mean(losses[-10:])) if losses else math.nan,
        }

    def name_token_ids(self) -> set[int]:
        """Token ids of the task's entity names as the policy reads and writes them (leading space)."""
        vocab = self.tokenizer.get_vocab()
        return {vocab[" " + w] for names in self.task.entities.values() for n in names for w in n.split()}

    # -- one RL step --------------------------------------------------------------------------------
    def batch_questions(self, step: int):
        rng = random.Random(self.cfg.seed * 7919 + step)
        return rng.sample(self.train_q, min(self.cfg.prompts_per_step, len(self.train_q)))

    def recompute(self, episodes: Sequence[Episode], golds: Sequence[str], length: int):
        """Old log-probs ``(bs, length)`` and per-turn answer log-probs, from one forward with copies."""
        seqs, prefix, copies, masks = [], [], [], []
        for ep, gold in zip(episodes, golds, strict=True):
            seqs.append(torch.tensor(ep.prompt_ids + ep.response_ids))
            prefix.append(
                prefix_ends_from_turn_ends(len(ep.prompt_ids), ep.tool_turn_ends, len(ep.response_ids))
            )
            c, m = answer_copy(self.tokenizer, gold, self.cfg.answer_template)
            copies.append(c)
            masks.append(m)
        old = torch.zeros(len(episodes), length)
        answer_lp: list[torch.Tensor] = []
        chunk = max(1, self.cfg.micro_batch)
        with torch.no_grad():
            for s in range(0, len(seqs), chunk):
                tok_lp, ans = packed_logprobs_with_copies(
                    self.policy,
                    seqs[s : s + chunk],
                    prefix[s : s + chunk],
                    copies[s : s + chunk],
                    masks[s : s + chunk],
                    temperature=self.cfg.temperature,
                )
                for j, (lp, a) in enumerate(zip(tok_lp, ans, strict=True)):
                    ep = episodes[s + j]
                    r = lp[len(ep.prompt_ids) - 1 :][:length]
                    old[s + j, : r.numel()] = r
                    answer_lp.append(a.float())
        return old, answer_lp

    def collect(self, step: int) -> Batch:
        """Rollouts of step ``step`` with rewards, IG, advantages, old and reference log-probs."""
        cfg = self.cfg
        t0 = time.perf_counter()
        questions = self.batch_questions(step)
        episodes = self.rollouts(questions, cfg.group_size, cfg.temperature, seed=cfg.seed * 100_003 + step)
        golds = [as_gold_list(q.answer)[0] for q in questions for _ in range(cfg.group_size)]
        uids = np.array([q.qid for q in questions for _ in range(cfg.group_size)], dtype=object)
        t_roll = time.perf_counter()
        pairs = list(zip(episodes, golds, strict=True))
        outcomes = [outcome_reward(ep.response_text, g, cfg.format_penalty) for ep, g in pairs]
        f1s = [f1_score(extract_answer(ep.response_text), g) for ep, g in pairs]
        length = max(len(ep.response_ids) for ep in episodes)
        old_lp, answer_lp = self.recompute(episodes, golds, length)
        t_ig = time.perf_counter()
        igs = [information_gain(a, cfg.ig_basis) for a in answer_lp]
        rewards, mask = encode_turn_rewards(episodes, outcomes, igs, length)
        adv, _ = compute_igpo_advantage(
            rewards,
            mask,
            uids,
            gamma=cfg.gamma,
            reward_mode=cfg.reward_mode,
            norm=cfg.norm,
            ig_tol=cfg.ig_tol,
            ig_weight=cfg.ig_weight,
        )
        with torch.no_grad():
            ref_lp = torch.cat(
                [
                    response_logprobs(
                        self.ref,
                        episodes[s : s + cfg.micro_batch],
                        length,
                        self.tokenizer.pad_token_id,
                        cfg.temperature,
                    )
                    for s in range(0, len(episodes), cfg.micro_batch)
                ]
            )
        # the verl trainer's igpo/* metrics, computed by the same function (igpo.verl.ig_metrics)
        from igpo.verl.ig_metrics import igpo_step_metrics
        from igpo.verl.ig_recompute import copy_token_counts

        copies = [answer_copy(self.tokenizer, g, cfg.answer_template)[1] for g in golds]
        prefix = [
            prefix_ends_from_turn_ends(len(ep.prompt_ids), ep.tool_turn_ends, len(ep.response_ids))
            for ep in episodes
        ]
        extra = [
            {
                "reward_extra_info": {"f1": f1, "format_ok": float(check_format(ep.response_text)[0])},
                "turns": ep.num_turns,
                "tool_calls": ep.num_tool_calls,
                "tool_errors": ep.tool_errors,
            }
            for ep, f1 in zip(episodes, f1s, strict=True)
        ]
        m = igpo_step_metrics(
            rewards,
            mask,
            uids,
            adv,
            extra,
            answer_lp=answer_lp,
            seq_lens=[len(ep.prompt_ids) + len(ep.response_ids) for ep in episodes],
            copy_tokens=sum(copy_token_counts(prefix, copies)),
        )
        qs = [q for q in questions for _ in range(cfg.group_size)]
        m.update(
            gold_turn_credit(
                adv,
                mask,
                [self.gold_turn(ep, q) for ep, q in zip(episodes, qs, strict=True)],
                [f1 < 1.0 for f1 in f1s],
            )
        )
        m.update(
            {
                "rollout/truncated_rate": float(np.mean([ep.truncated for ep in episodes])),
                "tokens/update": float(mask.sum()),
                "time/rollout_s": t_roll - t0,
                "time/recompute_ig_s": t_ig - t_roll,
            }
        )
        return Batch(episodes, uids, rewards, mask, adv, old_lp, ref_lp, answer_lp, m)

    def gold_turn(self, ep: Episode, q) -> int | None:
        """Index of the first model turn whose tool response holds the question's gold-bearing passage (the
        last hop's fact: it names both the path's last entity and the answer); None if none did."""
        need = [normalize_answer(q.path[-1]), normalize_answer(q.answer)]
        for t, turn in enumerate(ep.turns):
            if turn.tool_end is None:
                continue
            text = (
                " " + normalize_answer(self.tokenizer.decode(ep.response_ids[turn.end : turn.tool_end])) + " "
            )
            if all(f" {w} " in text for w in need):
                return t
        return None

    def update(self, batch: Batch) -> dict[str, float]:
        """One optimizer step on ``batch``: verl's clipped surrogate + KL loss, micro-batched."""
        from verl.trainer.ppo import core_algos

        cfg = self.cfg
        length = batch.mask.shape[1]
        self.policy.train()
        self.optimizer.zero_grad()
        n_tokens = float(batch.mask.sum())
        actor = self._actor_config(n_tokens)
        loss_fn = core_algos.get_policy_loss_fn("vanilla")
        pg_total = kl_total = 0.0
        clipfrac = []
        for s in range(0, len(batch.episodes), cfg.micro_batch):
            sl = slice(s, s + cfg.micro_batch)
            lp = response_logprobs(
                self.policy, batch.episodes[sl], length, self.tokenizer.pad_token_id, cfg.temperature
            )
            pg, pg_m = loss_fn(batch.old_lp[sl], lp, batch.adv[sl], batch.mask[sl], cfg.loss_agg_mode, actor)
            kl_mat = core_algos.kl_penalty(lp, batch.ref_lp[sl], cfg.kl_type)
            kl = core_algos.agg_loss(kl_mat, batch.mask[sl], cfg.loss_agg_mode, batch_num_tokens=n_tokens)
            (pg + cfg.kl_coef * kl).backward()
            pg_total += pg.item()
            kl_total += kl.item()
            clipfrac.append(pg_m["actor/pg_clipfrac"])
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip))
        self.optimizer.step()
        self.policy.eval()
        return {
            "actor/pg_loss": pg_total,
            "actor/kl_loss": kl_total,
            "actor/pg_clipfrac": float(np.mean(clipfrac)),
            "actor/grad_norm": grad_norm,
        }

    def train_step(self) -> dict[str, float]:
        """Collect a batch for the current step and update once; returns the step's metrics."""
        t0 = time.perf_counter()
        batch = self.collect(self.step)
        m = {**batch.metrics, **self.update(batch)}
        self.step += 1
        m["step"] = self.step
        m["time/step_s"] = time.perf_counter() - t0
        return m

    def _actor_config(self, n_tokens: float):
        from verl.workers.config import FSDPActorConfig

        return FSDPActorConfig(
            strategy="fsdp",
            rollout_n=self.cfg.group_size,
            ppo_mini_batch_size=self.cfg.prompts_per_step,
            ppo_micro_batch_size_per_gpu=self.cfg.micro_batch,
            use_dynamic_bsz=False,
            clip_ratio=self.cfg.clip_ratio,
            global_batch_info={"batch_num_tokens": n_tokens},
        )

    # -- evaluation ---------------------------------------------------------------------------------
    def evaluate(
        self, questions=None, temperature: float = 0.0
    ) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """Greedy rollouts on the test questions: rollout records and mean F1/EM/format rates."""
        from igpo.local.synthetic import DATA_SOURCE
        from igpo.rollout_io import make_record

        qs = questions if questions is not None else self.test_q
        if self.cfg.eval_size:
            qs = qs[: self.cfg.eval_size]
        eps = self.rollouts(qs, 1, temperature, seed=123_457)
        records = [
            make_record(
                data_source=DATA_SOURCE,
                question=q.question,
                ground_truth=[q.answer],
                response=ep.response_text,
                turns=ep.num_turns,
                tool_calls=ep.num_tool_calls,
                hops=q.hops,
                step=self.step,
            )
            for q, ep in zip(qs, eps, strict=True)
        ]
        f1 = [f1_score(r["prediction"], [r["ground_truth"][0]]) for r in records]
        # Fig. 5 for every reward mode: the gold answer's log-prob before any search and after the last one
        golds = [as_gold_list(q.answer)[0] for q in qs]
        _, answer_lp = self.recompute(eps, golds, max(len(ep.response_ids) for ep in eps))
        lps = [a.reshape(-1).double() for a in answer_lp]
        searched = [a for a in lps if a.numel() >= 2]  # Fig. 5 is over trajectories that searched
        by_hops = {  # which question depths the policy solves (the RL phase has to learn the deep ones)
            f"eval/f1_hops{h}": float(np.mean([x for x, q in zip(f1, qs, strict=True) if q.hops == h]))
            for h in sorted({q.hops for q in qs})
        }
        return records, {
            "eval/f1": float(np.mean(f1)),
            **by_hops,
            "eval/answered": float(np.mean([r["prediction"] is not None for r in records])),
            "eval/gt_logprob_gain": ground_truth_gain(lps),
            "eval/gt_logprob_turn0": float(np.mean([float(a[0]) for a in searched]))
            if searched
            else math.nan,
            "eval/gt_logprob_last": float(np.mean([float(a[-1]) for a in searched]))
            if searched
            else math.nan,
        }

    # -- checkpoints --------------------------------------------------------------------------------
    def latest_checkpoint(self) -> Path | None:
        steps = sorted((self.out / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        done = [p for p in steps if (p / "trainer.pt").exists()]
        return done[-1] if done else None

    def save_checkpoint(self) -> Path:
        from igpo.local.tiny_policy import save_policy

        path = self.out / "checkpoints" / f"step_{self.step}"
        save_policy(self.policy, self.tokenizer, path / "policy")
        state = {
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "torch_rng": torch.get_rng_state(),
            "py_rng": random.getstate(),
            "config": asdict(self.cfg),
        }
        torch.save(state, path / "trainer.pt.tmp")
        (path / "trainer.pt.tmp").rename(path / "trainer.pt")  # a checkpoint counts once complete
        return path


class MetricsLog:
    """Console-free metric sinks: JSON lines and (optionally) TensorBoard."""

    def __init__(self, out: Path, tensorboard: bool = True):
        self.path = out / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:  # tensorboard not installed: JSON lines only
                self.tb = None

    def write(self, step: int, metrics: dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(
                json.dumps(
                    {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
                )
                + "\n"
            )
        if self.tb is not None:
            for k, v in metrics.items():
                if (
                    isinstance(v, (int, float))
                    and not (isinstance(v, float) and math.isnan(v))
                    and k != "step"
                ):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
