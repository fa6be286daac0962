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
