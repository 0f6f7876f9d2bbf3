"""Property-based fuzzing of the handler against its own ``/openapi.json`` (Schemathesis).

A real handler process on loopback, web tools enabled but without keys (web search answers 503), the
reader refusing loopback pages (403): nothing leaves the machine. Valid and invalid inputs with a
fixed seed and a bounded number of examples; every answer must be no server error, with a documented
status code, content type, headers and body.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import schemathesis
from handler_testlib import FakeWeb, Server, base_config
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

SEED = 20240519
MAX_EXAMPLES = 40  # per operation, fuzzing phase; the whole test stays well under a minute
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


LOOPBACK_URL = "http://127.0.0.1:9/"  # refused by the handler's URL guard (403) before any connection


def leaves_machine(url: str) -> bool:
    """Whether the handler would fetch this URL from another machine (parsed as its URL guard does)."""
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host or host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def keep_on_loopback(body: object) -> None:
    """Point every ``url_list`` entry that would leave the machine at loopback, in place."""
    urls = body.get("url_list") if isinstance(body, dict) else None
    if isinstance(urls, list):
        for i, u in enumerate(urls):
            if isinstance(u, str) and leaves_machine(u):
                urls[i] = LOOPBACK_URL


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, fake_web: FakeWeb) -> Iterator[Server]:
    """Web tools on, no keys in the environment, no loopback allow-list, no cache."""
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    cfg = base_config(tmp, fake_web, cache={"enabled": False})
    cfg["reader"]["allow_hosts"] = []
    cfg["web_enabled"] = True
    s = Server(tmp, cfg).start()
    yield s
    s.stop()


def load_schema(url: str) -> schemathesis.schemas.BaseSchema:
    """The served schema, with a fixed seed, bounded examples and valid plus invalid inputs."""
    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True},
            "phases": {"stateful": {"enabled": False}},
            # 502/503/504 are documented answers (here: 503, web search has no key); a 500 is a bug
            "checks": {
                "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "502", "503", "504"]}
            },
        }
    )
    return schemathesis.openapi.from_url(url + "/openapi.json", config=config)


@pytest.fixture(scope="module")
def api(fuzz_server: Server) -> schemathesis.schemas.BaseSchema:
    return load_schema(fuzz_server.url)


schema = schemathesis.pytest.from_fixture("api")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_handler_conforms_to_its_openapi_schema(case: schemathesis.Case, fuzz_server: Server) -> None:
    if case.path == "/tools/browse_webpage":
        keep_on_loopback(case.body)
    case.call_and_validate(checks=CHECKS)
    assert fuzz_server.alive(), fuzz_server.log()


# ----------------------------------------------------------------------------- the contract itself
def test_schema_describes_bodies_answers_and_content_types(server: Server) -> None:
    """Every POST body is described with the running config's limits, every answer and media type too."""
    doc = httpx.get(server.url + "/openapi.json", timeout=10).json()
    paths = doc["paths"]
    retrieve = paths["/retrieve"]["post"]
    body = retrieve["requestBody"]["content"]["application/json"]["schema"]
    queries = body["properties"]["queries"]["anyOf"][0]
    assert queries["maxItems"] == 64 and queries.get("minItems", 0) == 0  # base_config's limits
    assert queries["items"] == {"type": "string"}  # any string: blank ones get [], long ones are clipped
    assert {"query", "top_k", "k", "topk", "return_scores"} <= set(body["properties"])
    assert body["properties"]["topk"]["anyOf"][0]["maximum"] == 20
    web = paths["/tools/web_search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert web["required"] == ["query"] and web["properties"]["query"]["anyOf"][0]["maxItems"] == 16
    browse = paths["/tools/browse_webpage"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert browse["required"] == ["url_list"] and browse["properties"]["url_list"]["maxItems"] == 5
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, codes in [
        ("/retrieve", {"400", "408", "413", "415", "421", "422", "502", "503", "504"}),
        ("/tools/web_search", {"400", "408", "413", "415", "421", "422", "502", "503", "504"}),
        ("/tools/browse_webpage", {"400", "403", "408", "413", "415", "421", "422", "502", "503", "504"}),
    ]:
        answers = paths[path]["post"]["responses"]
        assert set(answers) == {"200", *codes}, path
        assert "$ref" in answers["200"]["content"]["application/json"]["schema"], path
        for code in codes:
            assert answers[code]["content"]["application/json"]["schema"] == error_ref, (path, code)
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert set(paths["/metrics"]["get"]["responses"]) == {"200", "421"}
    assert set(paths["/health"]["get"]["responses"]) == {"200", "403", "421", "422"}
    assert [p["name"] for p in paths["/health"]["get"]["parameters"]] == ["verbose"]
    assert set(doc["components"]["schemas"]["ErrorBody"]["required"]) == {"error", "detail"}


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/retrieve", {"queries": ["capital of France"], "return_scores": True}, 200),
        ("/retrieve", {"query": "capital of France", "k": 2}, 200),
        ("/retrieve", {"queries": ["x" * 300_000]}, 413),
        ("/retrieve", {"queries": ["a"], "topk": 2, "k": 3}, 422),
        ("/tools/web_search", {"query": ["contract search one", "contract search two"]}, 200),
        ("/tools/web_search", {"query": ["FAIL500 contract"]}, 502),
        ("/tools/web_search", {"query": ["SLOW contract"]}, 504),
        ("/tools/browse_webpage", {"url_list": ["{fake}/page.html"], "question": "Tycho"}, 200),
        ("/tools/browse_webpage", {"url_list": ["{fake}/missing"]}, 502),
        ("/tools/browse_webpage", {"url_list": ["http://169.254.169.254/latest/"]}, 403),
    ],
)
def test_answers_the_fuzzer_cannot_reach_conform(
    server: Server, fake_web: FakeWeb, path: str, body: dict, status: int
) -> None:
    """Successes and backend failures of the web tools (against local fakes with keys) match the schema."""
    if "url_list" in body:
        body = {**body, "url_list": [u.format(fake=fake_web.base) for u in body["url_list"]]}
    case = load_schema(server.url)[path]["POST"].Case(body=body)
    response = case.call_and_validate(checks=CHECKS[:-1])
    assert response.status_code == status, response.text
