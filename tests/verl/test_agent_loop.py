"""The verl agent loop ``igpo_search`` end to end on CPU: a real search handler on loopback, verl's
tool loading, and server managers of our own (a scripted one for exact layouts, and one serving a tiny
random-weight Qwen2 model for the plumbing with real generation)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parents[1]
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from helpers.handler_proc import REPO, free_port, handler_available, running_handler  # noqa: E402
from helpers.tiny import TinyServerManager, tiny_model, tiny_tokenizer  # noqa: E402

pytestmark = pytest.mark.skipif(not handler_available(), reason="handler/__main__.py is not there yet")

pytest.importorskip("verl.experimental.agent_loop")

import hydra  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from verl.experimental.agent_loop.agent_loop import (  # noqa: E402
    DictConfigWrap,
    ToolListWrap,
    _agent_loop_registry,
)
from verl.utils.dataset.rl_dataset import RLHFDataset  # noqa: E402
from verl.workers.rollout.replica import TokenOutput  # noqa: E402

from igpo.answer import check_format  # noqa: E402
from igpo.prompts import build_prompt, format_tool_call  # noqa: E402
from igpo.rollout import TOOL_RESPONSE_HEAD, TOOL_RESPONSE_TAIL  # noqa: E402
from igpo.turns import prefix_ends_from_turn_ends, turn_spans  # noqa: E402
from igpo.verl.agent_loop import IGPOSearchAgentLoop  # noqa: E402
from igpo.verl.search_tool import SearchTool  # noqa: E402

QUESTION = "What is the capital of France?"
CALL = "<think>I should search.</think>\n" + format_tool_call("search", {"query": ["capital of France"]})
ANSWER = "<think>Now there's enough information to answer</think>\n<answer>Paris</answer>"


@pytest.fixture(scope="module")
def handler_url(tmp_path_factory):
    with running_handler(tmp_path_factory.mktemp("handler")) as url:
        yield url


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def enc(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


class ScriptedServer:
    """A server manager that answers each ``generate`` with the next pre-written turn (and, if given,
    the next of ``fields``: what verl's rollout servers report in ``TokenOutput.extra_fields``)."""

    def __init__(self, tok, turns: list[str], fields: list[dict] | None = None):
        self.tok, self.turns = tok, list(turns)
        self.fields = list(fields or [])
        self.requests: list[dict] = []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        self.requests.append({"request_id": request_id, "prompt_ids": list(prompt_ids), **sampling_params})
        ids = enc(self.tok, self.turns.pop(0))[: sampling_params["max_tokens"]]
        extra = self.fields.pop(0) if self.fields else {}
        return TokenOutput(
            token_ids=ids, log_probs=[-0.25] * len(ids), stop_reason="completed", extra_fields=extra
        )


def trainer_config(response_length: int = 1024, max_turns: int = 4, max_tool_len: int = 256):
    return OmegaConf.create(
        {
            "actor_rollout_ref": {
                "rollout": {
                    "name": "vllm",
                    "prompt_length": 4096,
                    "response_length": response_length,
                    "max_model_len": None,
                    "multi_turn": {
                        "max_assistant_turns": max_turns,
                        "max_tool_response_length": max_tool_len,
                        "tool_config_path": None,
                    },
                }
            },
            "algorithm": {"igpo": {"format_penalty": -1.0}},
            "data": {"apply_chat_template_kwargs": {}},
        }
    )


def search_tools(url: str) -> list[SearchTool]:
    return [SearchTool({"type": "native", "name": "search", "handler_urls": [url], "topk": 2}, None)]


def make_loop(tok, server, tools, cfg=None, **kw) -> IGPOSearchAgentLoop:
    """Build the loop the way verl's worker does (must run inside the event loop that uses it)."""
    cfg = cfg or trainer_config()
    return IGPOSearchAgentLoop(
        trainer_config=DictConfigWrap(cfg),
        server_manager=server,
        tokenizer=tok,
        processor=None,
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(cfg.data),
        tools=ToolListWrap(tools),
        **kw,
    )


def row(question: str = QUESTION, golds=("Paris",), tools=("search",), system: bool = True) -> dict:
    prompt = build_prompt(question, tools=list(tools), today="2025-01-01")
    return {
        "raw_prompt": prompt if system else prompt[1:],
        "reward_model": {"style": "rule", "ground_truth": {"target": list(golds)}},
        "data_source": "nq",
        "extra_info": {"index": 0, "tools_kwargs": {t: {"create_kwargs": {}} for t in tools}},
        "tools_kwargs": {t: {"create_kwargs": {}} for t in tools},
    }


SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}


def run_loop(tok, server, tools, row_kwargs: dict, cfg=None, sampling=None, **kw):
    async def go():
        loop = make_loop(tok, server, tools, cfg, **kw)
        try:
            return await loop.run(dict(sampling or SAMPLING), **row_kwargs)
        finally:
            for t in tools:
                await t.aclose()

    return asyncio.run(go())


def check_layout(out) -> None:
    assert len(out.response_ids) == len(out.response_mask)
    if out.response_logprobs is not None:
        assert len(out.response_logprobs) == len(out.response_ids)
    spans = turn_spans(out.response_mask)
    ef = out.extra_fields
    assert len(spans) == ef["turns"]
    assert ef["tool_turn_ends"] == [s for s, _ in spans[1:]]
    if out.response_ids:
        assert out.response_mask[-1] == 1
    pe = prefix_ends_from_turn_ends(len(out.prompt_ids), ef["tool_turn_ends"], len(out.response_ids))
    assert len(pe) == max(ef["turns"], 1)


def test_registered_under_igpo_search():
    assert _agent_loop_registry["igpo_search"]["_target_"] == "igpo.verl.agent_loop.IGPOSearchAgentLoop"


def test_search_episode_against_the_real_handler(tok, handler_url):
    server = ScriptedServer(tok, [CALL, ANSWER])
    out = run_loop(tok, server, search_tools(handler_url), row())
    check_layout(out)
    # prompt: the row's chat messages through the chat template, generation prompt included
    templ = tok.apply_chat_template(row()["raw_prompt"], add_generation_prompt=True, tokenize=False)
    assert out.prompt_ids == enc(tok, templ)
    call_ids, ans_ids = enc(tok, CALL), enc(tok, ANSWER)
    resp_text = tok.decode(out.response_ids)
    assert out.response_ids[: len(call_ids)] == call_ids and out.response_ids[-len(ans_ids) :] == ans_ids
    tool_end = out.extra_fields["tool_turn_ends"][0]
    assert out.response_mask == [1] * len(call_ids) + [0] * (tool_end - len(call_ids)) + [1] * len(ans_ids)
    tool_text = tok.decode(out.response_ids[len(call_ids) : tool_end])
    assert tool_text.startswith(
        TOOL_RESPONSE_HEAD + "Doc 1(Title: Paris) Paris is the capital and largest city"
    )
    assert tool_text.endswith(TOOL_RESPONSE_TAIL)
    assert check_format(resp_text) == (True, "ok")
    assert out.reward_score == 1.0
    assert out.num_turns == 4  # user + 2 assistant + 1 tool (verl's convention)
    assert out.response_logprobs[: len(call_ids)] == [-0.25] * len(call_ids)
    ef = out.extra_fields
    assert (ef["turns"], ef["tool_calls"], ef["tool_errors"], ef["invalid_tool_calls"]) == (2, 1, 0, 0)
    assert (ef["truncated"], ef["ended_with_answer"], ef["end_reason"]) == (False, True, "answer")
    assert ef["ground_truth"] == ["Paris"] and ef["data_source"] == "nq"
    assert ef["tool_call_log"] == [
        {
            "turn": 0,
            "name": "search",
            "arguments": {"query": ["capital of France"]},
            "status": "ok",
            "error": None,
        }
    ]
    assert ef["reward_extra_info"] == {"f1": 1.0, "format_ok": 1.0}
    assert out.metrics.tool_calls > 0.0 and out.metrics.generate_sequences >= 0.0
    # generation requests: one sticky request id, stop strings kept in the output, per-turn budget
    r0, r1 = server.requests
    assert r0["request_id"] == r1["request_id"]
    assert r0["stop"] == ["</tool_call>", "</answer>"] and r0["include_stop_str_in_output"] is True
    assert r0["max_tokens"] == 1024 and r1["max_tokens"] == 1024 - tool_end
    assert r1["prompt_ids"] == out.prompt_ids + out.response_ids[:tool_end]
    assert r0["temperature"] == 1.0 and r0["logprobs"] is True
    # verl's as_dict puts the reward on the last response token, a model token of the answer turn
    d = out.as_dict()
    assert d["rm_scores"][-1] == 1.0 and d["response_mask"][-1] == 1


def test_tool_failure_and_malformed_call_do_not_crash(tok, handler_url):
    bad = '<think>x</think>\n<tool_call>\n{"name": "search", "arguments": {"query": [}\n</tool_call>'
    dead = f"http://127.0.0.1:{free_port()}"
    tools = [SearchTool({"type": "native", "name": "search", "handler_urls": [dead], "max_retries": 0}, None)]
    out = run_loop(tok, ScriptedServer(tok, [bad, CALL, ANSWER]), tools, row())
    check_layout(out)
    ef = out.extra_fields
    assert (ef["turns"], ef["invalid_tool_calls"], ef["tool_calls"], ef["tool_errors"]) == (3, 1, 1, 1)
    text = tok.decode(out.response_ids)
    assert "Invalid tool call: the tool call is not valid JSON" in text
    assert "Search failed: handler unreachable" in text
    assert [c["status"] for c in ef["tool_call_log"]] == ["invalid", "error"]
    # the malformed call makes the response ill-formed: the outcome is the format penalty
    assert out.reward_score == -1.0 and ef["reward_extra_info"]["format_ok"] == 0.0


def test_truncation_is_counted_and_fits_response_length(tok, handler_url):
    call_n = len(enc(tok, CALL))
    cfg = trainer_config(response_length=call_n + 40, max_tool_len=8)
    out = run_loop(
        tok, ScriptedServer(tok, [CALL, ANSWER]), search_tools(handler_url), row(), cfg=cfg, min_turn_tokens=4
    )
    check_layout(out)
    ef = out.extra_fields
    assert len(out.response_ids) == call_n + 40
    assert ef["tool_response_truncations"] == 1  # the search result was longer than 8 tokens
    assert ef["context_limit_hits"] == 1  # the answer turn ran out of response budget
    assert ef["truncated"] and ef["end_reason"] == "context_limit" and not ef["ended_with_answer"]
    assert "… [truncated]" in tok.decode(out.response_ids)
    assert out.reward_score == -1.0
    # max turns: every turn a tool call
    out = run_loop(
        tok,
        ScriptedServer(tok, [CALL] * 3),
        search_tools(handler_url),
        row(),
        cfg=trainer_config(max_turns=3),
    )
    check_layout(out)
    assert out.extra_fields["max_turns_reached"] and out.extra_fields["turns"] == 3
    assert out.extra_fields["tool_calls"] == 2


def test_row_handling(tok, handler_url):
    # a row without a system message gets the Appendix H system prompt for its tools
    server = ScriptedServer(tok, [ANSWER])
    out = run_loop(tok, server, search_tools(handler_url), row(system=False))
    prompt = tok.decode(out.prompt_ids)
    assert prompt.startswith("<|im_start|>system\n* Today is ") and "- search: Search a local" in prompt
    assert out.reward_score == 1.0 and out.extra_fields["tool_turn_ends"] == []
    with pytest.raises(ValueError, match="no reward_model.ground_truth"):
        run_loop(tok, ScriptedServer(tok, [ANSWER]), search_tools(handler_url), {**row(), "reward_model": {}})
    with pytest.raises(ValueError, match=r"asks for tools \['web_search'\] but only \['search'\] are loaded"):
        run_loop(tok, ScriptedServer(tok, [ANSWER]), search_tools(handler_url), row(tools=("web_search",)))


def test_instantiated_from_agent_loop_yaml_with_tools_from_tool_yaml(tok, handler_url, monkeypatch):
    """The way verl's worker builds it: hydra.utils.instantiate of configs/agent_loop.yaml's entry, with
    the tools verl loaded from configs/tools/search_tool.yaml."""
    from verl.tools.tool_registry import load_all_tools

    monkeypatch.setenv("IGPO_HANDLER_URLS", handler_url)
    tools = load_all_tools(str(REPO / "configs" / "tools" / "search_tool.yaml"), None)
    (entry,) = [e for e in OmegaConf.load(REPO / "configs" / "agent_loop.yaml") if e.name == "igpo_search"]
    cfg = trainer_config()
    server = ScriptedServer(tok, [CALL, ANSWER])

    async def go():
        loop = hydra.utils.instantiate(
            config=entry,
            trainer_config=DictConfigWrap(config=cfg),
            server_manager=server,
            tokenizer=tok,
            processor=None,
            hf_model_type=None,
            dataset_cls=RLHFDataset,
            data_config=DictConfigWrap(cfg.data),
            tools=ToolListWrap(tools),
        )
        assert isinstance(loop, IGPOSearchAgentLoop)
        assert (loop.max_turn_tokens, loop.min_turn_tokens, loop.max_turns) == (2000, 32, 4)
        try:
            return await loop.run(dict(SAMPLING), **row())
        finally:
            for t in tools:
                await t.aclose()

    out = asyncio.run(go())
    check_layout(out)
    assert out.reward_score == 1.0 and "Paris is the capital" in tok.decode(out.response_ids)


def test_real_tiny_model_through_the_agent_loop(tok, handler_url):
    """Real generation with a random-weight Qwen2 (invariants only); a logit bias on </tool_call> makes
    the model close calls often, so episodes have several turns."""
    server = TinyServerManager(tiny_model(tok, seed=1), tok, output_cls=TokenOutput)
    close = tok.convert_tokens_to_ids("</tool_call>")
    cfg = trainer_config(response_length=256, max_turns=3)
    outs = []
    for seed in range(2):
        sampling = {**SAMPLING, "seed": seed, "logit_bias": {close: 6.0}}
        outs.append(
            run_loop(
                tok, server, search_tools(handler_url), row(), cfg=cfg, sampling=sampling, max_turn_tokens=24
            )
        )
    for out in outs:
        check_layout(out)
        ef = out.extra_fields
        assert 1 <= ef["turns"] <= 3 and len(out.response_ids) <= 256
        assert out.response_logprobs is not None
        spans = turn_spans(out.response_mask)
        for (_, e), nxt in zip(spans, ef["tool_turn_ends"], strict=False):  # tool tokens are mask 0
            assert set(out.response_mask[e:nxt]) == {0}
        assert out.reward_score == -1.0  # a random model does not write a well-formed answer
    assert all(c["max_tokens"] <= 24 for c in server.calls)
    assert max(o.extra_fields["turns"] for o in outs) > 1


def test_server_fields_are_carried_as_verl_tool_agent_loop_carries_them(tok, handler_url):
    """verl's V1 trainer tags each trajectory with min/max_global_steps from extra_fields and builds
    ``np.array([...], dtype=int)`` of them: a loop that drops them crashes the trainer after step 1."""
    import numpy as np

    fields = [
        {"global_steps": 3, "min_global_steps": 3, "max_global_steps": 3, "num_cached_tokens": 5},
        {"global_steps": 4, "min_global_steps": 4, "max_global_steps": 4, "num_cached_tokens": 9},
    ]
    out = run_loop(tok, ScriptedServer(tok, [CALL, ANSWER], fields), search_tools(handler_url), row())
    ef = out.extra_fields
    # first turn's version starts the trajectory, the last turn's ends it (verl's ToolAgentLoop rule)
    assert (ef["min_global_steps"], ef["max_global_steps"], ef["global_steps"]) == (3, 4, 3)
    assert ef["num_cached_tokens"] == 5
    assert np.array([ef["min_global_steps"], ef["max_global_steps"]], dtype=int).tolist() == [3, 4]
    assert ef["turns"] == 2 and ef["ground_truth"] == ["Paris"]  # our own fields are still there


def test_merge_server_fields_sums_speculative_counters_and_keeps_the_last_max_step():
    from igpo.verl.agent_loop import merge_server_fields

    merged = merge_server_fields(
        [
            {
                "min_global_steps": 1,
                "max_global_steps": 1,
                "spec_num_draft_tokens": 2,
                "spec_num_verify_steps": 1,
            },
            {
                "min_global_steps": 2,
                "max_global_steps": 2,
                "spec_num_draft_tokens": 3,
                "spec_num_verify_steps": 4,
            },
            {"max_global_steps": None},
        ]
    )
    assert merged == {
        "min_global_steps": 1,
        "max_global_steps": 2,
        "spec_num_draft_tokens": 5,
        "spec_num_verify_steps": 5,
    }
    assert merge_server_fields([]) == {} and merge_server_fields([None, {}]) == {}


def test_overlong_prompt_is_an_error_naming_the_row_not_a_silent_truncation(tok, handler_url):
    cfg = trainer_config()
    cfg.actor_rollout_ref.rollout.prompt_length = 16
    r = row()
    with pytest.raises(ValueError, match=r"extra_info.index=0.*over rollout.prompt_length.*= 16"):
        run_loop(tok, ScriptedServer(tok, [ANSWER]), search_tools(handler_url), r, cfg=cfg)
