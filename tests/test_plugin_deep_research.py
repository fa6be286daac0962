"""`deep_research`, a plugin: a first draft from the model's own knowledge, rounds of
search-guided revision (plan queries, search, revise) that stop when the model says DONE or
the search finds nothing new, then the report through the rest of the route, which streams.
Off unless web search is configured; a search failing midway keeps the work done and writes the
report from it. Offline: SearXNG is the fake of tests/test_plugin_web_search.py."""

from __future__ import annotations

import httpx

from ponder.errors import BackendUnavailable
from ponder.plugins.deep_research import (
    DRAFT_INSTRUCTIONS,
    FINDINGS_HEADER,
    NO_SOURCES,
    PLAN_REQUEST,
    REPORT_REQUEST,
    REVISE_REQUEST,
    research_turns,
)
from ponder.testing import Call
from ponder.types import Message
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    conversation,
    scripted,
    sse_events,
    streamed_text,
    trace_steps,
    usage_for,
    user,
)
from tests.test_plugin_web_search import Searx, block, hit, post, searching_app

QUESTION = "How tall is the Eiffel Tower?"
ANSWERS = {
    "Eiffel Tower height": [hit("height"), hit("tower", "wiki.example.org")],
    "Eiffel Tower antenna height": [hit("antenna"), hit("height")],
    "Eiffel Tower height 2022": [hit("2022")],
}
DRAFT = "About 300 m (unsure about the antennas)."
REVISED = "330 m with its antennas [3]."
REVISED_AGAIN = "330 m since 2022 [4]."
REPORT = "It is 330 m tall [4].\nSources: [4] https://example.com/2022"
SCRIPT = [
    DRAFT,
    "- Eiffel Tower height\n- Eiffel Tower antenna height",
    REVISED,
    "Eiffel Tower height\nEiffel Tower height 2022",  # the repeat is dropped
    REVISED_AGAIN,
    "DONE",
    REPORT,
]


def source(number: int, name: str, host: str = "example.com") -> str:
    return block(number, f"https://{host}/{name}", f"Title: Title {name}\nSnippet: About {name}.")


SOURCES = [
    source(1, "height"),
    source(2, "tower", "wiki.example.org"),
    source(3, "antenna"),
    source(4, "2022"),
]


def plan(draft: str, searched: str, k: int = 3) -> tuple[Message, ...]:
    request = PLAN_REQUEST.format(
        question=QUESTION, draft=draft, searched=searched, k=k, done="DONE"
    )
    return tuple(research_turns(request))


def revise(draft: str, queries: str, first: int, *blocks: str) -> tuple[Message, ...]:
    findings = "\n\n".join([FINDINGS_HEADER.format(queries=queries), *blocks])
    request = REVISE_REQUEST.format(question=QUESTION, draft=draft, findings=findings, first=first)
    return tuple(research_turns(request))


def report(draft: str, sources: str) -> str:
    return f"{QUESTION}\n\n" + REPORT_REQUEST.format(draft=draft, sources=sources)


def helper(call: Call, max_tokens: int) -> None:
    assert (call.sampling.temperature, call.sampling.max_tokens) == (0.0, max_tokens)
    assert not call.stream


async def test_rounds_revise_the_draft_with_numbered_sources_until_the_model_says_done() -> None:
    backend = scripted(SCRIPT)
    searx = Searx(ANSWERS)
    response = await post(
        searching_app(backend, searx),
        f"deep_research-{MODEL}",
        messages=conversation("Answer in metres.", QUESTION),
        ponder={"trace": True},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == REPORT
    assert response.headers["x-ponder-backend-calls"] == "7"
    assert body["usage"] == usage_for(backend, SCRIPT)
    assert sorted(searx.queries) == sorted(ANSWERS)
    assert all(r.url.params["format"] == "json" for r in searx.requests)

    draft, plan1, revise1, plan2, revise2, plan3, final = backend.calls
    assert draft.messages == (
        Message("system", f"Answer in metres.\n\n{DRAFT_INSTRUCTIONS}"),
        Message("user", QUESTION),
    )
    assert plan1.messages == plan(DRAFT, "nothing yet")
    assert revise1.messages == revise(
        DRAFT, "Eiffel Tower height; Eiffel Tower antenna height", 1, *SOURCES[:3]
    )
    assert plan2.messages == plan(REVISED, "Eiffel Tower height; Eiffel Tower antenna height")
    assert revise2.messages == revise(REVISED, "Eiffel Tower height 2022", 4, SOURCES[3])
    assert plan3.messages == plan(
        REVISED_AGAIN,
        "Eiffel Tower height; Eiffel Tower antenna height; Eiffel Tower height 2022",
    )
    for call in (draft, revise1, revise2):
        helper(call, 1024)
    for call in (plan1, plan2, plan3):
        helper(call, 200)
    # the report: the client's conversation, the question followed by the draft and sources
    assert final.messages[0] == Message("system", "Answer in metres.")
    assert final.prompt == report(REVISED_AGAIN, "\n\n".join(SOURCES))

    rounds = trace_steps(body, "deep_research_round")
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert rounds[0]["new_sources"] == [
        "https://example.com/height",
        "https://wiki.example.org/tower",
        "https://example.com/antenna",
    ]
    assert rounds[2]["stopped"] == "the model needs no more searching"


async def test_the_rounds_are_bounded() -> None:
    replies = [DRAFT, "Eiffel Tower height", REVISED, REPORT]
    backend = scripted(replies)
    searx = Searx(ANSWERS)
    response = await post(
        searching_app(backend, searx),
        f"deep_research-{MODEL}",
        messages=[user(QUESTION)],
        ponder={"deep_research": {"rounds": 1, "queries_per_round": 1, "results_per_query": 1}},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-ponder-backend-calls"] == "4"
    assert searx.queries == ["Eiffel Tower height"]
    assert backend.calls[1].messages == plan(DRAFT, "nothing yet", k=1)
    assert backend.calls[3].prompt == report(REVISED, SOURCES[0])
    assert response.json()["usage"] == usage_for(backend, replies)


async def test_done_at_once_means_no_search_and_a_report_from_the_draft() -> None:
    replies = [DRAFT, "Done.", REPORT]
    backend = scripted(replies)
    searx = Searx(ANSWERS)
    response = await post(
        searching_app(backend, searx), f"deep_research-{MODEL}", messages=[user(QUESTION)]
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-ponder-backend-calls"] == "3"
    assert searx.requests == []
    assert backend.calls[2].prompt == report(DRAFT, NO_SOURCES.format(why=""))


async def test_a_round_that_finds_nothing_new_ends_the_research() -> None:
    replies = [DRAFT, "Eiffel Tower height", REVISED, "Eiffel Tower antenna height", REPORT]
    backend = scripted(replies)
    searx = Searx({**ANSWERS, "Eiffel Tower antenna height": [hit("height")]})
    response = await post(
        searching_app(backend, searx),
        f"deep_research-{MODEL}",
        messages=[user(QUESTION)],
        ponder={"trace": True},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-ponder-backend-calls"] == "5"  # no revision in round 2
    assert backend.calls[4].prompt == report(REVISED, "\n\n".join(SOURCES[:2]))
    (_, second) = trace_steps(response.json(), "deep_research_round")
    assert second["stopped"] == "the search found nothing new"


async def test_a_search_failing_midway_keeps_the_work_and_writes_the_report() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if len(searx.requests) > 1:
            return httpx.Response(500)
        return httpx.Response(200, json={"results": ANSWERS["Eiffel Tower height"]})

    replies = [DRAFT, "Eiffel Tower height", REVISED, "Eiffel Tower height 2022", REPORT]
    backend = scripted(replies)
    searx = Searx(handler=handler)
    response = await post(
        searching_app(backend, searx),
        f"deep_research-{MODEL}",
        messages=[user(QUESTION)],
        ponder={"trace": True},
        stream=True,
        stream_options={"include_usage": True},
    )
    assert streamed_text(response.text) == REPORT
    reasoning = streamed_text(response.text, "reasoning_content")
    assert (
        "Round 2: the search failed: the web search provider answered HTTP 500; the report "
        "uses what was found.\n"
    ) in reasoning
    assert len(backend.calls) == 5 and len(searx.requests) == 2
    assert backend.calls[4].prompt == report(REVISED, "\n\n".join(SOURCES[:2]))
    assert sse_events(response.text)[-1]["usage"] == usage_for(backend, replies)


async def test_a_search_failing_in_the_first_round_says_so_in_the_report_request() -> None:
    replies = [DRAFT, "Eiffel Tower height", REPORT]
    backend = scripted(replies)
    searx = Searx(handler=lambda request: httpx.Response(200, text="not json"))
    response = await post(
        searching_app(backend, searx), f"deep_research-{MODEL}", messages=[user(QUESTION)]
    )
    assert response.status_code == 200, response.text
    why = " (the search failed: the web search provider answered something that is not JSON)"
    assert backend.calls[2].prompt == report(DRAFT, NO_SOURCES.format(why=why))


async def test_a_backend_failure_midway_is_its_error() -> None:
    backend = scripted([DRAFT, "Eiffel Tower height", BackendUnavailable("the engine is down")])
    searx = Searx(ANSWERS)
    response = await post(
        searching_app(backend, searx), f"deep_research-{MODEL}", messages=[user(QUESTION)]
    )
    assert_error(response, 503, code="backend_unavailable", message="the engine is down")
    assert len(backend.calls) == 3 and searx.queries == ["Eiffel Tower height"]


async def test_turned_off_without_web_search_refused_before_any_backend_call() -> None:
    backend = scripted(["never"])
    response = await chat(backend, f"deep_research-{MODEL}", messages=[user(QUESTION)])
    assert_error(response, 403, type="permission_error", param="model")
    assert "PONDER_WEB_SEARCH_URL" in response.json()["error"]["message"]
    assert backend.calls == []


async def test_a_message_without_text_and_bad_options_are_400s_before_any_call() -> None:
    backend = scripted(["never"])
    searx = Searx()
    app = searching_app(backend, searx)
    empty = await post(app, f"deep_research-{MODEL}", messages=[user(" ")])
    assert_error(empty, 400, param="messages")
    for option in ({"rounds": 0}, {"rounds": 7}, {"queries_per_round": 6}):
        bad = await post(app, f"deep_research-{MODEL}", ponder={"deep_research": option})
        assert_error(bad, 400, param=f"ponder.deep_research.{next(iter(option))}")
    assert backend.calls == [] and searx.requests == []


async def test_the_working_streams_as_reasoning_and_only_the_report_as_the_answer() -> None:
    backend = scripted(SCRIPT)
    searx = Searx(ANSWERS)
    response = await post(
        searching_app(backend, searx),
        f"deep_research-{MODEL}",
        messages=[user(QUESTION)],
        stream=True,
    )
    assert streamed_text(response.text, "reasoning_content") == (
        "Drafting an answer from the model's own knowledge.\n"
        f"Draft: {DRAFT}\n"
        "Round 1: searching for: Eiffel Tower height; Eiffel Tower antenna height\n"
        "Round 1: 3 new sources: https://example.com/height, https://wiki.example.org/tower, "
        "https://example.com/antenna\n"
        f"Round 1: revised the draft: {REVISED}\n"
        "Round 2: searching for: Eiffel Tower height 2022\n"
        "Round 2: 1 new source: https://example.com/2022\n"
        f"Round 2: revised the draft: {REVISED_AGAIN}\n"
        "Round 3: the model needs no more searching.\n"
        "Writing the report from 4 sources.\n"
    )
    assert streamed_text(response.text) == REPORT
    assert [call.stream for call in backend.calls] == [False] * 6 + [True]


async def test_around_sc_the_research_runs_once_and_every_sample_writes_the_report() -> None:
    replies = [DRAFT, "DONE", "The answer is 330.", "The answer is 330.", "The answer is 300."]
    backend = scripted(replies)
    searx = Searx(ANSWERS)
    response = await post(
        searching_app(backend, searx),
        f"deep_research&sc-{MODEL}",
        messages=[user(QUESTION)],
        ponder={"sc": {"samples": 3}},
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "The answer is 330."
    assert response.headers["x-ponder-backend-calls"] == "5"
    expected = report(DRAFT, NO_SOURCES.format(why=""))
    assert [call.prompt for call in backend.calls[2:]] == [expected] * 3
    assert response.json()["usage"] == usage_for(backend, replies)


async def test_a_round_that_only_repeats_queries_ends_the_research_without_searching() -> None:
    replies = [DRAFT, "Eiffel Tower height", REVISED, "1. eiffel tower HEIGHT", REPORT]
    backend = scripted(replies)
    searx = Searx(ANSWERS)
    response = await post(
        searching_app(backend, searx),
        f"deep_research-{MODEL}",
        messages=[user(QUESTION)],
        ponder={"trace": True},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-ponder-backend-calls"] == "5"
    assert searx.queries == ["Eiffel Tower height"]
    (_, second) = trace_steps(response.json(), "deep_research_round")
    assert second == {**second, "queries": [], "stopped": "no new queries"}
