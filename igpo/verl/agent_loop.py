"""verl agent loop ``igpo_search``: the multi-turn search agent of the paper on verl's rollout servers.

Thin glue around :func:`igpo.rollout.run_episode` (the turn logic, token layout and limits live
there and are documented there). This module:

* builds the prompt from the row's ``raw_prompt`` with verl's own prompt builder (chat template,
  ``data.apply_chat_template_kwargs``, ``rollout.prompt_length`` cap). Rows written by
  ``scripts/prepare_data.py`` already start with the Appendix H system prompt; a row without a system
  message gets :func:`igpo.prompts.system_prompt` for its tools with today's date;
* generates through verl's server manager with stop strings ``</tool_call>``/``</answer>`` (vLLM:
  ``include_stop_str_in_output``; SGLang: ``no_stop_trim``) and a per-turn ``max_tokens``;
* runs tool calls through verl ``BaseTool`` instances (our :class:`igpo.verl.search_tool.SearchTool`),
  the ones verl's worker loaded from ``rollout.multi_turn.tool_config_path`` (or, when constructed
  without them, loaded here from that path with verl's ``initialize_tools_from_config``);
* scores the response with :func:`igpo.answer.outcome_reward` (Eq. 2) against
  ``reward_model.ground_truth`` and returns it as ``reward_score`` (verl writes it on the last
  response token, which by the episode invariant is a model token of the last turn);
* puts the turn structure in ``extra_fields`` for the information-gain step and metrics.

Settings: ``max_turns`` ← ``rollout.multi_turn.max_assistant_turns`` (default 10);
``max_tool_response_tokens`` ← ``rollout.multi_turn.max_tool_response_length`` (read as *tokens*
here; default 2000); ``max_response_tokens`` ← ``rollout.response_length``; ``max_context_tokens`` ←
``rollout.max_model_len`` if set; ``max_turn_tokens`` (default 2000, the paper's per-turn limit) and
``min_turn_tokens`` are constructor arguments, settable from an agent-loop YAML
(``configs/agent_loop.yaml``, ``rollout.agent.agent_loop_config_path``); the format penalty λ_fmt ←
``algorithm.igpo.format_penalty`` (default -1.0).

``extra_fields`` of every output (one value per rollout; verl makes them non-tensor batch columns)::

    tool_turn_ends   list[int]  response length after each tool response (len = turns - 1);
                                igpo.turns.prefix_ends_from_turn_ends(len(prompt), ·, len(response))
    turns            int        model turns (= runs of 1s in response_mask)
    tool_calls       int        tool calls executed
    tool_errors      int        executed calls whose tool reported an error or raised
    invalid_tool_calls int      malformed / unknown-tool calls answered with a corrective response
    turn_limit_hits, context_limit_hits, tool_response_truncations   int counters
    max_turns_reached, truncated, ended_with_answer                   bool
    end_reason       str        answer | no_action | turn_limit | context_limit | max_turns | empty_turn
    tool_call_log    list[dict] every call: turn, name, arguments, status, error
    ground_truth     list[str]  gold aliases (for the IG step's answer copies)
    data_source      str
    reward_extra_info dict      {"f1", "format_ok"} (verl logs these per data source in validation)

plus what the rollout server reported, merged over the turns the way verl's own ``ToolAgentLoop`` merges
it (:func:`merge_server_fields`): ``global_steps``, ``min_global_steps`` (the weights version that
started the trajectory), ``max_global_steps`` (the one that finished it), ``num_cached_tokens``,
speculative-decoding counters. verl's V1 trainer tags every trajectory with the min/max steps and
fails on a missing one (``np.array([...], dtype=int)`` in ``_compute_metrics``).

A prompt longer than ``rollout.prompt_length`` is an error naming the row (verl's builder would
left-truncate it silently, cutting the system prompt); ``configs/igpo_trainer.yaml`` makes the
dataset's length filter count the prompt the way this loop builds it (no ``tools=`` schemas: the
Appendix H system prompt already describes the tools in text).
"""

from __future__ import annotations

import logging
import time
from datetime import date
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, ToolListWrap, register
from verl.experimental.agent_loop.tool_agent_loop import SPEC_DECODE_EXTRA_KEYS
from verl.tools.base_tool import BaseTool
from verl.tools.tool_registry import initialize_tools_from_config
from verl.utils.import_utils import resolve_config_path

from igpo.answer import (
    DEFAULT_FORMAT_PENALTY,
    as_gold_list,
    check_format,
    extract_answer,
    f1_score,
    outcome_reward,
)
from igpo.prompts import TOOL_SCHEMAS, system_prompt
from igpo.rollout import STOP_STRINGS, Episode, run_episode

logger = logging.getLogger(__name__)

AGENT_NAME = "igpo_search"
DEFAULT_MAX_TURNS = 10
DEFAULT_MAX_TURN_TOKENS = 2000
DEFAULT_MAX_TOOL_RESPONSE_TOKENS = 2000

_TOOL_CACHE: dict[str, list[BaseTool]] = {}


def load_tools(tool_config_path: str) -> list[BaseTool]:
    """verl tools from a tool-config YAML (cached per path: agent loops are built per rollout)."""
    path = resolve_config_path(tool_config_path)
    if path not in _TOOL_CACHE:
        _TOOL_CACHE[path] = initialize_tools_from_config(path)
    return _TOOL_CACHE[path]


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.get(key)`` for DictConfig, dict or dataclass configs; None-valued keys give ``default``."""
    if cfg is None:
        return default
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def stop_params(rollout_name: str | None) -> dict[str, Any]:
    """Sampling-parameter spelling of "stop at these strings and keep them" for each rollout engine."""
    if rollout_name == "sglang":
        return {"no_stop_trim": True}
    if rollout_name in (None, "vllm"):
        return {"include_stop_str_in_output": True}
    return {}


def ground_truth_of(kwargs: dict[str, Any]) -> list[str]:
    """Gold aliases from the row's ``reward_model.ground_truth``; a clear error when absent."""
    rm = kwargs.get("reward_model")
    gt = rm.get("ground_truth") if hasattr(rm, "get") else None
    if gt is None:
        raise ValueError(
            f"{AGENT_NAME}: row has no reward_model.ground_truth (reward_model={rm!r}); "
            "build the data with scripts/prepare_data.py"
        )
    return as_gold_list(gt)


def merge_server_fields(per_turn: list[dict[str, Any]]) -> dict[str, Any]:
    """The rollout server's ``extra_fields`` of every generate call of one trajectory, merged as verl's
    ``ToolAgentLoop`` merges them: the first call's fields (its ``min_global_steps`` is the version
    that started the trajectory), the last non-empty ``max_global_steps``, speculative-decoding
    counters summed over the calls."""
    merged: dict[str, Any] = {}
    for fields in per_turn:
        fields = dict(fields or {})
        if not merged:
            merged.update(fields)
            continue
        if fields.get("max_global_steps"):
            merged["max_global_steps"] = fields["max_global_steps"]
        for key in SPEC_DECODE_EXTRA_KEYS:
            if key in fields and key in merged:
                merged[key] = int(merged[key]) + int(fields[key])
    return merged


@register(AGENT_NAME)
class IGPOSearchAgentLoop(AgentLoopBase):
    """Multi-turn search agent (paper §2.1) as a verl agent loop; see the module docstring."""

    def __init__(
        self,
        *args: Any,
        tools: ToolListWrap | None = None,
        max_turns: int | None = None,
        max_turn_tokens: int = DEFAULT_MAX_TURN_TOKENS,
        max_tool_response_tokens: int | None = None,
        min_turn_tokens: int = 32,
        tool_config_path: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        mt = _get(self.rollout_config, "multi_turn")
        self.max_turns = int(max_turns or _get(mt, "max_assistant_turns", DEFAULT_MAX_TURNS))
        self.max_turn_tokens = int(max_turn_tokens)
        self.max_tool_response_tokens = int(
            max_tool_response_tokens or _get(mt, "max_tool_response_length", DEFAULT_MAX_TOOL_RESPONSE_TOKENS)
        )
        self.min_turn_tokens = int(min_turn_tokens)
        self.response_length = int(_get(self.rollout_config, "response_length"))
        max_model_len = _get(self.rollout_config, "max_model_len")
        self.max_context_tokens = int(max_model_len) if max_model_len else None
        self.rollout_name = _get(self.rollout_config, "name")

        tool_list = list(tools.tools) if tools is not None else []
        if not tool_list:
            path = tool_config_path or _get(mt, "tool_config_path")
            if path:
                tool_list = load_tools(str(path))
        self.tools: dict[str, BaseTool] = {t.name: t for t in tool_list}
        if not self.tools:
            raise ValueError(
                f"{AGENT_NAME}: no tools; set actor_rollout_ref.rollout.multi_turn.tool_config_path "
                "(e.g. configs/tools/search_tool.yaml)"
            )
        unknown = sorted(set(self.tools) - set(TOOL_SCHEMAS))
        if unknown:
            raise ValueError(f"{AGENT_NAME}: tools {unknown} have no schema in igpo.prompts.TOOL_SCHEMAS")
        algo = _get(self.config, "algorithm")
        self.format_penalty = float(_get(_get(algo, "igpo"), "format_penalty", DEFAULT_FORMAT_PENALTY))

    def tool_names_for(self, kwargs: dict[str, Any]) -> list[str]:
        """Tools offered to this row: ``extra_info.tool_selection`` or the keys of ``tools_kwargs``
        (scripts/prepare_data.py writes one per offered tool), restricted to the loaded tools."""
        extra_info = kwargs.get("extra_info") or {}
        wanted = extra_info.get("tool_selection") or list((kwargs.get("tools_kwargs") or {}).keys())
        if not wanted:
            wanted = list((extra_info.get("tools_kwargs") or {}).keys())
        names = [n for n in wanted if n in self.tools] if wanted else list(self.tools)
        if not names:
            raise ValueError(
                f"{AGENT_NAME}: the row asks for tools {list(wanted)} but only {sorted(self.tools)} are loaded"
            )
        return names

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        messages = [dict(m) for m in kwargs["raw_prompt"]]
        names = self.tool_names_for(kwargs)
        if not messages or messages[0].get("role") != "system":
            messages.insert(0, {"role": "system", "content": system_prompt(names, today=date.today())})
        golds = ground_truth_of(kwargs)
        tools_kwargs = (
            kwargs.get("tools_kwargs") or (kwargs.get("extra_info") or {}).get("tools_kwargs") or {}
        )

        prompt_ids = await self.build_prompt_ids(messages, kwargs)
        request_id = uuid4().hex
        timing = {"generate_sequences": 0.0, "tool_calls": 0.0}
        server_fields: list[dict[str, Any]] = []
        base_params = {**sampling_params, "stop": list(STOP_STRINGS), **stop_params(self.rollout_name)}

        async def generate(ids: list[int], max_new_tokens: int, stop: Any) -> Any:
            t0 = time.perf_counter()
            out = await self.server_manager.generate(
                request_id=request_id,
                prompt_ids=ids,
                sampling_params={**base_params, "stop": list(stop), "max_tokens": max_new_tokens},
            )
            timing["generate_sequences"] += time.perf_counter() - t0
            server_fields.append(getattr(out, "extra_fields", None) or {})
            return out

        async def call_tool(name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
            t0 = time.perf_counter()
            tool = self.tools[name]
            create_kwargs = (tools_kwargs.get(name) or {}).get("create_kwargs") or {}
            instance_id, _ = await tool.create(create_kwargs=create_kwargs)
            try:
                response, _reward, metrics = await tool.execute(instance_id, arguments)
            finally:
                await tool.release(instance_id)
                timing["tool_calls"] += time.perf_counter() - t0
            is_error = bool(metrics.get("error")) if isinstance(metrics, dict) else False
            return response.text or "", is_error

        ep = await run_episode(
            generate,
            call_tool,
            prompt_ids,
            self.tokenizer,
            max_turns=self.max_turns,
            max_turn_tokens=self.max_turn_tokens,
            max_context_tokens=self.max_context_tokens,
            max_response_tokens=self.response_length,
            max_tool_response_tokens=self.max_tool_response_tokens,
            min_turn_tokens=self.min_turn_tokens,
            tool_names=names,
        )
        return self.build_output(
            ep, golds, kwargs.get("data_source"), timing, merge_server_fields(server_fields)
        )

    async def build_prompt_ids(self, messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> list[int]:
        """The chat-templated prompt ids; a prompt over ``rollout.prompt_length`` is an error naming the
        row, never verl's silent left-truncation (which would cut the system prompt)."""
        builder = self.continuous_token_builder
        prompt_ids = await self.loop.run_in_executor(None, lambda: builder.build_initial_tokens(messages))
        limit = int(self.rollout_config.prompt_length)
        if len(prompt_ids) > limit:
            index = (kwargs.get("extra_info") or {}).get("index")
            raise ValueError(
                f"{AGENT_NAME}: the prompt of row extra_info.index={index!r} has {len(prompt_ids)} tokens, over "
                f"rollout.prompt_length (data.max_prompt_length) = {limit}; raise data.max_prompt_length or keep "
                "data.filter_overlong_prompts=true (it drops such rows before training)"
            )
        return list(prompt_ids)

    def build_output(
        self,
        ep: Episode,
        golds: list[str],
        data_source: Any,
        timing: dict[str, float],
        server_fields: dict[str, Any] | None = None,
    ) -> AgentLoopOutput:
        """Score the episode and pack it as verl's ``AgentLoopOutput``."""
        reward = outcome_reward(ep.response_text, golds, self.format_penalty)  # Eq. 2
        format_ok, _ = check_format(ep.response_text)
        f1 = f1_score(extract_answer(ep.response_text), golds)
        extra = {
            **(server_fields or {}),
            "tool_turn_ends": list(ep.tool_turn_ends),
            "turns": ep.num_turns,
            "tool_calls": ep.num_tool_calls,
            "tool_errors": ep.tool_errors,
            "invalid_tool_calls": ep.invalid_tool_calls,
            "turn_limit_hits": ep.turn_limit_hits,
            "context_limit_hits": ep.context_limit_hits,
            "tool_response_truncations": ep.tool_response_truncations,
            "max_turns_reached": ep.max_turns_reached,
            "truncated": ep.truncated,
            "ended_with_answer": ep.ended_with_answer,
            "end_reason": ep.end_reason,
            "tool_call_log": ep.records()["tool_calls"],
            "ground_truth": golds,
            "data_source": None if data_source is None else str(data_source),
            "reward_extra_info": {"f1": float(f1), "format_ok": float(format_ok)},
        }
        return AgentLoopOutput(
            prompt_ids=ep.prompt_ids,
            response_ids=ep.response_ids,
            response_mask=ep.response_mask,
            response_logprobs=ep.response_logprobs,
            reward_score=float(reward),
            # verl's convention: chat turns incl. the user prompt, assistant turns and tool turns
            num_turns=1 + ep.num_turns + len(ep.tool_turn_ends),
            metrics=timing,
            extra_fields=extra,
        )
