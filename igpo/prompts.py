"""Prompt text shared by training, evaluation and the information-gain computation.

Everything the model is told (system prompt, tool signatures) and everything we parse back out of it
(tool calls) or append to it (the wrapped ground-truth answer) lives here, so the agent loop, the data
preparation script and the IG code agree on one format. Pure Python: no torch, no verl.

The system prompt follows the template of the IGPO paper (Appendix H, in the style of DeepResearcher):
a date line, the deep-research instruction, the tool list, the two allowed turn formats, the rule for
the final answer, and a ``# Tools`` section with JSON signatures inside ``<tools></tools>``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

__all__ = [
    "ANSWER_WRAPPER",
    "DEFAULT_TOOLS",
    "INLINE_ANSWER_WRAPPER",
    "TOOL_SCHEMAS",
    "build_prompt",
    "find_tool_calls",
    "format_tool_call",
    "openai_tool",
    "parse_tool_call",
    "system_prompt",
    "validate_tool_arguments",
    "wrap_answer",
]

_STRING_LIST = {"type": "array", "items": {"type": "string"}, "minItems": 1}

#: Tool name -> signature. ``parameters`` is a JSON schema (the subset checked by
#: :func:`validate_tool_arguments`); ``example`` is a valid arguments object shown to the model.
TOOL_SCHEMAS: dict[str, dict[str, Any]] = {
    "search": {
        "name": "search",
        "description": (
            "Search a local Wikipedia corpus. Give one or more queries; for each query the top "
            "passages (title and text) are returned."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "query": {**_STRING_LIST, "description": "The search queries, one string per query."},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        "example": {"query": ["capital of Australia", "Canberra population"]},
    },
    "web_search": {
        "name": "web_search",
        "description": (
            "Search the web. Give a list of queries (only the first 3 are used); for each query the "
            "title, URL and snippet of the top results are returned."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "query": {**_STRING_LIST, "description": "The search queries; at most the first 3 are run."},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        "example": {"query": ["2024 Nobel Prize in Physics winners"]},
    },
    "browse_webpage": {
        "name": "browse_webpage",
        "description": (
            "Read web pages. Give a list of URLs and the goal of reading them; for each page the "
            "information relevant to the goal is returned."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "url_list": {**_STRING_LIST, "description": "The URLs of the pages to read."},
                "goal": {"type": "string", "description": "What to look for in the pages."},
                "question": {"type": "string", "description": "Alias of 'goal'."},
            },
            "required": ["url_list"],
            "additionalProperties": False,
        },
        "example": {
            "url_list": ["https://en.wikipedia.org/wiki/Canberra"],
            "goal": "Find the year Canberra became the capital of Australia.",
        },
    },
}

#: Tools offered when none are named: local retrieval only (the laptop/default setting).
DEFAULT_TOOLS: tuple[str, ...] = ("search",)

#: How the agent writes a final answer, in the layout the system prompt asks for (each tag on its own
#: line); the IG computation appends this after each turn and scores only the tokens of ``{answer}``.
#: The line break before ``{answer}`` also keeps BPE from merging the tag's ``>`` into the answer.
ANSWER_WRAPPER = "<think>\nNow there's enough information to answer\n</think>\n<answer>\n{answer}\n</answer>"

#: The paper's inline example of the final turn (Appendix H). Not the default: under Qwen2's
#: pre-tokenizer ``>Paris`` is one pre-token, so a scored token may carry the tag's ``>``.
INLINE_ANSWER_WRAPPER = "<think>Now there's enough information to answer</think><answer>{answer}</answer>"

_TEMPLATE_HEAD = """\
* Today is {today}
* You are an AI Assistant*

The question I give you is a complex question that requires a *deep research* to answer.
I will provide you with tools to help you answer the question:
{tool_list}

You don't have to answer the question now, but you should first think about the research plan or what to search next.
Your output format should be one of the following two formats:

# Rollout
<think>
YOUR THINKING PROCESS
</think>
<answer>
YOUR ANSWER AFTER GETTING ENOUGH INFORMATION
</answer>

or

<think>
YOUR THINKING PROCESS
</think>
<tool_call>
YOUR TOOL CALL WITH CORRECT FORMAT
</tool_call>

You should always follow the above two formats strictly.
Only output the final answer (in words, numbers or phrase) inside the <answer></answer> tag, without any \
explanations or extra information. If this is a yes-or-no question, you should only answer yes or no.

# Tools
You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tool_signatures}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def _resolve_tools(tools: Iterable[str] | str | None) -> list[str]:
    """Turn the ``tools`` argument into a checked list of known tool names."""
    if tools is None:
        return list(DEFAULT_TOOLS)
    if isinstance(tools, str):
        tools = [tools]
    names = list(tools)
    if not names:
        raise ValueError("tools: at least one tool is needed, got an empty list")
    for name in names:
        if name not in TOOL_SCHEMAS:
            raise ValueError(f"tools: unknown tool {name!r}; known tools: {sorted(TOOL_SCHEMAS)}")
    return names


def _resolve_today(today: str | date | None) -> str:
    if today is None:
        return date.today().isoformat()
    if isinstance(today, date):
        return today.isoformat()
    if isinstance(today, str) and today.strip():
        return today.strip()
    raise ValueError(f"today: expected a date or a non-empty string, got {today!r}")


def openai_tool(name: str) -> dict[str, Any]:
    """The OpenAI function-calling form of one tool: ``{"type": "function", "function": {...}}``.

    This is also what verl's tool config (``tool_schema``) expects.
    """
    if name not in TOOL_SCHEMAS:
        raise ValueError(f"unknown tool {name!r}; known tools: {sorted(TOOL_SCHEMAS)}")
    spec = TOOL_SCHEMAS[name]
    return {
        "type": "function",
        "function": {
            "name": spec["name"],
            "description": spec["description"],
            "parameters": copy.deepcopy(spec["parameters"]),
        },
    }


def _signature_line(name: str) -> str:
    """One tool's JSON signature as shown inside ``<tools></tools>`` (function form plus example)."""
    sig = openai_tool(name)
    sig["function"]["example"] = TOOL_SCHEMAS[name]["example"]
    return json.dumps(sig, ensure_ascii=False)


def system_prompt(tools: Iterable[str] | str | None = None, today: str | date | None = None) -> str:
    """The system prompt of the paper's Appendix H template for the given tools.

    ``tools`` defaults to ``["search"]``; ``today`` defaults to today's date (ISO format). Fix ``today``
    when the prompt must be reproducible (data preparation writes it into the parquet).
    """
    names = _resolve_tools(tools)
    tool_list = "\n".join(f"- {n}: {TOOL_SCHEMAS[n]['description']}" for n in names)
    signatures = "\n".join(_signature_line(n) for n in names)
    return _TEMPLATE_HEAD.format(today=_resolve_today(today), tool_list=tool_list, tool_signatures=signatures)


def build_prompt(
    question: str, tools: Iterable[str] | str | None = None, today: str | date | None = None
) -> list[dict[str, str]]:
    """Chat messages for one question: the system prompt, then the question as the user turn.

    This is the ``prompt`` column of a verl dataset row.
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question: expected a non-empty string, got {question!r}")
    return [
        {"role": "system", "content": system_prompt(tools, today)},
        {"role": "user", "content": question.strip()},
    ]


def wrap_answer(answer: str, template: str = ANSWER_WRAPPER) -> tuple[str, tuple[int, int]]:
    """Wrap ``answer`` as the agent writes a final turn, and give the answer's character span.

    ``template`` holds ``{answer}`` once (default :data:`ANSWER_WRAPPER`). Returns
    ``(text, (start, end))`` with ``text[start:end] == answer``; the information-gain code tokenizes
    ``text`` and scores only the tokens covering that span.
    """
    if not isinstance(answer, str):
        raise ValueError(f"answer: expected a string, got {type(answer).__name__}")
    if not isinstance(template, str) or template.count("{answer}") != 1:
        raise ValueError(f"answer_template must contain '{{answer}}' exactly once, got {template!r}")
    prefix, _, suffix = template.partition("{answer}")
    text = prefix + answer + suffix
    start = len(prefix)
    return text, (start, start + len(answer))


def format_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """A tool call as the model should write it: ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``."""
    if not isinstance(arguments, Mapping):
        raise ValueError(f"arguments: expected a JSON object, got {type(arguments).__name__}")
    body = json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def find_tool_calls(text: str) -> list[str]:
    """The bodies of all complete ``<tool_call>…</tool_call>`` blocks in ``text``, in order."""
    return [m.group(1) for m in _TOOL_CALL_RE.finditer(text)]


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "array": (list,),
    "object": (dict,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def _type_name(value: Any) -> str:
    names = {str: "string", list: "array", dict: "object", bool: "boolean", int: "integer", float: "number"}
    return names.get(type(value), "null" if value is None else type(value).__name__)


def _check_value(value: Any, schema: Mapping[str, Any], where: str) -> None:
    expected = schema.get("type")
    if expected is not None:
        ok = isinstance(value, _JSON_TYPES[expected]) and not (
            expected in ("integer", "number") and isinstance(value, bool)
        )
        if not ok:
            raise ValueError(f"{where} must be {_describe(schema)}, got {_type_name(value)} {value!r}")
    if expected == "array":
        if len(value) < schema.get("minItems", 0):
            raise ValueError(f"{where} must have at least {schema['minItems']} item(s), got an empty list")
        items = schema.get("items")
        if items:
            for i, item in enumerate(value):
                _check_value(item, items, f"{where}[{i}]")


def _describe(schema: Mapping[str, Any]) -> str:
    if schema.get("type") == "array" and schema.get("items", {}).get("type"):
        return f"a list of {schema['items']['type']}s"
    return f"a {schema.get('type')}"


def validate_tool_arguments(name: str, arguments: Any) -> None:
    """Check ``arguments`` against the tool's JSON schema; raise ``ValueError`` naming the problem."""
    if name not in TOOL_SCHEMAS:
        raise ValueError(f"unknown tool {name!r}; available tools: {sorted(TOOL_SCHEMAS)}")
    schema = TOOL_SCHEMAS[name]["parameters"]
    if not isinstance(arguments, dict):
        raise ValueError(f"'arguments' of {name} must be a JSON object, got {_type_name(arguments)}")
    props = schema.get("properties", {})
    for key in schema.get("required", []):
        if key not in arguments:
            raise ValueError(f"{name} is missing the required argument {key!r}")
    if schema.get("additionalProperties") is False:
        extra = sorted(set(arguments) - set(props))
        if extra:
            raise ValueError(f"{name} got unexpected argument(s) {extra}; allowed: {sorted(props)}")
    for key, value in arguments.items():
        if key in props:
            _check_value(value, props[key], f"{name}.{key}")


def parse_tool_call(text: str, tools: Iterable[str] | None = None) -> tuple[str, dict[str, Any]]:
    """Parse one tool call written by the model into ``(name, arguments)``.

    ``text`` is either the JSON body of a call or a model turn containing ``<tool_call>…</tool_call>``
    (then the first complete block is used). ``tools`` restricts the accepted tool names (default: all
    of :data:`TOOL_SCHEMAS`). Raises ``ValueError`` with a reason fit to show the model: no call found,
    malformed JSON, missing ``name``/``arguments``, unknown tool, or arguments of the wrong type.
    """
    if not isinstance(text, str):
        raise ValueError(f"tool call must be text, got {type(text).__name__}")
    if "<tool_call>" in text:
        bodies = find_tool_calls(text)
        if not bodies:
            raise ValueError("found <tool_call> without a closing </tool_call>")
        body = bodies[0]
    else:
        body = text
    body = body.strip()
    if not body:
        raise ValueError('the tool call is empty; expected {"name": ..., "arguments": {...}}')
    try:
        call = json.loads(body)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"the tool call is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    if not isinstance(call, dict):
        raise ValueError(
            f"the tool call must be a JSON object with 'name' and 'arguments', got {_type_name(call)}"
        )
    name = call.get("name")
    if name is None:
        raise ValueError("the tool call has no 'name'")
    if not isinstance(name, str):
        raise ValueError(f"the tool call's 'name' must be a string, got {_type_name(name)}")
    allowed = list(TOOL_SCHEMAS) if tools is None else list(tools)
    if name not in allowed:
        raise ValueError(f"unknown tool {name!r}; available tools: {allowed}")
    if "arguments" not in call:
        raise ValueError(f"the tool call to {name} has no 'arguments'")
    arguments = call["arguments"]
    if isinstance(arguments, str):
        # Some models write the arguments as a JSON string (OpenAI's wire format); accept that.
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as e:
            raise ValueError(f"'arguments' of {name} is a string that is not valid JSON: {e.msg}") from None
    validate_tool_arguments(name, arguments)
    return name, arguments
