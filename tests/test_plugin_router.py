"""`router`, a plugin: one short classifier call sorts the request into a category, a table
(the defaults, or the client's) maps it to a strategy, and the engine runs that strategy as if
the client had named it. Nothing may come after the router."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from ponder.config import Settings
from ponder.errors import BackendError, Unsupported
from ponder.plugins.executecode import REQUEST_HEADER
from ponder.plugins.router import (
    CLASSIFY_MAX_TOKENS,
    CLASSIFY_SYSTEM,
    DEFAULT_TABLE,
    Router,
    RouterConfig,
    classifier_prompt,
    parse_category,
)
from ponder.strategies.context import RequestContext
from ponder.strategies.re2 import REREAD, ReRead
from ponder.testing import Call, Reply, ScriptedBackend
from ponder.types import Completion, Message, Sampling
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    conversation,
    scripted,
    sse_data,
    stream_error,
    streamed_text,
    trace_steps,
    usage_for,
    user,
)

ROUTER = f"router-{MODEL}"
QUESTION = "Tom has 3 boxes of 4 apples and eats 5. How many are left?"
MESSAGES = conversation("Be brief.", "Hi", "Hello!", QUESTION)
CLIENT = (
    Message("system", "Be brief."),
    Message("user", "Hi"),
    Message("assistant", "Hello!"),
    Message("user", QUESTION),
)


def is_classifier(call: Call) -> bool:
    return call.messages[0].text == CLASSIFY_SYSTEM


class Model:
    """The classifier says `verdict`; every other call is answered from `answers` in turn.
    `replies` records every reply given, for the usage."""

    def __init__(self, verdict: Reply, answers: list[Reply]) -> None:
        self.verdict = verdict
        self.answers = list(answers)
        self.replies: list[str] = []

    def __call__(self, call: Call, index: int) -> Reply:
        reply = self.verdict if is_classifier(call) else self.answers.pop(0)
        if isinstance(reply, str):
            self.replies.append(reply)
        return reply


def backend_for(model: Model) -> ScriptedBackend:
    return scripted(model)


async def test_a_maths_question_runs_sc_with_its_sample_count() -> None:
    model = Model("maths", ["It is 7.", "The answer is 7.", "I get 8."])
    backend = backend_for(model)
    response = await chat(
        backend,
        ROUTER,
        messages=MESSAGES,
        temperature=0.3,
        ponder={"sc": {"samples": 3}, "trace": True},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "It is 7."
    classifier, *samples = backend.calls
    assert classifier.messages == tuple(classifier_prompt(QUESTION))
    assert classifier.sampling.temperature == 0
    assert classifier.sampling.max_tokens == CLASSIFY_MAX_TOKENS
    assert len(samples) == 3  # sc's own sample count, from the request's `ponder.sc`
    assert all(s.messages == CLIENT and s.sampling.temperature == 0.3 for s in samples)
    assert response.headers["x-ponder-backend-calls"] == "4"
    assert body["usage"] == usage_for(backend, model.replies)
    (step,) = trace_steps(body, "router")
    assert {k: step[k] for k in ("reply", "category", "strategy", "fallback")} == {
        "reply": "maths",
        "category": "maths",
        "strategy": "sc",
        "fallback": False,
    }
    (vote,) = trace_steps(body, "vote")
    assert vote["samples"] == 3
    steps = [s["step"] for s in body["ponder"]["trace"]]
    assert steps.index("router") < steps.index("vote")


def test_the_classifier_prompt_lists_every_category_and_shows_the_request() -> None:
    system, prompt = classifier_prompt("What is 2+2?")
    assert system == Message("system", CLASSIFY_SYSTEM)
    assert prompt.text == (
        "Which category fits this request best?\n\n"
        "- maths: arithmetic, a maths word problem, anything to calculate\n"
        "- code: writing, explaining or fixing a program\n"
        "- factual: a question of fact with a short answer\n"
        "- creative: open-ended writing: a story, a poem, an opinion, ideas\n"
        "- planning: a task of several steps to plan or organise\n"
        "- other: anything else: a greeting, small talk\n\n"
        "The request:\nWhat is 2+2?\n\n"
        "Reply with one word: maths, code, factual, creative, planning, other."
    )


async def test_other_categories_run_none_by_default_in_one_more_call() -> None:
    assert DEFAULT_TABLE == {
        "maths": "sc",
        "code": "none",
        "factual": "none",
        "creative": "none",
        "planning": "none",
        "other": "none",
    }
    model = Model("Category: factual", ["Paris."])
    backend = backend_for(model)
    response = await chat(
        backend, ROUTER, messages=MESSAGES, temperature=0.3, ponder={"trace": True}
    )

    assert response.json()["choices"][0]["message"]["content"] == "Paris."
    classifier, answer = backend.calls
    assert is_classifier(classifier)
    assert answer.messages == CLIENT and answer.sampling.temperature == 0.3
    assert response.headers["x-ponder-backend-calls"] == "2"
    assert response.json()["usage"] == usage_for(backend, model.replies)
    (step,) = trace_steps(response.json(), "router")
    assert (step["category"], step["strategy"]) == ("factual", "none")


async def test_an_unreadable_classification_runs_the_default_and_the_trace_says_so() -> None:
    model = Model("I am not sure what this is.", ["It is 7.", "It is 7."])
    backend = backend_for(model)
    response = await chat(
        backend,
        ROUTER,
        messages=[user(QUESTION)],
        ponder={"router": {"default": "sc"}, "sc": {"samples": 2}, "trace": True},
    )

    assert response.status_code == 200, response.text
    assert len(backend.calls) == 3  # the classifier, then sc's two samples
    (step,) = trace_steps(response.json(), "router")
    assert step["fallback"] is True and step["category"] is None
    assert (step["strategy"], step["reply"]) == ("sc", "I am not sure what this is.")


async def test_the_clients_table_overrides_the_defaults_it_names() -> None:
    model = Model("Programming.", ["Here is the function."])
    backend = backend_for(model)
    response = await chat(
        backend,
        ROUTER,
        messages=[user("Write a function that adds two numbers.")],
        ponder={"router": {"table": {"code": "re2"}}, "trace": True},
    )

    assert response.status_code == 200, response.text
    classifier, answer = backend.calls
    assert is_classifier(classifier)
    asked = "Write a function that adds two numbers."
    assert answer.prompt == f"{asked}\n{REREAD}{asked}"  # re2 re-reads it
    (step,) = trace_steps(response.json(), "router")
    assert (step["category"], step["strategy"]) == ("code", ReRead.slug)


async def test_a_table_naming_an_unknown_strategy_or_a_plugin_is_a_400_before_any_call() -> None:
    backend = scripted(["never"])
    cases = [
        ({"table": {"code": "nosuch"}}, "ponder.router.table.code", "unknown strategy 'nosuch'"),
        ({"table": {"maths": "readurls"}}, "ponder.router.table.maths", "is a plugin"),
        ({"default": "nosuch"}, "ponder.router.default", "unknown strategy 'nosuch'"),
        ({"table": {"poetry": "none"}}, "ponder.router.table.poetry.[key]", "Input should be"),
        ({"max_query_chars": 10}, "ponder.router.max_query_chars", "greater than or equal"),
    ]
    for options, param, says in cases:
        response = await chat(backend, ROUTER, ponder={"router": options})
        assert_error(response, 400, type="invalid_request_error", param=param)
        assert says in response.json()["error"]["message"]
    assert backend.calls == []


async def test_bad_options_of_a_strategy_it_may_pick_are_a_400_before_any_call() -> None:
    backend = scripted(["never"])
    response = await chat(backend, ROUTER, ponder={"sc": {"samples": 0}})
    assert_error(response, 400, param="ponder.sc.samples")
    assert backend.calls == []


async def test_a_strategy_or_plugin_after_the_router_is_a_400_that_says_why() -> None:
    backend = scripted(["never"])
    for model in (f"router&sc-{MODEL}", f"router&readurls-{MODEL}"):
        response = await chat(backend, model)
        assert_error(response, 400, type="invalid_request_error", param="model")
        assert (
            "'router' picks the strategy itself, so it comes last"
            in (response.json()["error"]["message"])
        )
    response = await chat(backend, MODEL, optillm_approach="router&sc")
    assert_error(response, 400, param="model")
    response = await chat(backend, f"sc&router-{MODEL}")
    assert_error(response, 400, param="model")
    assert "comes after a strategy" in response.json()["error"]["message"]
    assert backend.calls == []


async def test_the_choice_streams_as_reasoning_then_the_strategys_answer() -> None:
    model = Model("maths", ["It is 7.", "It is 7."])
    backend = backend_for(model)
    response = await chat(
        backend,
        ROUTER,
        messages=[user(QUESTION)],
        ponder={"sc": {"samples": 2}},
        stream=True,
    )
    reasoning = streamed_text(response.text, "reasoning_content")
    assert reasoning.startswith("Router: the request looks like maths; running sc.\nSample 1: 7")
    assert streamed_text(response.text) == "It is 7."
    assert sse_data(response.text)[-1] == "[DONE]"


async def test_an_unreadable_classification_is_said_in_the_reasoning() -> None:
    backend = backend_for(Model("???", ["Hi!"]))
    response = await chat(backend, ROUTER, stream=True)
    reasoning = streamed_text(response.text, "reasoning_content")
    assert reasoning == "Router: the classifier's reply names no category; running none.\n"
    assert streamed_text(response.text) == "Hi!"


async def test_a_failing_classifier_call_fails_the_request_in_the_apis_shape() -> None:
    backend = backend_for(Model(BackendError("upstream broke"), []))
    response = await chat(backend, ROUTER)
    assert_error(response, 502, code="backend_error", message="upstream broke")
    assert len(backend.calls) == 1


async def test_a_failing_chosen_strategy_fails_the_stream_after_the_choice() -> None:
    backend = backend_for(Model("factual", [BackendError("upstream broke")]))
    response = await chat(backend, ROUTER, stream=True, messages=[user("Capital of France?")])
    error = stream_error(response.text)
    first = json.loads(sse_data(response.text)[1])["choices"][0]["delta"]
    assert first["reasoning_content"].startswith("Router: the request looks like factual")
    assert (error["code"], error["message"]) == ("backend_error", "upstream broke")
    assert len(backend.calls) == 2


async def test_behind_executecode_the_classifier_sees_the_outputs() -> None:
    """`executecode&router`: the code of the request runs first, then the router classifies
    the message with its output and runs the strategy it picks."""
    question = "What does this print?\n```python\nprint(6 * 7)\n```"
    model = Model("code", ["It prints 42."])
    backend = backend_for(model)
    settings = Settings(enable_code_execution=True, code_timeout_s=5, code_memory_mb=128)
    response = await chat(
        backend, f"executecode&router-{MODEL}", settings=settings, messages=[user(question)]
    )

    assert response.status_code == 200, response.text
    classifier, answer = backend.calls
    shown = f"{question}\n\n{REQUEST_HEADER}\n\n<<<BEGIN SANDBOX OUTPUT 1>>>\n42\n"
    assert classifier.prompt.split("The request:\n")[1].startswith(shown)
    assert answer.prompt.startswith(shown)
    assert response.json()["usage"] == usage_for(backend, model.replies)


def test_a_reply_names_its_category_by_name_or_synonym_first_mention_wins() -> None:
    assert parse_category("maths") == "maths"
    assert parse_category("Category: Arithmetic.") == "maths"
    assert parse_category("**coding**") == "code"
    assert parse_category("open-ended") == "creative"
    assert parse_category("a PLAN, not maths") == "planning"
    assert parse_category("mathematical") is None  # a word, not a name in it
    assert parse_category("") is None


async def test_without_the_servers_engine_it_refuses_before_any_call() -> None:
    """Outside an app (a context lent no engine) the router cannot run a strategy."""
    backend = scripted(["never"])
    ctx = RequestContext(request_id="r", model=MODEL, backend=backend, sampling=Sampling())

    async def inner(c: RequestContext, m: Sequence[Message]) -> list[Completion]:
        raise AssertionError("the router runs the strategy itself")

    with pytest.raises(Unsupported, match="needs the server's engine"):
        await Router(RouterConfig()).run(ctx, [Message("user", QUESTION)], inner)
    assert backend.calls == []
