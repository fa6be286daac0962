"""A client moving to Ponder keeps its model names: every approach name it may use answers as
a model prefix and as `optillm_approach`, is listed by `GET /v1/models` (by its slug; an alias
answers too), and composes with `&` (a pipeline) and `|` (side by side)."""

from __future__ import annotations

import pytest

from ponder.config import Settings
from ponder.proxy import create_app
from ponder.strategies.engine import PIPE_PROMPT
from ponder.strategies.registry import default_registry
from ponder.testing import Call
from tests.conftest import MODEL, asgi_client, chat, scripted

APPROACHES = (
    *("mcts", "rstar", "pvg", "plansearch", "leap", "rto", "cepo", "mars", "genselect"),
    *("deepthink", "coc", "z3", "majority_voting", "bon", "moa", "cot_reflection", "re2"),
    "autothink",
    "self_consistency",
)
CODE_ON = Settings(enable_code_execution=True, code_timeout_s=10, code_memory_mb=256)
# One reply every parser of these strategies can read: a program that prints an answer, a
# pick, a rating, a verdict and a final answer.
UNIVERSAL = (
    "```python\nprint('The answer is 42.')\n```\n"
    "Selected: 1\nVERDICT: NO ISSUES\nRating: 8\nThe answer is 42."
)


def universal(call: Call, index: int) -> str:
    return UNIVERSAL


async def test_models_lists_every_approach() -> None:
    app = create_app(Settings(), backend=scripted())
    async with asgi_client(app) as client:
        ids = {m["id"] for m in (await client.get("/v1/models")).json()["data"]}
    registry = default_registry(entry_points=False)
    slugs = {registry.canonical(name) for name in APPROACHES}  # aliases are listed by slug
    assert {f"{slug}-{MODEL}" for slug in slugs} <= ids
    assert f"sc-{MODEL}" in ids and f"self_consistency-{MODEL}" not in ids


@pytest.mark.parametrize("slug", sorted(set(APPROACHES)))
@pytest.mark.parametrize("how", ["prefix", "optillm_approach", "pipeline", "side_by_side"], ids=str)
async def test_every_approach_answers_by_name_and_composes(slug: str, how: str) -> None:
    backend = scripted(universal)
    fields: dict[str, object] = {
        "prefix": {"model": f"{slug}-{MODEL}"},
        "optillm_approach": {"model": MODEL, "optillm_approach": slug},
        "pipeline": {"model": f"{slug}&none-{MODEL}"},
        "side_by_side": {"model": f"{slug}|none-{MODEL}"},
    }[how]
    model = fields.pop("model")
    assert isinstance(model, str)
    response = await chat(backend, model, settings=CODE_ON, **fields)
    assert response.status_code == 200, response.text
    choices = response.json()["choices"]
    assert len(choices) == (2 if how == "side_by_side" else 1)
    assert all(c["message"]["content"] for c in choices)
    assert backend.calls
    if how == "pipeline":  # the strategy's answer, then a review of it
        assert backend.calls[-1].prompt == PIPE_PROMPT
        assert len(backend.calls) >= 2
    if how == "side_by_side":
        assert choices[1]["message"]["content"] == UNIVERSAL


def _sent(call: Call) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in call.messages]


async def test_a_tag_in_the_system_prompt_names_the_approach_and_leaves_the_prompt() -> None:
    backend = scripted(["It is 4.", "Four: 4.", "I say 5."])
    response = await chat(
        backend,
        MODEL,
        messages=[
            {"role": "system", "content": "Be brief. <optillm_approach>sc</optillm_approach>"},
            {"role": "user", "content": "2+2?"},
        ],
        ponder={"sc": {"samples": 3}},
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "It is 4."
    assert len(backend.calls) == 3  # sc's samples, no tie
    assert {tuple(_sent(c)) for c in backend.calls} == {(("system", "Be brief."), ("user", "2+2?"))}


async def test_a_tag_in_a_user_message_decides_over_the_field_and_a_bare_system_tag_goes() -> None:
    backend = scripted(["A", "B", "C"])
    response = await chat(
        backend,
        MODEL,
        optillm_approach="bon",  # the conversation's tag decides over the field
        messages=[{"role": "user", "content": "<optillm_approach>re2</optillm_approach>\n2+2?"}],
    )
    assert response.status_code == 200, response.text
    (call,) = backend.calls  # re2: one call, the question read twice
    assert call.prompt.count("2+2?") == 2 and "optillm_approach" not in call.prompt

    alone = scripted(["4"])
    response = await chat(
        alone,
        MODEL,
        messages=[
            {"role": "system", "content": "<optillm_approach>none</optillm_approach>"},
            {"role": "user", "content": "2+2?"},
        ],
    )
    assert response.status_code == 200, response.text
    assert _sent(alone.calls[0]) == [("user", "2+2?")]  # the system message held only the tag


async def test_auto_leaves_the_route_to_the_model_name() -> None:
    for fields in (
        {"optillm_approach": "auto"},
        {"messages": [{"role": "user", "content": "<optillm_approach>auto</optillm_approach>hi"}]},
    ):
        backend = scripted(lambda call, i: "The answer is 4.")
        response = await chat(backend, f"majority_voting-{MODEL}", **fields)
        assert response.status_code == 200, response.text
        assert len(backend.calls) == 6  # majority_voting's 6 samples, as the name says
        assert {c.prompt for c in backend.calls} <= {"hi", "hello"}


async def test_an_unknown_approach_in_a_tag_is_a_400_naming_the_messages() -> None:
    backend = scripted()
    response = await chat(
        backend,
        MODEL,
        messages=[{"role": "user", "content": "<optillm_approach>bogus</optillm_approach>hi"}],
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "messages"
    assert error["message"] == "unknown strategy 'bogus' in optillm_approach"
    assert not backend.calls


async def test_the_tag_works_in_the_messages_and_responses_apis() -> None:
    backend = scripted(lambda call, i: "The answer is 4.")
    app = create_app(Settings(), backend=backend)
    tag = "<optillm_approach>sc</optillm_approach>"
    async with asgi_client(app) as client:
        messages = await client.post(
            "/v1/messages",
            json={
                "model": MODEL,
                "max_tokens": 64,
                "system": f"Be brief. {tag}",
                "messages": [{"role": "user", "content": "2+2?"}],
                "ponder": {"sc": {"samples": 2}},
            },
        )
        assert messages.status_code == 200, messages.text
        assert len(backend.calls) == 2
        responses = await client.post(
            "/v1/responses",
            json={
                "model": MODEL,
                "instructions": f"Be brief. {tag}",
                "input": "2+2?",
                "ponder": {"sc": {"samples": 2}},
            },
        )
        assert responses.status_code == 200, responses.text
        assert len(backend.calls) == 4
    assert all(_sent(c) == [("system", "Be brief."), ("user", "2+2?")] for c in backend.calls)


async def test_mcts_tuning_fields_become_its_options_and_never_reach_the_backend() -> None:
    tuning = {"mcts_simulations": 1, "mcts_depth": 1, "mcts_exploration": 0.5}
    backend = scripted(universal)
    response = await chat(backend, f"mcts-{MODEL}", **tuning)
    assert response.status_code == 200, response.text
    assert len(backend.calls) == 1 * 3 * (2 + 1)  # simulations x actions x (2 + depth)
    assert all(not set(tuning) & set(c.sampling.extra) for c in backend.calls)

    backend = scripted(universal)  # ponder.mcts decides over the fields
    response = await chat(backend, f"mcts-{MODEL}", ponder={"mcts": {"simulations": 2}}, **tuning)
    assert response.status_code == 200, response.text
    assert len(backend.calls) == 2 * 3 * (2 + 1)

    backend = scripted(["4"])  # another route: dropped, not forwarded
    response = await chat(backend, MODEL, mcts_depth=2, user="u-1")
    assert response.status_code == 200, response.text
    assert backend.calls[0].sampling.extra == {"user": "u-1"}

    response = await chat(scripted(), f"mcts-{MODEL}", mcts_simulations=0)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "ponder.mcts.simulations"


async def test_an_unknown_decoding_is_a_400_and_a_known_one_names_the_strategy() -> None:
    backend = scripted()
    response = await chat(backend, MODEL, decoding="beam_search")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "decoding" and "beam_search" in error["message"]
    response = await chat(backend, MODEL, decoding=["cot_decoding"])
    assert response.status_code == 400 and response.json()["error"]["param"] == "decoding"
    assert not backend.calls

    # thinkdeeper's own fields ride along: an unknown bound is refused as its option
    response = await chat(backend, MODEL, decoding="thinkdeeper", max_thinking_tokens=0)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "ponder.thinkdeeper.max_thinking_tokens"
