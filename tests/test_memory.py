"""`mem`: episodic memory. Past exchanges relevant to the question are recalled into the system
prompt; the exchange is remembered, per tenant and conversation, within the server's caps."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from ponder import vectors
from ponder.config import Settings
from ponder.plugins.mem import (
    ANSWER_CHARS,
    REFERENCE_FOOTER,
    REFERENCE_HEADER,
    conversation_of,
)
from ponder.spl_store import Policy, Store
from ponder.spl_store import models as m
from ponder.testing import ScriptedBackend
from ponder.types import Message
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    scripted,
    streamed_text,
    trace_steps,
    usage_for,
    user,
)

MEM = f"mem-{MODEL}"
FACT = "My cat is called Whiskers and she is three years old."
FACT_REPLY = "Whiskers is a lovely name for a cat."


def block(*exchanges: tuple[str, str]) -> str:
    """The reference block the strategy should send for these (question, answer) pairs."""
    entries = [f"Q: {q}\nA: {a}" for q, a in exchanges]
    return "\n".join([REFERENCE_HEADER, *entries, REFERENCE_FOOTER])


def seed(
    store: Store,
    question: str,
    answer: str,
    *,
    tenant: str = "default",
    conversation: str = "default",
    request_id: str = "seeded",
) -> int:
    """Store an episode directly, as an earlier `mem-` request would have."""
    return store.add_episode(
        tenant,
        conversation,
        request_id,
        question,
        answer,
        vectors.to_bytes(vectors.vector(f"{question}\n{answer}")),
        max_episodes=store.policy.memory_max_episodes,
        max_age=store.policy.memory_max_age,
    )


async def ask(
    backend: ScriptedBackend, store: Store, question: str, **fields: Any
) -> httpx.Response:
    response = await chat(backend, MEM, store=store, messages=[user(question)], **fields)
    assert response.status_code == 200, response.text
    return response


def echo() -> ScriptedBackend:
    return scripted(lambda call, i: f"answer to: {call.prompt}")


# ---- recall ---------------------------------------------------------------------------------


async def test_a_fact_told_once_is_recalled_into_a_later_related_request(store: Store) -> None:
    backend = scripted([FACT_REPLY, "She is three."])
    first = await ask(backend, store, FACT)
    assert backend.calls[0].messages == (Message("user", FACT),)  # nothing to recall yet
    (episode,) = store.episodes("default")
    assert (episode.conversation, episode.question, episode.answer, episode.outcome) == (
        "default",
        FACT,
        FACT_REPLY,
        None,
    )
    assert episode.request_id == first.headers["x-request-id"]

    second = await ask(backend, store, "How old is my cat?", ponder={"trace": True})
    assert second.json()["choices"][0]["message"]["content"] == "She is three."
    assert backend.calls[1].messages == (
        Message("system", block((FACT, FACT_REPLY))),
        Message("user", "How old is my cat?"),
    )
    (recall,) = trace_steps(second.json(), "mem_recall")
    assert recall["ids"] == [episode.id]
    assert recall["scores"][0] >= 0.1
    (remember,) = trace_steps(second.json(), "mem_remember")
    newest = store.episodes("default")[0]
    assert remember["stored"] is True and remember["id"] == newest.id
    assert (newest.question, newest.answer) == ("How old is my cat?", "She is three.")


async def test_around_sc_every_sample_recalls_and_the_vote_is_remembered(store: Store) -> None:
    """`mem&sc`: the plugin recalls once, sc's samples all see the reference block, and the
    voted answer is the one remembered."""
    seed(store, FACT, FACT_REPLY)
    replies = ["She is three.", "She is two.", "She is three."]
    backend = scripted(replies)
    response = await chat(
        backend,
        f"mem&sc-{MODEL}",
        store=store,
        messages=[user("How old is my cat?")],
        ponder={"sc": {"samples": 3}, "trace": True},
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "She is three."
    assert len(backend.calls) == 3
    for call in backend.calls:
        assert call.messages == (
            Message("system", block((FACT, FACT_REPLY))),
            Message("user", "How old is my cat?"),
        )
    assert response.json()["usage"] == usage_for(backend, replies)
    newest = store.episodes("default")[0]
    assert (newest.question, newest.answer) == ("How old is my cat?", "She is three.")
    steps = [step["step"] for step in response.json()["ponder"]["trace"]]
    assert steps[0] == "mem_recall" and steps[-1] == "mem_remember"


async def test_an_unrelated_episode_is_not_recalled_below_the_similarity_threshold(
    store: Store,
) -> None:
    seed(store, "What is the capital of France?", "Paris.")
    backend = echo()
    question = "How long to bake sourdough bread?"
    body = (
        await ask(backend, store, question, ponder={"trace": True, "mem": {"remember": False}})
    ).json()
    assert backend.calls[0].messages == (Message("user", question),)
    assert trace_steps(body, "mem_recall")[0]["ids"] == []

    # The threshold is what kept it out: with none, the unrelated episode comes back.
    await ask(backend, store, question, ponder={"mem": {"min_similarity": 0, "remember": False}})
    assert backend.calls[1].messages == (
        Message("system", block(("What is the capital of France?", "Paris."))),
        Message("user", question),
    )


async def test_most_relevant_first_and_at_most_top_k(store: Store) -> None:
    owner = ("Who owns the red bicycle in the garage?", "Anna.")
    parked = ("Where is the bicycle parked?", "In the garage.")
    car = ("What colour is the car?", "The car is red.")
    for question, answer in (owner, car, ("What is the boiling point of water?", "100 C."), parked):
        seed(store, question, answer)
    backend = echo()
    question = "Is the red bicycle in the garage?"
    await ask(backend, store, question, ponder={"mem": {"top_k": 2, "remember": False}})
    assert backend.calls[0].messages[0] == Message("system", block(owner, parked))

    # Three or more: the car (one shared word) comes third; water (none) never.
    await ask(backend, store, question, ponder={"mem": {"top_k": 20, "remember": False}})
    assert backend.calls[1].messages[0] == Message("system", block(owner, parked, car))

    # top_k 0 turns recall off: the prompt is the client's, unchanged.
    await ask(backend, store, question, ponder={"mem": {"top_k": 0, "remember": False}})
    assert backend.calls[2].messages == (Message("user", question),)


async def test_conversation_scope_recalls_only_this_conversation_tenant_scope_all(
    store: Store,
) -> None:
    seed(store, "The project deadline is Friday.", "Noted.", conversation="work")
    seed(store, "The party deadline is Saturday.", "Noted.", conversation="home")
    backend = echo()
    question = "When is the deadline?"
    await ask(backend, store, question, ponder={"mem": {"conversation": "work", "remember": False}})
    assert backend.calls[0].messages[0] == Message(
        "system", block(("The project deadline is Friday.", "Noted."))
    )
    await ask(backend, store, question, ponder={"mem": {"conversation": "elsewhere"}})
    assert backend.calls[1].messages == (Message("user", question),)
    # (that exchange is remembered in "elsewhere", so recalled first below: it matches best)

    await ask(
        backend,
        store,
        question,
        ponder={"mem": {"conversation": "elsewhere", "scope": "tenant", "remember": False}},
    )
    assert backend.calls[2].messages[0] == Message(
        "system",
        block(
            (question, f"answer to: {question}"),
            ("The party deadline is Saturday.", "Noted."),
            ("The project deadline is Friday.", "Noted."),
        ),
    )
    assert [e.conversation for e in store.episodes("default")] == ["elsewhere", "home", "work"]


async def test_the_request_user_field_is_the_conversation(store: Store) -> None:
    backend = scripted(lambda call, i: "Noted.")
    await ask(backend, store, "My favourite colour is blue.", user="alice")
    assert [e.conversation for e in store.episodes("default")] == ["alice"]

    await ask(backend, store, "What is my favourite colour?", user="bob")
    assert backend.calls[1].messages == (Message("user", "What is my favourite colour?"),)
    await ask(backend, store, "What is my favourite colour?", user="alice")
    assert backend.calls[2].messages[0].role == "system"
    assert "Q: My favourite colour is blue." in backend.calls[2].messages[0].text

    # The option wins over the user field; neither gives "default".
    assert conversation_of("chat-7", "alice") == "chat-7"
    assert conversation_of(None, None) == conversation_of(None, "") == "default"
    long_user = "u" * 200
    hashed = conversation_of(None, long_user)
    assert len(hashed) <= 128 and hashed == conversation_of(None, long_user) != long_user


async def test_episodes_marked_wrong_are_not_recalled(store: Store) -> None:
    seed(store, "What is the tallest mountain?", "K2.", request_id="wrong-1")
    seed(store, "Which mountain is the tallest on Earth?", "Everest.", request_id="right-1")
    assert store.episode_outcome("default", "wrong-1", False) == 1
    assert store.episode_outcome("default", "right-1", True) == 1
    backend = echo()
    await ask(backend, store, "What is the tallest mountain?", ponder={"mem": {"remember": False}})
    assert backend.calls[0].messages[0] == Message(
        "system", block(("Which mountain is the tallest on Earth?", "Everest."))
    )


async def test_tenants_never_see_each_others_episodes(store: Store) -> None:
    settings = Settings(api_keys=["a:key-a", "b:key-b"])
    backend = scripted(lambda call, i: "Noted." if "secret" in call.prompt else "I don't know.")
    for question in ("The vault secret code is 4711.", "The vault secret code changed to 815."):
        response = await chat(
            backend,
            MEM,
            store=store,
            settings=settings,
            headers={"Authorization": "Bearer key-a"},
            messages=[user(question)],
        )
        assert response.status_code == 200
    question = "What is the vault secret code?"
    for scope in ("conversation", "tenant"):
        response = await chat(
            backend,
            MEM,
            store=store,
            settings=settings,
            headers={"Authorization": "Bearer key-b"},
            messages=[user(question)],
            ponder={"mem": {"scope": scope, "remember": scope == "tenant"}},
        )
        assert response.status_code == 200
    b_calls = backend.calls[2:]
    assert [c.messages for c in b_calls] == [(Message("user", question),)] * 2
    assert [e.question for e in store.episodes("b")] == [question]  # b's memory is b's own
    assert len(store.episodes("a")) == 2

    # Tenant a, asking the same, does get its own memory.
    await chat(
        backend,
        MEM,
        store=store,
        settings=settings,
        headers={"Authorization": "Bearer key-a"},
        messages=[user(question)],
    )
    assert "4711" in backend.calls[-1].messages[0].text


# ---- remembering ----------------------------------------------------------------------------


async def test_only_the_newest_episodes_up_to_the_size_cap_are_kept(tmp_path: Path) -> None:
    capped = Store(f"sqlite:///{tmp_path}/capped.db", policy=Policy(memory_max_episodes=3))
    try:
        backend = echo()
        for i in range(5):
            await ask(backend, capped, f"question number {i}", headers={"x-request-id": f"r{i}"})
        kept = capped.episodes("default")
        assert [e.request_id for e in kept] == ["r4", "r3", "r2"]
        assert [e.question for e in kept] == [f"question number {i}" for i in (4, 3, 2)]
    finally:
        capped.close()


async def test_episodes_past_the_age_limit_are_dropped_when_the_next_is_stored(
    tmp_path: Path,
) -> None:
    aged = Store(
        f"sqlite:///{tmp_path}/aged.db", policy=Policy(memory_max_age=dt.timedelta(days=7))
    )
    try:
        old = seed(aged, "Old news about the harbour.", "Noted.")
        recent = seed(aged, "Recent news about the harbour.", "Noted.")
        with aged.engine.begin() as conn:
            conn.execute(
                update(m.Episode)
                .where(m.Episode.id == old)
                .values(created_at=m.utcnow() - dt.timedelta(days=8))
            )
        assert len(aged.episodes("default")) == 2  # nothing is dropped until the next write
        await ask(echo(), aged, "Any news about the harbour?")
        kept = aged.episodes("default")
        assert [e.question for e in kept] == [
            "Any news about the harbour?",
            "Recent news about the harbour.",
        ]
        assert old not in {e.id for e in kept} and recent in {e.id for e in kept}
    finally:
        aged.close()


async def test_remember_false_stores_nothing(store: Store) -> None:
    backend = echo()
    body = await ask(backend, store, FACT, ponder={"mem": {"remember": False}, "trace": True})
    assert store.episodes("default") == []
    assert trace_steps(body.json(), "mem_remember") == []


async def test_a_failed_write_is_traced_and_the_answer_still_returned(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> int:
        raise OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(store, "add_episode", broken)
    body = (await ask(scripted(["fine"]), store, FACT, ponder={"trace": True})).json()
    assert body["choices"][0]["message"]["content"] == "fine"
    assert trace_steps(body, "mem_remember")[0] | {"at_s": 0} == {
        "step": "mem_remember",
        "at_s": 0,
        "stored": False,
        "error": "OperationalError",
    }


# ---- the call, the prompt, the stream -------------------------------------------------------


async def test_one_backend_call_draws_n_with_honest_usage(store: Store) -> None:
    seed(store, FACT, FACT_REPLY)
    backend = scripted(["She is three.", "Three years."])
    response = await ask(backend, store, "How old is my cat?", n=2, temperature=0.4)
    body = response.json()
    assert [c["message"]["content"] for c in body["choices"]] == ["She is three.", "Three years."]
    (call,) = backend.calls
    assert (call.n, call.sampling.temperature) == (2, 0.4)
    assert response.headers["x-ponder-backend-calls"] == "1"
    # both replies are the answer's choices: none of their tokens is reasoning
    expected = usage_for(backend, ["She is three.", "Three years."])
    assert body["usage"] == {**expected, "completion_tokens_details": {"reasoning_tokens": 0}}
    assert store.episodes("default")[0].answer == "She is three."  # choice 0 is remembered


async def test_streams_the_answer_and_reports_the_recall_as_reasoning(store: Store) -> None:
    seed(store, FACT, FACT_REPLY)
    backend = scripted(["She is three years old."])
    response = await ask(backend, store, "How old is my cat?", stream=True)
    assert streamed_text(response.text) == "She is three years old."
    assert streamed_text(response.text, "reasoning_content") == "Recalled 1 past exchange.\n"
    (call,) = backend.calls
    assert call.stream and call.messages[0] == Message("system", block((FACT, FACT_REPLY)))
    assert store.episodes("default")[0].answer == "She is three years old."


async def test_the_client_system_prompt_stays_first_and_verbatim(store: Store) -> None:
    long_answer = "Whiskers\nlikes   fish. " + "She sleeps a lot. " * 60
    seed(store, FACT, long_answer)
    backend = echo()
    system = "You are a pet assistant.\n  Answer briefly."
    messages = [
        {"role": "system", "content": system},
        user("Hi"),
        {"role": "assistant", "content": "Hello!"},
        user("How old is my cat?"),
    ]
    await chat(backend, MEM, store=store, messages=messages, ponder={"mem": {"remember": False}})
    (call,) = backend.calls
    flat = " ".join(long_answer.split())
    shortened = flat[: ANSWER_CHARS - 4].rstrip() + " ..."
    assert len(shortened) <= ANSWER_CHARS
    assert call.messages == (
        Message("system", f"{system}\n\n{block((FACT, shortened))}"),
        Message("user", "Hi"),
        Message("assistant", "Hello!"),
        Message("user", "How old is my cat?"),
    )


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"top_k": 21}, "top_k"),
        ({"top_k": -1}, "top_k"),
        ({"min_similarity": 1.5}, "min_similarity"),
        ({"scope": "everyone"}, "scope"),
        ({"conversation": ""}, "conversation"),
        ({"conversation": "c" * 129}, "conversation"),
        ({"remember": "sometimes"}, "remember"),
        ({"recall": 3}, "recall"),
    ],
)
async def test_invalid_options_are_a_400_naming_the_option(
    store: Store, options: dict[str, Any], param: str
) -> None:
    backend = scripted()
    response = await chat(backend, MEM, store=store, ponder={"mem": options})
    assert_error(response, 400, param=f"ponder.mem.{param}", type="invalid_request_error")
    assert backend.calls == []
    assert store.episodes("default") == []
