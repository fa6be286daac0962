"""`json`, a plugin: the answer is one JSON document that validates against the request's schema
(`response_format`, or the `schema` option), found in the answer, a code fence or its prose,
and repaired by the model at most `max_repairs` times; else a 502 that says where and which
rule. A backend that constrains decoding is sent the `response_format`; any other is told the
schema in the prompt. The answer never streams before it validates."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ponder.backends.base import Capabilities
from ponder.errors import BackendUnavailable, InvalidRequest
from ponder.plugins.json_mode import OBJECT_INSTRUCTION, REPAIR_REQUEST, SCHEMA_INSTRUCTION
from ponder.plugins.json_output import MAX_STARTS, check, documents, target
from ponder.testing import ScriptedBackend
from ponder.tokens import count_tokens
from ponder.types import Completion, Message, Sampling, ToolCall
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    conversation,
    scripted,
    sse_data,
    sse_events,
    stream_choices,
    stream_error,
    streamed_pieces,
    streamed_text,
    trace_steps,
    usage_for,
    user,
)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "population": {"type": "integer", "minimum": 0},
    },
    "required": ["city", "population"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}
PARIS = '{"city": "Paris", "population": 2100000}'
QUESTION = conversation("Be brief.", "Biggest city of France?")
INSTRUCTED_SYSTEM = "Be brief.\n\n" + SCHEMA_INSTRUCTION.format(schema=json.dumps(SCHEMA))


def constraining(replies: Any) -> ScriptedBackend:
    """A fake backend that says it constrains decoding to `response_format`, as the embedded
    engine does."""
    return scripted(replies, capabilities=Capabilities(json_schema=True))


def repair_turns(broken: str, problem: str) -> list[tuple[str, str]]:
    """The turns a repair call adds after the conversation: the broken answer, the request."""
    return [("assistant", broken), ("user", REPAIR_REQUEST.format(problem=problem))]


def turns(messages: tuple[Message, ...]) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in messages]


async def test_a_valid_answer_takes_one_call_the_schema_is_in_the_prompt() -> None:
    backend = scripted([PARIS])
    response = await chat(
        backend, f"json-{MODEL}", messages=QUESTION, response_format=FORMAT, ponder={"trace": True}
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == PARIS
    (call,) = backend.calls
    assert turns(call.messages) == [
        ("system", INSTRUCTED_SYSTEM),
        ("user", "Biggest city of France?"),
    ]
    assert call.sampling.response_format == FORMAT  # the client's, forwarded as it came
    assert response.headers["x-ponder-backend-calls"] == "1"
    assert body["usage"] == usage_for(backend, [PARIS])
    (step,) = trace_steps(body, "json")
    assert (step["constrained"], step["schema"], step["repairs"]) == (False, "city", [0])
    assert trace_steps(body, "json_repair") == []


@pytest.mark.parametrize(
    "answer",
    [
        f"Here it is:\n```json\n{PARIS}\n```\nAnything else?",
        f"```\n{PARIS}\n```",
        f"The JSON you asked for: {PARIS}. Hope it helps!",
        f'Not this one: {{"city": "Lyon"}}, but this one: {PARIS}',
    ],
)
async def test_the_json_is_taken_out_of_fences_and_prose(answer: str) -> None:
    backend = scripted([answer])
    response = await chat(backend, f"json-{MODEL}", messages=QUESTION, response_format=FORMAT)
    assert response.json()["choices"][0]["message"]["content"] == PARIS
    assert len(backend.calls) == 1


async def test_an_answer_that_does_not_validate_is_repaired_with_its_exact_error() -> None:
    broken = '```json\n{"city": "Paris", "population": "lots"}\n```'
    replies = [broken, PARIS]
    backend = scripted(replies)
    response = await chat(
        backend, f"json-{MODEL}", messages=QUESTION, response_format=FORMAT, ponder={"trace": True}
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == PARIS
    first, repair = backend.calls
    problem = "at $.population: 'lots' is not of type 'integer' (rule: type)"
    assert turns(repair.messages) == turns(first.messages) + repair_turns(broken, problem)
    assert repair.sampling == first.sampling
    assert response.headers["x-ponder-backend-calls"] == "2"
    assert body["usage"] == usage_for(backend, replies)  # the repair is metered
    (step,) = trace_steps(body, "json_repair")
    assert (step["choice"], step["attempt"], step["problem"]) == (0, 1, problem)
    assert trace_steps(body, "json")[0]["repairs"] == [1]


async def test_repairs_stop_at_max_repairs_each_shown_its_own_error() -> None:
    """Two repairs by default: the third answer is the last chance; each repair shows the
    answer before it and that answer's own error."""
    replies = ['{"city": "Paris"}', "Paris, I think.", '{"city": "Paris", "population": -5}']
    backend = scripted(replies)
    response = await chat(backend, f"json-{MODEL}", messages=QUESTION, response_format=FORMAT)

    assert_error(
        response,
        502,
        type="api_error",
        code="json_validation_failed",
        param="response_format",
        message="the model's answer does not validate against the JSON schema after 2 repairs: "
        "at $.population: -5 is less than the minimum of 0 (rule: minimum)",
    )
    assert len(backend.calls) == 3
    conversation_turns = turns(backend.calls[0].messages)
    assert turns(backend.calls[1].messages) == conversation_turns + repair_turns(
        replies[0], "at $: 'population' is a required property (rule: required)"
    )
    assert turns(backend.calls[2].messages) == conversation_turns + repair_turns(
        replies[1], "the answer is not JSON: Expecting value (line 1, column 1)"
    )


@pytest.mark.parametrize("max_repairs", [0, 1, 3])
async def test_exactly_max_repairs_extra_calls_then_the_error(max_repairs: int) -> None:
    backend = scripted(lambda call, i: '{"city": 1}')
    response = await chat(
        backend,
        f"json-{MODEL}",
        messages=QUESTION,
        response_format=FORMAT,
        ponder={"json": {"max_repairs": max_repairs}},
    )
    assert_error(response, 502, code="json_validation_failed")
    assert f"after {max_repairs} repair" in response.json()["error"]["message"]
    assert len(backend.calls) == 1 + max_repairs


async def test_the_last_allowed_repair_that_succeeds_is_counted_in_trace_and_usage() -> None:
    replies = ['{"city": 1}', '{"city": 2}', PARIS]
    backend = scripted(replies)
    response = await chat(
        backend, f"json-{MODEL}", messages=QUESTION, response_format=FORMAT, ponder={"trace": True}
    )
    body = response.json()
    assert body["choices"][0]["message"]["content"] == PARIS
    assert response.headers["x-ponder-backend-calls"] == "3"
    assert body["usage"] == usage_for(backend, replies)
    assert [s["attempt"] for s in trace_steps(body, "json_repair")] == [1, 2]
    assert trace_steps(body, "json")[0]["repairs"] == [2]


async def test_json_object_without_schema_wants_any_object() -> None:
    replies = ["Sure: [1, 2]", 'Sure: {"items": [1, 2]}']
    backend = scripted(replies)
    response = await chat(
        backend, f"json-{MODEL}", messages=QUESTION, response_format={"type": "json_object"}
    )
    assert response.json()["choices"][0]["message"]["content"] == '{"items": [1, 2]}'
    first, repair = backend.calls
    assert first.messages[0].text == f"Be brief.\n\n{OBJECT_INSTRUCTION}"
    assert turns(repair.messages)[-2:] == repair_turns(
        replies[0], "at $: [1, 2] is not of type 'object' (rule: type)"
    )


async def test_without_any_format_the_answer_must_be_a_json_object() -> None:
    backend = scripted(['{"greeting": "hello"}'])
    response = await chat(backend, f"json-{MODEL}")
    assert response.json()["choices"][0]["message"]["content"] == '{"greeting": "hello"}'
    (call,) = backend.calls
    assert turns(call.messages)[0] == ("system", OBJECT_INSTRUCTION)
    assert call.sampling.response_format is None  # nothing added that the client did not send


async def test_a_constraining_backend_gets_the_response_format_and_the_prompt_as_it_is() -> None:
    """The embedded engine turns `response_format` into a grammar; the plugin relies on it and
    still validates (a grammar has no `minimum`)."""
    replies = ['{"city": "Paris", "population": -1}', PARIS]
    backend = constraining(replies)
    response = await chat(
        backend, f"json-{MODEL}", messages=QUESTION, response_format=FORMAT, ponder={"trace": True}
    )
    body = response.json()
    assert body["choices"][0]["message"]["content"] == PARIS
    first, repair = backend.calls
    assert turns(first.messages) == [("system", "Be brief."), ("user", "Biggest city of France?")]
    assert first.sampling.response_format == FORMAT
    assert repair.sampling.response_format == FORMAT
    assert trace_steps(body, "json")[0]["constrained"] is True
    assert body["usage"] == usage_for(backend, replies)


async def test_the_schema_option_becomes_the_response_format_of_a_constraining_backend() -> None:
    option = {"json": {"schema": SCHEMA}}
    constrained = constraining([PARIS])
    response = await chat(constrained, f"json-{MODEL}", messages=QUESTION, ponder=option)
    assert response.json()["choices"][0]["message"]["content"] == PARIS
    assert constrained.calls[0].sampling.response_format == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": SCHEMA},
    }

    plain = scripted(['{"city": "Paris"}', PARIS])
    response = await chat(plain, f"json-{MODEL}", messages=QUESTION, ponder=option)
    assert response.json()["choices"][0]["message"]["content"] == PARIS
    assert plain.calls[0].messages[0].text == INSTRUCTED_SYSTEM
    assert plain.calls[0].sampling.response_format is None
    assert len(plain.calls) == 2  # the option's schema is enforced: "population" was missing


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 3}}}},
            "response_format.json_schema.schema",
            "is not a valid JSON schema: at $.type:",
        ),
        (
            {"ponder": {"json": {"schema": {"type": "object", "required": "city"}}}},
            "ponder.json.schema",
            "at $.required: 'city' is not of type 'array' (rule: type)",
        ),
        (
            {"ponder": {"json": {"schema": {"$ref": "https://example.com/s.json"}}}},
            "ponder.json.schema",
            "the reference 'https://example.com/s.json' at $.$ref points outside the schema",
        ),
        (
            {"ponder": {"json": {"schema": {"properties": {"a": {"$ref": "#/$defs/b"}}}}}},
            "ponder.json.schema",
            "the reference '#/$defs/b' at $.properties.a.$ref points to nothing in the schema",
        ),
        (
            {"ponder": {"json": {"schema": {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#"}}}}}},
            "ponder.json.schema",
            "the schema's references cannot be followed: RecursionError",
        ),
        (
            {"ponder": {"json": {"schema": {"$schema": 7}}}},
            "ponder.json.schema",
            "$schema must be a string",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": "object"}}},
            "response_format.json_schema.schema",
            "must be a JSON schema object",
        ),
        ({"response_format": {"type": "text"}}, "response_format", "json_object or json_schema"),
        (
            {"response_format": FORMAT, "ponder": {"json": {"schema": {"type": "array"}}}},
            "ponder.json.schema",
            "differ: give the schema once",
        ),
        ({"ponder": {"json": {"max_repairs": 6}}}, "ponder.json.max_repairs", "less than"),
    ],
)
async def test_a_bad_schema_is_a_400_before_any_backend_call(
    fields: dict[str, Any], param: str, says: str
) -> None:
    backend = scripted(["never"])
    response = await chat(backend, f"json-{MODEL}", **fields)
    assert_error(response, 400, type="invalid_request_error", param=param)
    assert says in response.json()["error"]["message"]
    assert backend.calls == []


async def test_a_backend_failure_during_a_repair_is_the_backend_error() -> None:
    backend = scripted(['{"city": "Paris"}', BackendUnavailable("the upstream is down")])
    response = await chat(backend, f"json-{MODEL}", messages=QUESTION, response_format=FORMAT)
    assert_error(
        response, 503, code="backend_unavailable", message="the upstream is down", param=None
    )
    assert len(backend.calls) == 2


async def test_the_stream_holds_the_answer_until_it_validates() -> None:
    broken = '{"city": "Paris", "population": "lots"}'
    replies = [broken, PARIS]
    backend = scripted(replies)
    response = await chat(
        backend,
        f"json-{MODEL}",
        messages=QUESTION,
        response_format=FORMAT,
        stream=True,
        stream_options={"include_usage": True},
    )

    raw = response.text
    assert streamed_pieces(raw) == [PARIS]  # whole, once: nothing of the broken answer
    assert streamed_text(raw, "reasoning_content") == (
        "JSON: at $.population: 'lots' is not of type 'integer' (rule: type); repair 1 of 2.\n"
        "JSON: valid after 1 repair.\n"
    )
    assert [c["finish_reason"] for c in stream_choices(raw) if c["finish_reason"]] == ["stop"]
    assert sse_events(raw)[-1]["usage"] == usage_for(backend, replies)


async def test_a_stream_whose_json_never_validates_ends_in_the_error_without_the_answer() -> None:
    backend = scripted(lambda call, i: '{"city": "Paris"}')
    response = await chat(
        backend,
        f"json-{MODEL}",
        messages=QUESTION,
        response_format=FORMAT,
        stream=True,
        ponder={"json": {"max_repairs": 1}},
    )
    # the repair's reasoning line began the stream, so the error comes in-band
    assert response.status_code == 200
    assert stream_error(response.text)["code"] == "json_validation_failed"
    chunks = [json.loads(line) for line in sse_data(response.text)[:-1]]
    answered = [c["delta"].get("content") for chunk in chunks for c in chunk["choices"]]
    assert set(answered) == {"", None}  # the role's empty content, then reasoning only
    assert len(backend.calls) == 2


async def test_each_of_n_choices_is_checked_and_repaired_on_its_own() -> None:
    replies = [PARIS, '{"city": "Lyon"}', '{"city": "Lyon", "population": 520000}']
    backend = scripted(replies)
    response = await chat(
        backend,
        f"json-{MODEL}",
        messages=QUESTION,
        response_format=FORMAT,
        n=2,
        ponder={"trace": True},
    )
    body = response.json()
    contents = [c["message"]["content"] for c in body["choices"]]
    assert contents == [PARIS, '{"city": "Lyon", "population": 520000}']
    assert [c.n for c in backend.calls] == [2, 1]
    assert turns(backend.calls[1].messages)[-2][1] == '{"city": "Lyon"}'
    assert trace_steps(body, "json")[0]["repairs"] == [0, 1]
    # the choices are PARIS and the repair: only the invalid first Lyon is reasoning
    chosen = [PARIS, replies[2]]
    expected = usage_for(backend, replies, answer="")  # all replies, less the choices:
    expected["completion_tokens_details"]["reasoning_tokens"] -= sum(map(count_tokens, chosen))
    assert body["usage"] == expected


ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
}


async def test_around_sc_the_samples_are_asked_for_json_and_the_vote_winner_is_checked() -> None:
    """`json&sc`: every sample sees the schema; sc votes on each document's final answer (its
    last number), and the winning sample, which gave 7 as a string, is repaired once."""
    replies = ['{"answer": "7"}', '{"answer": 8}', 'So: {"answer": 7}', '{"answer": 7}']
    backend = scripted(replies)
    response = await chat(
        backend,
        f"json&sc-{MODEL}",
        messages=[user("3 + 4?")],
        ponder={"sc": {"samples": 3}, "json": {"schema": ANSWER_SCHEMA}, "trace": True},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == '{"answer": 7}'
    samples, repair = backend.calls[:3], backend.calls[3]
    instructed = SCHEMA_INSTRUCTION.format(schema=json.dumps(ANSWER_SCHEMA))
    assert all(turns(c.messages) == [("system", instructed), ("user", "3 + 4?")] for c in samples)
    assert turns(repair.messages)[-2:] == repair_turns(
        '{"answer": "7"}', "at $.answer: '7' is not of type 'integer' (rule: type)"
    )
    (vote,) = trace_steps(body, "vote")
    assert vote["tally"] == {"7": 2, "8": 1}
    steps = [s["step"] for s in body["ponder"]["trace"]]
    assert steps.index("vote") < steps.index("json_repair") < steps.index("json")
    assert response.headers["x-ponder-backend-calls"] == "4"
    assert body["usage"] == usage_for(backend, replies)


async def test_a_choice_that_calls_a_tool_passes_unchecked() -> None:
    call = ToolCall(id="call_1", name="lookup", arguments='{"q": "Paris"}')
    backend = scripted([Completion(None, finish_reason="tool_calls", tool_calls=(call,))])
    response = await chat(backend, f"json-{MODEL}", messages=QUESTION, response_format=FORMAT)
    (choice,) = response.json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == '{"q": "Paris"}'
    assert len(backend.calls) == 1


def test_the_search_for_json_in_prose_is_bounded() -> None:
    validator = target(None, None).validator()
    noisy = "{ " * (MAX_STARTS + 5) + '{"late": true}'
    assert list(documents(noisy)) == []  # the document past the bound is not looked for
    assert check("[" * 100_000, validator).problem == "the answer is not JSON: it nests too deeply"


def test_a_schema_the_grammar_cannot_express_is_a_400_from_the_embedded_backend() -> None:
    pytest.importorskip("llama_cpp")
    from ponder.backends.llamacpp.backend import output_grammar

    fmt = {"type": "json_schema", "json_schema": {"schema": {"type": "string", "pattern": "a+"}}}
    with pytest.raises(InvalidRequest) as raised:
        output_grammar(Sampling(response_format=fmt))
    assert raised.value.param == "response_format"


def test_local_references_are_followed_and_the_problem_names_the_nested_path() -> None:
    tree = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["name"],
            }
        },
        "$ref": "#/$defs/node",
    }
    wanted = target({"type": "json_schema", "json_schema": {"name": "tree", "schema": tree}}, None)
    validator = wanted.validator()
    assert check('{"name": "a", "children": [{"name": "b"}]}', validator).problem is None
    assert check('{"name": "a", "children": [{"children": []}]}', validator).problem == (
        "at $.children[0]: 'name' is a required property (rule: required)"
    )
