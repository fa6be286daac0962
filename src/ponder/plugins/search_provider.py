"""Web search for Ponder's plugins and tools: the `SearchProvider` protocol, its SearXNG
implementation, `WebSearch` (what the server lends the `web_search` and `deep_research`
plugins) and the react tool `web_search`.

The provider is the operator's: its URL (PONDER_WEB_SEARCH_URL) is trusted and may be on
loopback or the private network, so it is not put through the address checks of
`ponder.sandbox.fetch` (the result pages a plugin fetches are). Unset, web search is off.

SearXNG's JSON API: `GET {url}/search?q=QUERY&format=json` answers `{"results": [{"title",
"url", "content"}, ...]}` (the instance must list `json` among its `search.formats`, or it
answers 403); no proxy is taken from the environment. Every search is bounded: one time
limit for the whole exchange, at most `max_results` results, titles and snippets cut to a few
hundred characters, only http(s) results, each URL once. A provider that cannot be reached,
answers an error status, takes too long or answers something that is not its JSON raises
`SearchFailed` (a 502; `SearchTimedOut`, a 504): the message says what went wrong, never the
provider's URL or the query.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx

from ponder.config import Settings
from ponder.errors import BackendError
from ponder.types import Message

log = logging.getLogger(__name__)

SLUG = "web_search"
"""The name of the resource (and of the react tool)."""
SETTING = "PONDER_WEB_SEARCH_URL"
USER_AGENT = "Ponder"
MAX_QUERY_CHARS = 400
MAX_TITLE_CHARS = 200
MAX_SNIPPET_CHARS = 600
MAX_URL_CHARS = 2000
TOOL_RESULTS = 5


class SearchFailed(BackendError):
    """The search provider gave no results: unreachable, an error status, a bad answer."""

    code = "search_failed"


class SearchTimedOut(SearchFailed):
    status_code = 504
    type = "timeout"
    code = "search_timeout"


@dataclass(frozen=True, slots=True)
class SearchResult:
    title: str
    url: str
    snippet: str


class SearchProvider(Protocol):
    async def search(self, query: str, limit: int) -> list[SearchResult]:
        """At most `limit` results for `query`, best first; `SearchFailed` when it cannot."""
        ...


class SearxngProvider:
    """A SearXNG instance at `url`. Each search opens its own short-lived client (nothing to
    close); `transport` is for tests."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        base = httpx.URL(url.strip())
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"{SETTING} must be an http(s) URL, e.g. http://127.0.0.1:8888")
        self.endpoint = base.copy_with(path=base.path.rstrip("/") + "/search")
        self.timeout_s = timeout_s
        self.transport = transport

    async def search(self, query: str, limit: int) -> list[SearchResult]:
        params = {"q": query, "format": "json"}
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        try:
            async with (
                asyncio.timeout(self.timeout_s),
                httpx.AsyncClient(
                    transport=self.transport, timeout=self.timeout_s, trust_env=False
                ) as client,
            ):
                response = await client.get(self.endpoint, params=params, headers=headers)
        except (TimeoutError, httpx.TimeoutException):
            raise _failed(
                SearchTimedOut, f"did not answer within {self.timeout_s:g}s", retryable=True
            ) from None
        except httpx.HTTPError as exc:
            raise _failed(
                SearchFailed, f"cannot be reached ({type(exc).__name__})", retryable=True
            ) from None
        if response.status_code != 200:
            hint = (
                " (SearXNG does so when its json format is off)"
                if response.status_code == 403
                else ""
            )
            raise _failed(
                SearchFailed,
                f"answered HTTP {response.status_code}{hint}",
                retryable=response.status_code == 429 or response.status_code >= 500,
            )
        return parse_results(response, limit)


def parse_results(response: httpx.Response, limit: int) -> list[SearchResult]:
    """The first `limit` usable results of a SearXNG JSON answer, each URL once."""
    try:
        data = response.json()
    except ValueError:
        raise _failed(SearchFailed, "answered something that is not JSON") from None
    items = data.get("results") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise _failed(SearchFailed, "answered JSON without a list of results")
    results: list[SearchResult] = []
    for item in items:
        if len(results) >= limit:
            break
        result = _result(item)
        if result is not None and all(r.url != result.url for r in results):
            results.append(result)
    return results


def _result(item: object) -> SearchResult | None:
    if not isinstance(item, dict):
        return None
    url, title, snippet = item.get("url"), item.get("title"), item.get("content")
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        return None
    if len(url) > MAX_URL_CHARS:
        return None
    return SearchResult(
        title=_line(title, MAX_TITLE_CHARS) or url,
        url=url,
        snippet=_line(snippet, MAX_SNIPPET_CHARS),
    )


def _line(value: object, limit: int) -> str:
    text = " ".join(value.split()) if isinstance(value, str) else ""
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _failed(kind: type[SearchFailed], what: str, *, retryable: bool = False) -> SearchFailed:
    log.warning("web search: the provider %s", what)  # never the query: it is the user's
    return kind(f"the web search provider {what}", retryable=retryable)


# ---- what the server lends -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebSearch:
    """The server's search provider, with the server's cap on results per search."""

    provider: SearchProvider
    max_results: int = 10

    @classmethod
    def for_settings(cls, settings: Settings) -> WebSearch | None:
        """The configured search, or None when PONDER_WEB_SEARCH_URL is unset."""
        if not settings.web_search_url:
            return None
        provider = SearxngProvider(settings.web_search_url, timeout_s=settings.web_search_timeout_s)
        return cls(provider, settings.web_search_max_results)

    async def search(self, query: str, limit: int) -> list[SearchResult]:
        """At most `limit` (and the server's cap) results for `query` (cut to
        MAX_QUERY_CHARS)."""
        results = await self.provider.search(query[:MAX_QUERY_CHARS], min(limit, self.max_results))
        return results[: min(limit, self.max_results)]


# ---- the react tool ------------------------------------------------------------------------


class WebSearchTool:
    """`web_search[query]`: the titles, URLs and snippets of the top results."""

    name = SLUG
    description = (
        "searches the web and gives the top results' titles, URLs and snippets, e.g. "
        "web_search[tallest building in Europe]. Read a result's page with fetch_url where "
        "it is offered."
    )

    def __init__(self, search: WebSearch, limit: int = TOOL_RESULTS) -> None:
        self.search = search
        self.limit = limit

    async def run(self, text: str, context: Sequence[Message]) -> str:
        query = " ".join(text.strip().strip("`'\"").split())
        if not query:
            return "Error: no query given"
        try:
            results = await self.search.search(query, self.limit)
        except SearchFailed as exc:
            return f"Error: {exc.message}"
        if not results:
            return f"No results for {query!r}."
        return "\n\n".join(
            f"[{number}] {r.title}\nURL: {r.url}\n{r.snippet}".rstrip()
            for number, r in enumerate(results, start=1)
        )
