"""Tests for igpo.prompts: template structure, answer wrapper span, tool-call round trip and errors."""

from __future__ import annotations

import json
import re
from datetime import date

import pytest

from igpo.prompts import (
    ANSWER_WRAPPER,
    INLINE_ANSWER_WRAPPER,
    TOOL_SCHEMAS,
    build_prompt,
    find_tool_calls,
    format_tool_call,
    openai_tool,
    parse_tool_call,
    system_prompt,
    validate_tool_arguments,
    wrap_answer,
)


def test_tool_schemas_complete_and_examples_valid():
    assert set(TOOL_SCHEMAS) == {"search", "web_search", "browse_webpage"}
    for name, spec in TOOL_SCHEMAS.items():
        assert spec["name"] == name
        assert spec["description"]
        assert spec["parameters"]["type"] == "object"
        validate_tool_arguments(name, spec["example"])  # the example shown to the model must be valid
        fn = openai_tool(name)
        assert fn["type"] == "function" and fn["function"]["name"] == name
    assert TOOL_SCHEMAS["search"]["parameters"]["required"] == ["query"]
    assert TOOL_SCHEMAS["browse_webpage"]["parameters"]["required"] == ["url_list"]


def test_system_prompt_structure_defaults_to_search():
    text = system_prompt(today="2025-03-04")
    assert text.startswith("* Today is 2025-03-04\n")
    assert "*deep research*" in text
    assert "- search: " in text
    assert "web_search" not in text and "browse_webpage" not in text
    # The two formats, in order: think+answer, then think+tool_call.
    i_rollout = text.index("# Rollout")
    i_answer = text.index("<answer>", i_rollout)
    i_or = text.index("\nor\n", i_answer)
    i_call = text.index("<tool_call>", i_or)
    assert i_rollout < i_answer < i_or < i_call < text.index("# Tools")
    assert (
        "Only output the final answer (in words, numbers or phrase) inside the <answer></answer> tag" in text
    )
    assert "you should only answer yes or no" in text
    # <tools> holds one JSON signature per tool.
    body = re.search(r"<tools>\n(.*?)\n</tools>", text, re.DOTALL).group(1)
    sigs = [json.loads(line) for line in body.splitlines()]
    assert [s["function"]["name"] for s in sigs] == ["search"]
    assert sigs[0]["function"]["example"] == TOOL_SCHEMAS["search"]["example"]
    assert text.rstrip().endswith('{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def test_system_prompt_tools_and_today():
    text = system_prompt(["web_search", "browse_webpage"], today=date(2024, 12, 31))
    assert "* Today is 2024-12-31" in text
    assert "- web_search: " in text and "- browse_webpage: " in text and "- search: " not in text
    assert f"* Today is {date.today().isoformat()}" in system_prompt()
    with pytest.raises(ValueError, match="unknown tool 'google'"):
        system_prompt(["google"])
    with pytest.raises(ValueError, match="empty"):
        system_prompt([])


def test_build_prompt():
    msgs = build_prompt("  Who wrote Hamlet? ", today="2025-01-01")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[1]["content"] == "Who wrote Hamlet?"
    assert msgs[0]["content"] == system_prompt(["search"], "2025-01-01")
    with pytest.raises(ValueError, match="question"):
        build_prompt("   ")


def test_wrap_answer_span():
    text, (s, e) = wrap_answer("Canberra")
    assert (
        text == "<think>\nNow there's enough information to answer\n</think>\n<answer>\nCanberra\n</answer>"
    )
    assert text == ANSWER_WRAPPER.format(answer="Canberra")
    assert text[s:e] == "Canberra"
    # The prefix "<think>\nNow there's enough information to answer\n</think>\n<answer>\n" has 67 characters.
    assert (s, e) == (67, 75)
    text, (s, e) = wrap_answer("{x} & <y>")
    assert text[s:e] == "{x} & <y>" and text.endswith("</answer>")
    text, (s, e) = wrap_answer("")
    assert s == e == 67
    text, (s, e) = wrap_answer("Canberra", INLINE_ANSWER_WRAPPER)
    assert text == "<think>Now there's enough information to answer</think><answer>Canberra</answer>"
    assert (s, e) == (63, 71)
    with pytest.raises(ValueError):
        wrap_answer(["a"])  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match="answer_template must contain '{answer}' exactly once, got '<answer>'"
    ):
        wrap_answer("a", "<answer>")


def test_tool_call_round_trip():
    call = format_tool_call("search", {"query": ["Hamlet author", "Shakespeare"]})
    assert call.startswith("<tool_call>") and call.endswith("</tool_call>")
    assert parse_tool_call(call) == ("search", {"query": ["Hamlet author", "Shakespeare"]})
    turn = "<think>I should look it up</think>\n" + call
    assert parse_tool_call(turn) == ("search", {"query": ["Hamlet author", "Shakespeare"]})
    assert find_tool_calls(turn + call) and len(find_tool_calls(turn + call)) == 2
    # A bare JSON body and OpenAI-style string arguments are accepted.
    assert parse_tool_call('{"name": "web_search", "arguments": "{\\"query\\": [\\"x\\"]}"}') == (
        "web_search",
        {"query": ["x"]},
    )
    args = {"url_list": ["https://a.b"], "question": "who?"}
    assert parse_tool_call(format_tool_call("browse_webpage", args)) == ("browse_webpage", args)


@pytest.mark.parametrize(
    "text, reason",
    [
        ('<tool_call>{"name": "search", "arguments": {"query": ["x"]}', "closing"),
        ("<tool_call>   </tool_call>", "empty"),
        ("<tool_call>{name: search}</tool_call>", "not valid JSON"),
        ("<tool_call>[1, 2]</tool_call>", "JSON object"),
        ('<tool_call>{"arguments": {"query": ["x"]}}</tool_call>', "no 'name'"),
        ('<tool_call>{"name": 3, "arguments": {}}</tool_call>', "'name' must be a string"),
        ('<tool_call>{"name": "google", "arguments": {"query": ["x"]}}</tool_call>', "unknown tool 'google'"),
        ('<tool_call>{"name": "search"}</tool_call>', "no 'arguments'"),
        ('<tool_call>{"name": "search", "arguments": "{bad"}</tool_call>', "not valid JSON"),
        ('<tool_call>{"name": "search", "arguments": [1]}</tool_call>', "must be a JSON object"),
        (
            '<tool_call>{"name": "search", "arguments": {}}</tool_call>',
            "missing the required argument 'query'",
        ),
        (
            '<tool_call>{"name": "search", "arguments": {"query": "x"}}</tool_call>',
            "search.query must be a list of strings",
        ),
        (
            '<tool_call>{"name": "search", "arguments": {"query": ["x", 2]}}</tool_call>',
            r"search.query\[1\] must be a string",
        ),
        ('<tool_call>{"name": "search", "arguments": {"query": []}}</tool_call>', "at least 1"),
        (
            '<tool_call>{"name": "search", "arguments": {"query": ["x"], "k": 3}}</tool_call>',
            "unexpected argument",
        ),
        (
            '<tool_call>{"name": "browse_webpage", "arguments": {"url_list": ["u"], "goal": 1}}</tool_call>',
            "browse_webpage.goal must be a string",
        ),
    ],
)
def test_parse_tool_call_errors(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_tool_call(text)


def test_parse_tool_call_restricted_tools():
    call = format_tool_call("web_search", {"query": ["x"]})
    with pytest.raises(ValueError, match="available tools: \\['search'\\]"):
        parse_tool_call(call, tools=["search"])


def test_formats_agree_with_answer_module():
    """A turn built from format_tool_call and wrap_answer passes igpo.answer's turn grammar and extraction."""
    from igpo.answer import check_format, extract_answer

    final, (s, e) = wrap_answer("Canberra")
    response = (
        "<think>look it up</think>"
        + format_tool_call("search", {"query": ["capital of Australia"]})
        + "<tool_response>Canberra is the capital.</tool_response>"
        + final
    )
    assert check_format(response) == (True, "ok")
    assert extract_answer(response) == final[s:e] == "Canberra"
