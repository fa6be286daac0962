"""`privacy`, a plugin: personal data is masked with placeholders before any backend call (every
message, every call of the route), and the answer gets the originals back, streamed or not.
Presidio and its spaCy pipeline run for real (built once per process); the network is closed
to this module, so any fetch fails the test."""

from __future__ import annotations

import importlib.util
import json
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from ponder.config import Settings
from ponder.errors import BackendError, BackendUnavailable
from ponder.plugins.privacy import NOTE
from ponder.plugins.privacy_detect import Finding
from ponder.plugins.privacy_mask import StreamRestorer, Vault
from ponder.testing import Call, ScriptedBackend
from ponder.tokens import count_prompt_tokens, count_tokens
from ponder.types import Delta, Message, Sampling, Usage
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    conversation,
    scripted,
    sse_data,
    sse_events,
    stream_error,
    streamed_pieces,
    streamed_text,
    trace_steps,
    usage_for,
    user,
)

SYSTEM = "You are the assistant of Alice Cooper (alice.cooper@example.org)."
HELLO = "Hi, I am John Smith."
ASK = (
    "Please call me at +1 (415) 555-0199 about my card 4111 1111 1111 1111 "
    "and IBAN DE89 3704 0044 0532 0130 00."
)
ORIGINALS = (
    "Alice",
    "Cooper",
    "alice.cooper@example.org",
    "John",
    "Smith",
    "555-0199",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
)
MASKED_SYSTEM = f"You are the assistant of <PERSON_1> (<EMAIL_ADDRESS_1>).\n\n{NOTE}"
MASKED_HELLO = "Hi, I am <PERSON_2>."
MASKED_ASK = (
    "Please call me at <PHONE_NUMBER_1> about my card <CREDIT_CARD_1> and IBAN <IBAN_CODE_1>."
)
MATHS = (
    "A baker sold 48 cakes on Monday and 3 times as many on Tuesday. Each cake costs $2.50, "
    "and 1/4 of them were sold at a 15% discount. In 2023 he sold 1,250 cakes and "
    "12345678 crumbs. How much money did he make, to 0.01?"
)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing here may reach the network: Presidio's libraries fetch on first use unless told
    not to."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def assert_masked(calls: Sequence[Call]) -> None:
    """No original value in any message of any call."""
    for call in calls:
        for message in call.messages:
            seen = json.dumps([message.text, [c.arguments for c in message.tool_calls]])
            for original in ORIGINALS:
                assert original not in seen, (original, seen)


async def test_every_message_is_masked_and_the_answer_restored() -> None:
    reply = "I will call <PERSON_2> at <PHONE_NUMBER_1>; <PERSON_1> is copied. <ZIP_9> stays."
    backend = scripted([reply])
    response = await chat(
        backend,
        f"privacy-{MODEL}",
        messages=conversation(SYSTEM, HELLO, "Hello! How can I help, John?", ASK),
        ponder={"trace": True},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == (
        "I will call John Smith at +1 (415) 555-0199; Alice Cooper is copied. <ZIP_9> stays."
    )
    (call,) = backend.calls
    assert [(m.role, m.text) for m in call.messages] == [
        ("system", MASKED_SYSTEM),
        ("user", MASKED_HELLO),
        ("assistant", "Hello! How can I help, <PERSON_3>?"),
        ("user", MASKED_ASK),
    ]
    assert response.headers["x-ponder-backend-calls"] == "1"
    assert body["usage"] == usage_for(backend, [reply])
    (step,) = trace_steps(body, "privacy")
    assert step["masked"] == {
        "CREDIT_CARD": 1,
        "EMAIL_ADDRESS": 1,
        "IBAN_CODE": 1,
        "PERSON": 3,
        "PHONE_NUMBER": 1,
    }
    assert not any(original in json.dumps(body["ponder"]) for original in ORIGINALS)


async def test_a_maths_question_reaches_the_backend_unchanged() -> None:
    backend = scripted(["The answer is 7."])
    response = await chat(
        backend, f"privacy-{MODEL}", messages=[user(MATHS)], ponder={"trace": True}
    )
    assert response.json()["choices"][0]["message"]["content"] == "The answer is 7."
    (call,) = backend.calls
    assert [(m.role, m.text) for m in call.messages] == [("user", MATHS)]  # and no note
    assert trace_steps(response.json(), "privacy")[0]["masked"] == {}


async def test_tool_calls_and_tool_results_are_masked_too() -> None:
    backend = scripted(["Sent to <EMAIL_ADDRESS_1>."])
    messages: list[dict[str, Any]] = [
        user("Mail my friend."),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"who": "John Smith"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "alice.cooper@example.org"},
    ]
    response = await chat(backend, f"privacy-{MODEL}", messages=messages)
    assert (
        response.json()["choices"][0]["message"]["content"] == "Sent to alice.cooper@example.org."
    )
    (call,) = backend.calls
    assert call.messages[2].tool_calls[0].arguments == '{"who": "<PERSON_1>"}'
    assert call.messages[3].text == "<EMAIL_ADDRESS_1>"
    assert_masked(backend.calls)


async def test_options_choose_what_is_masked_and_are_validated() -> None:
    backend = scripted(["ok"])
    response = await chat(
        backend,
        f"privacy-{MODEL}",
        messages=[user(f"{HELLO} Mail alice.cooper@example.org.")],
        ponder={"privacy": {"entities": ["EMAIL_ADDRESS"]}},
    )
    assert response.status_code == 200
    assert backend.calls[0].prompt == "Hi, I am John Smith. Mail <EMAIL_ADDRESS_1>."
    for options, param in [
        ({"threshold": 1.5}, "ponder.privacy.threshold"),
        ({"entities": ["NAME"]}, "ponder.privacy.entities.0"),
        ({"entities": []}, "ponder.privacy.entities"),
    ]:
        bad = await chat(backend, f"privacy-{MODEL}", ponder={"privacy": options})
        assert_error(bad, 400, type="invalid_request_error", param=param)
    assert len(backend.calls) == 1  # refused before any call


# ---- streaming ---------------------------------------------------------------------------------


@dataclass
class Pieces(ScriptedBackend):
    """Streams `pieces` as they are (reasoning first, then the answer), then fails with `error`
    if one is given."""

    reasoning: tuple[str, ...] = ()
    pieces: tuple[str, ...] = ()
    error: BackendError | None = None

    async def stream(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> AsyncIterator[Delta]:
        self.calls.append(Call(model, tuple(messages), sampling, n, stream=True))
        for piece in self.reasoning:
            yield Delta(reasoning=piece)
        for piece in self.pieces:
            yield Delta(content=piece)
        if self.error is not None:
            raise self.error
        yield Delta(finish_reason="stop")
        text = "".join(self.reasoning + self.pieces)
        yield Delta(usage=Usage(count_prompt_tokens(messages), count_tokens(text)))


async def test_the_stream_is_restored_even_where_a_placeholder_is_split() -> None:
    backend = Pieces(
        model_ids=(MODEL,),
        reasoning=("Thinking of <PER", "SON_2> and 1 < 2", "."),
        pieces=("Dear <PER", "SON_2", ">, I will call <", "PHONE_NUMBER_1> ", "<", "3 <EMAIL"),
    )
    response = await chat(
        backend,
        f"privacy-{MODEL}",
        messages=conversation(SYSTEM, HELLO, "Hello!", ASK),
        stream=True,
        stream_options={"include_usage": True},
    )
    assert streamed_text(response.text, "reasoning_content").endswith(
        "Thinking of John Smith and 1 < 2."
    )
    # Only a tail that may begin a placeholder is held back: "<3" is not one, "<EMAIL" may be.
    assert streamed_pieces(response.text) == [
        "Dear ",
        "John Smith, I will call ",
        "+1 (415) 555-0199 ",
        "<3 ",
        "<EMAIL",
    ]
    (call,) = backend.calls
    assert call.stream and [m.text for m in call.messages] == [
        MASKED_SYSTEM,
        MASKED_HELLO,
        "Hello!",
        MASKED_ASK,
    ]
    assert sse_events(response.text)[-1]["usage"] == usage_for(
        backend, ["".join(backend.reasoning + backend.pieces)]
    )


async def test_a_failure_mid_stream_is_an_error_in_band_with_no_original() -> None:
    backend = Pieces(
        model_ids=(MODEL,),
        pieces=("Calling <PERSON_2", "> now"),
        error=BackendUnavailable("upstream went away after: Hi, I am <PERSON_2>"),
    )
    response = await chat(
        backend, f"privacy-{MODEL}", messages=conversation(SYSTEM, HELLO), stream=True
    )
    events = [json.loads(data) for data in sse_data(response.text)[:-1]]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == (
        "Calling John Smith now"
    )
    assert stream_error(response.text) == {
        "message": "upstream went away after: Hi, I am <PERSON_2>",
        "type": "api_error",
        "param": None,
        "code": "backend_unavailable",
    }


# ---- around other strategies -------------------------------------------------------------------


async def test_around_sc_every_sample_is_masked_and_the_vote_restored() -> None:
    replies = [
        "<PERSON_2>, the answer is 7.",
        "<PERSON_2>, the answer is 7.",
        "<PERSON_1>, the answer is 8.",
    ]
    backend = scripted(replies)
    response = await chat(
        backend,
        f"privacy&sc-{MODEL}",
        messages=conversation(SYSTEM, HELLO, "Hello!", ASK),
        ponder={"sc": {"samples": 3}, "trace": True},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "John Smith, the answer is 7."
    assert len(backend.calls) == 3
    assert response.headers["x-ponder-backend-calls"] == "3"
    for call in backend.calls:
        assert [m.text for m in call.messages] == [
            MASKED_SYSTEM,
            MASKED_HELLO,
            "Hello!",
            MASKED_ASK,
        ]
    assert body["usage"] == usage_for(backend, replies)
    steps = [step["step"] for step in body["ponder"]["trace"]]
    assert steps[0] == "privacy" and "vote" in steps
    assert not any(original in json.dumps(body["ponder"]) for original in ORIGINALS)


async def test_around_sc_the_reasoning_streams_restored() -> None:
    backend = scripted(["<PERSON_2>: 7", "<PERSON_2>: 7"])
    response = await chat(
        backend,
        f"privacy&sc-{MODEL}",
        messages=conversation(SYSTEM, HELLO, "Hello!", ASK),
        ponder={"sc": {"samples": 2}},
        stream=True,
    )
    reasoning = streamed_text(response.text, "reasoning_content")
    assert reasoning.startswith("Masked personal data before the model sees it: CREDIT_CARD x1")
    assert streamed_text(response.text) == "John Smith: 7"
    assert_masked(backend.calls)


async def test_later_calls_are_masked_and_a_failure_midway_leaks_nothing() -> None:
    """`privacy&refine`: the draft names new people; the critique call quotes the draft, masked
    in turn, and fails with an error that echoes its prompt."""

    def reply(call: Call, index: int) -> str | BackendError:
        if all(m.role != "assistant" for m in call.messages):
            return "Dear <PERSON_1>, Bob Marley (bob@example.net) says hi."
        return BackendError(f"upstream refused: {call.messages[-2].text}")

    backend = scripted(reply)
    response = await chat(backend, f"privacy&refine-{MODEL}", messages=[user(HELLO)])
    assert_error(response, 502, type="api_error", code="backend_error")
    assert response.json()["error"]["message"] == (
        "upstream refused: Dear <PERSON_1>, <PERSON_2> (<EMAIL_ADDRESS_1>) says hi."
    )
    assert len(backend.calls) == 2 and response.headers.get("x-ponder-backend-calls") is None
    for original in ("John Smith", "Bob Marley", "bob@example.net"):
        assert original not in response.text
        assert all(original not in m.text for c in backend.calls for m in c.messages)


# ---- without the extra -------------------------------------------------------------------------


async def test_without_presidio_the_request_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "presidio_analyzer" else found(name, *a),
    )
    backend = scripted(["never"])
    response = await chat(
        backend, f"privacy-{MODEL}", settings=Settings(privacy_model="not_cached_pipeline")
    )
    assert_error(response, 400, code="unsupported_parameter", param="model")
    assert "pip install 'ponder[privacy]'" in response.json()["error"]["message"]
    assert backend.calls == []


async def test_a_missing_pipeline_is_refused_and_never_downloaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import spacy.cli

    def download(*args: object, **kwargs: object) -> None:
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(spacy.cli, "download", download)
    backend = scripted(["never"])
    response = await chat(
        backend, f"privacy-{MODEL}", settings=Settings(privacy_model="en_core_web_missing")
    )
    assert_error(response, 400, code="unsupported_parameter", param="model")
    assert "PONDER_PRIVACY_MODEL" in response.json()["error"]["message"]
    assert backend.calls == []


# ---- the vault -----------------------------------------------------------------------------------


@pytest.fixture
def vault() -> Iterator[Vault]:
    v = Vault()
    text = "Ann Lee mailed ann@x.org, then Ann Lee again."
    assert (
        v.mask(text, [Finding(0, 7, "PERSON", 0.85), Finding(15, 24, "EMAIL_ADDRESS", 1.0)])
        == "<PERSON_1> mailed <EMAIL_ADDRESS_1>, then Ann Lee again."
    )
    yield v


def test_the_same_value_gets_the_same_placeholder_and_overlaps_keep_the_longest(
    vault: Vault,
) -> None:
    text = "Ann Lee's friend Ann Leeds at ann@x.org and <PERSON_1>"
    findings = [
        Finding(0, 9, "PERSON", 0.85),  # the possessive stays outside
        Finding(17, 26, "PERSON", 0.85),
        Finding(17, 20, "LOCATION", 0.9),  # inside a longer finding
        Finding(30, 39, "EMAIL_ADDRESS", 1.0),
        Finding(45, 51, "PERSON", 0.85),  # inside a placeholder
    ]
    assert vault.mask(text, findings) == (
        "<PERSON_1>'s friend <PERSON_2> at <EMAIL_ADDRESS_1> and <PERSON_1>"
    )
    assert vault.counts() == {"EMAIL_ADDRESS": 1, "PERSON": 2}
    assert "Ann" not in repr(vault)


def test_any_split_of_a_stream_restores_the_whole_text(vault: Vault) -> None:
    text = "To <PERSON_1> <at> <EMAIL_ADDRESS_1>; a<b, <PERSON_7> <PERSON_1"
    whole = vault.restore(text)
    assert whole == "To Ann Lee <at> ann@x.org; a<b, <PERSON_7> <PERSON_1"
    for i in range(len(text)):
        for j in range(i, len(text)):
            restorer = StreamRestorer(vault)
            sent = [restorer.feed((0, "content", 0), p) for p in (text[:i], text[i:j], text[j:])]
            assert "".join(sent) + restorer.flush((0, "content", 0)) == whole
    restorer = StreamRestorer(vault)
    assert restorer.feed((0, "content", 0), "1 < 2 and <PER") == "1 < 2 and "
    assert restorer.held() == [(0, "content", 0)]
