"""igpo.verl.search_tool: the verl BaseTool over the handler client, against a real handler on loopback."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parents[1]
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from helpers.handler_proc import REPO, free_port, handler_available, running_handler  # noqa: E402

pytestmark = pytest.mark.skipif(not handler_available(), reason="handler/__main__.py is not there yet")

verl_tools = pytest.importorskip("verl.tools.base_tool")

from verl.tools.schemas import OpenAIFunctionToolSchema  # noqa: E402
from verl.tools.tool_registry import initialize_tools_from_config  # noqa: E402

from igpo.prompts import openai_tool  # noqa: E402
from igpo.verl.search_tool import SearchTool  # noqa: E402


@pytest.fixture(scope="module")
def handler_url(tmp_path_factory):
    with running_handler(tmp_path_factory.mktemp("handler")) as url:
        yield url


def make(name: str, url: str, **over) -> SearchTool:
    return SearchTool({"type": "native", "name": name, "handler_urls": [url], **over}, None)


async def _execute(tool: SearchTool, params: dict):
    instance_id, _ = await tool.create()
    try:
        return await tool.execute(instance_id, params)
    finally:
        await tool.release(instance_id)
        await tool.aclose()


def execute(tool: SearchTool, params: dict):
    return asyncio.run(_execute(tool, params))


def test_search_returns_passages_from_the_handler(handler_url):
    tool = make("search", handler_url, topk=2)
    resp, reward, metrics = execute(tool, {"query": ["capital of France"]})
    assert reward == 0.0
    assert metrics["error"] is False and metrics["num_queries"] == 1 and metrics["tool"] == "search"
    assert resp.text.startswith("Doc 1(Title: Paris) Paris is the capital")
    assert resp.text.count("Doc ") == 2
    # several queries in one call
    resp, _, metrics = execute(tool, {"query": ["capital of France", "highest mountain"]})
    assert 'Results for "highest mountain":' in resp.text and "Everest" in resp.text
    assert metrics["num_queries"] == 2


def test_handler_failures_are_text_and_an_error_flag_never_an_exception(handler_url):
    # web search without an API key on the handler: HTTP 503 -> readable text + error flag
    resp, _, metrics = execute(make("web_search", handler_url), {"query": ["nobel prize 2024"]})
    assert metrics["error"] is True and "web search is not configured" in metrics["error_reason"]
    assert resp.text.startswith("Web search failed")
    # nothing listening on the port: bounded retries, then text + error flag
    dead = f"http://127.0.0.1:{free_port()}"
    resp, _, metrics = execute(
        make("search", dead, max_retries=1, backoff_s=0.0, timeout_s=2), {"query": ["x"]}
    )
    assert metrics["error"] is True and "unreachable" in resp.text
    # browse_webpage to a private address is refused by the handler: text + error flag
    resp, _, metrics = execute(
        make("browse_webpage", handler_url), {"url_list": ["http://127.0.0.1:1/x"], "goal": "find x"}
    )
    assert metrics["error"] is True and resp.text.startswith("Browsing failed")


def test_bad_arguments_give_a_readable_error(handler_url):
    resp, _, metrics = execute(make("search", handler_url), {"query": "not a list"})
    assert metrics["error"] is True
    assert resp.text == "Invalid arguments: search.query must be a list of strings, got string 'not a list'."
    resp, _, metrics = execute(make("browse_webpage", handler_url), {"goal": "x"})
    assert "missing the required argument 'url_list'" in resp.text


def test_schema_comes_from_igpo_prompts_and_yaml_loads_all_three_tools(monkeypatch):
    tool = make("web_search", "http://127.0.0.1:9")
    assert tool.name == "web_search"
    assert tool.tool_schema.function.description == openai_tool("web_search")["function"]["description"]
    monkeypatch.setenv("IGPO_HANDLER_URLS", "http://10.0.0.5:8000, http://10.0.0.6:8000")
    tools = initialize_tools_from_config(str(REPO / "configs" / "tools" / "search_tool.yaml"))
    assert [t.name for t in tools] == ["search", "web_search", "browse_webpage"]
    assert all(t.urls == ["http://10.0.0.5:8000", "http://10.0.0.6:8000"] for t in tools)
    assert tools[0].topk == 3
    # the name can also come from a tool_schema given in the YAML
    schema = OpenAIFunctionToolSchema.model_validate(openai_tool("browse_webpage"))
    assert SearchTool({"type": "native", "handler_urls": "http://h:1"}, schema).name == "browse_webpage"


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"name": "calculator"}, "name must be one of"),
        ({"handler_urls": "ftp://x"}, "handler_urls entry 'ftp://x' must start with http://"),
        ({"handler_urls": []}, "handler_urls is empty"),
        ({"topk": 0}, "topk must be >= 1, got 0"),
        ({"timeout_s": "fast"}, "timeout_s must be a number, got 'fast'"),
        ({"max_retries": 1.5}, "max_retries must be an integer, got 1.5"),
        ({"colour": "red"}, r"unknown key\(s\) \['colour'\]"),
    ],
)
def test_bad_config_names_the_key(config, needle):
    with pytest.raises(ValueError, match=needle):
        SearchTool({"type": "native", "handler_urls": "http://h:1", **config}, None)
