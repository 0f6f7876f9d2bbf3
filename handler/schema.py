"""The handler's API contract as pydantic models: what ``GET /openapi.json`` and ``/docs`` describe.

The routes parse request bodies by hand (whatever the content type, with a streamed size cap and
cross-field checks that keep their own messages); the request models here only *describe* that parsing,
with the limits of the running config, so clients, ``/docs`` and fuzzers see the inputs the server takes.
The response models are what the routes return.
"""

from __future__ import annotations

from typing import Annotated, Any

from annotated_types import Len
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from handler.config import LimitsConfig

# A string with at least one non-space character: the handler refuses empty and blank queries and URLs
# (``str.strip()`` and the regex class ``\s`` agree on what a space is).
NOT_BLANK = r"\S"


# ----------------------------------------------------------------------------- errors
class ErrorBody(BaseModel):
    """Every failure: a short kind (also the ``x-error-kind`` header) and a message naming the field."""

    error: str = Field(description="bad_json | too_large | bad_input | forbidden | backend_error | ...")
    detail: str = Field(description="What went wrong, naming the field and the value when the input is wrong")


#: Each error status a POST route can answer, with the kind it carries and when.
ERRORS: dict[int, tuple[str, str]] = {
    400: (
        "bad_json",
        "The body is empty, not valid JSON or nested too deeply (or Content-Length is not a number)",
    ),
    403: (
        "forbidden",
        "A URL points at a loopback, private, link-local or metadata address "
        "(/health: verbose=1 asked by a client that is not on loopback)",
    ),
    408: ("body_timeout", "The body did not arrive within limits.body_timeout_s (the connection is closed)"),
    413: ("too_large", "The body is over limits.max_body_bytes"),
    415: ("unsupported_media_type", "The body's Content-Type is not application/json"),
    421: (
        "bad_host",
        "The Host header is not loopback, the bind address or in allowed_hosts (DNS-rebinding guard)",
    ),
    422: ("bad_input", "A field is missing, of the wrong type or out of bounds (the detail names it)"),
    502: ("backend_error", "The backend (index, search API, page reader) failed after bounded retries"),
    503: (
        "unavailable | busy",
        "The feature is not configured (no retrieval backend, web tools disabled or no key), or the "
        "backend already has limits.max_backend_jobs batches running or waiting (busy, Retry-After: 1)",
    ),
    504: ("backend_timeout", "The backend did not answer in time"),
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` entries: the ``{"error", "detail"}`` body for each status."""
    return {
        s: {
            "model": ErrorBody,
            "description": f"{ERRORS[s][1]} (error: {ERRORS[s][0]})",
            "content": {
                "application/json": {"example": {"error": ERRORS[s][0].split(" | ")[0], "detail": "..."}}
            },
            "headers": {
                "x-error-kind": {"description": "The error kind again", "schema": {"type": "string"}}
            },
        }
        for s in statuses
    }


# ----------------------------------------------------------------------------- responses
class Document(BaseModel):
    """One passage of the corpus."""

    id: str
    contents: str = Field(description="Title on the first line (wiki-18 style), then the text")


class ScoredHit(BaseModel):
    """A ranked passage with its score (``return_scores: true``)."""

    document: Document
    score: float


class RetrieveResponse(BaseModel):
    """One list of passages per query, in the order of the queries, best first."""

    result: list[list[ScoredHit]] | list[list[Document]] = Field(
        description="Per query: hits with scores when return_scores is true, else the documents alone"
    )


class WebHit(BaseModel):
    """One web search result."""

    title: str
    url: str
    snippet: str


class WebSearchResponse(BaseModel):
    """The text the agent reads, plus the hits themselves."""

    result: str = Field(
        description="Numbered hits per query; says so when only the first queries were searched"
    )
    hits: list[list[WebHit]] = Field(description="Per searched query, its hits")
    queries: list[str] = Field(description="The queries searched")


class PageResult(BaseModel):
    """What one URL gave: text about the question, or why it could not be read."""

    url: str
    ok: bool
    text: str
    error: str


class BrowseResponse(BaseModel):
    """The text the agent reads, plus each page's outcome."""

    result: str
    pages: list[PageResult]


class HealthResponse(BaseModel):
    """Liveness and facts about the service (the backend adds its own, e.g. vocab_size). File paths
    (index_dir, cache.path) and the pid only with ``?verbose=1`` from a loopback client."""

    model_config = ConfigDict(extra="allow")
    status: str
    backend: str
    corpus_size: int
    pid: int | None = Field(None, description="Only with ?verbose=1 from a loopback client")
    uptime_s: float
    cache: dict[str, Any]
    web: dict[str, Any]


# ----------------------------------------------------------------------------- request bodies
def request_models(lim: LimitsConfig) -> dict[str, type[BaseModel]]:
    """Models of the three POST bodies with the configured limits (extra fields are ignored)."""
    Query = Annotated[str, StringConstraints(pattern=NOT_BLANK, max_length=lim.max_query_chars)]
    TopK = Annotated[int, Field(ge=1, le=lim.max_topk)]
    Url = Annotated[str, StringConstraints(pattern=NOT_BLANK, max_length=lim.max_url_chars)]

    class RetrieveRequest(BaseModel):
        """Search-R1 ``/retrieve``. Exactly one of ``queries`` and ``query`` (null counts as absent);
        ``topk``, ``top_k`` and ``k`` are aliases and must agree when several are given. Any string is a
        query: an empty list answers ``{"result": []}``, a blank query gets no hits, a long one is searched
        on its first ``limits.max_query_tokens`` words and ``limits.max_query_chars`` characters."""

        model_config = ConfigDict(
            json_schema_extra={
                "examples": [
                    {"queries": ["capital of France", "highest mountain"], "topk": 3, "return_scores": True},
                    {"query": "capital of France", "top_k": 2},
                ],
                "oneOf": [
                    {"required": ["queries"], "properties": {"queries": {"type": "array"}}},
                    {"required": ["query"], "properties": {"query": {"type": "string"}}},
                ],
            }
        )
        queries: Annotated[list[str], Len(0, lim.max_queries)] | None = Field(
            None, description="The queries (Search-R1); one hit list per query, in order"
        )
        query: str | None = Field(None, description="One query (alias used by Search-R1 descendants)")
        topk: TopK | None = Field(None, description=f"Passages per query (default {lim.default_topk})")
        top_k: TopK | None = Field(None, description="Alias of topk")
        k: TopK | None = Field(None, description="Alias of topk")
        return_scores: bool = Field(False, description="Return {document, score} hits instead of documents")

    class WebSearchRequest(BaseModel):
        """The ``web_search`` tool: the first ``max_web_queries`` queries are searched, the text says so."""

        model_config = ConfigDict(json_schema_extra={"examples": [{"query": ["Kepler laws", "Tycho Brahe"]}]})

        query: Annotated[list[Query], Len(1, lim.max_web_query_list)] | Query = Field(
            description=f"Queries (or one string); the first {lim.max_web_queries} are searched"
        )

    class BrowseRequest(BaseModel):
        """The ``browse_webpage`` tool: http(s) URLs (others get 422; non-public addresses 403)."""

        model_config = ConfigDict(
            json_schema_extra={
                "examples": [
                    {"url_list": ["https://example.org/kepler"], "question": "Who did Kepler assist?"}
                ]
            }
        )

        url_list: Annotated[list[Url], Len(1, lim.max_urls)] = Field(description="Pages to read")
        question: str = Field("", max_length=lim.max_question_chars, description="What to look for")

    return {"retrieve": RetrieveRequest, "web_search": WebSearchRequest, "browse": BrowseRequest}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that parses its JSON body by hand: the body's schema, inline."""
    schema = model.model_json_schema()
    if "$defs" in schema:
        raise ValueError(f"{model.__name__}: nested models cannot be inlined into the OpenAPI document")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
