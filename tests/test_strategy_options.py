"""Every strategy's options are checked against its Config before any backend call: a bad
knob, or one the strategy does not have, is an OpenAI-shaped 400 naming it (`ponder.<slug>.<knob>`).
Each strategy's own tests cover what its knobs do."""

from __future__ import annotations

import pytest

from tests.conftest import MODEL, assert_error, chat, scripted

# slug -> (knob, a value it refuses): out of range, of the wrong kind, or a knob it lacks (last)
BAD_OPTIONS: dict[str, list[tuple[str, object]]] = {
    "cepo": [
        ("attempts", 0),
        ("attempts", 9),
        ("executions", 1),
        ("executions", 9),
        ("temperature", 0),
        ("plan_tokens", 8),
        ("score_tokens", 0),
        ("confidence", "maybe"),
        ("plans", 2),
    ],
    "coc": [
        ("fix_attempts", -1),
        ("fix_attempts", 6),
        ("code_tokens", 0),
        ("simulate_tokens", 0),
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("max_fixes", 2),
    ],
    "deepthink": [
        ("chains", 1),
        ("chains", 17),
        ("threshold", -0.1),
        ("threshold", 1.5),
        ("temperature", 0),
        ("plan_tokens", 8),
        ("samples", 3),
    ],
    "genselect": [
        ("candidates", 1),
        ("candidates", 17),
        ("temperature", 0),
        ("compare_tokens", 0),
        ("compare_temperature", -0.1),
        ("compare_temperature", 2.5),
        ("selections", 0),
        ("selections", 9),
        ("rotate", "yes"),
        ("judges", 2),
    ],
    "leap": [
        ("max_examples", 0),
        ("max_examples", 9),
        ("max_principles", 0),
        ("max_principles", 11),
        ("temperature", 0),
        ("extract_tokens", 0),
        ("attempt_tokens", 0),
        ("principle_tokens", 0),
        ("condense_tokens", 0),
        ("examples", 2),
    ],
    "mars": [
        ("agents", 1),
        ("agents", 9),
        ("min_temperature", 0),
        ("max_temperature", 2.5),
        ("rounds", -1),
        ("rounds", 4),
        ("verify_temperature", 0),
        ("verify_tokens", 8),
        ("drafts", 3),
    ],
    "mcts": [
        ("simulations", 0),
        ("simulations", 17),
        ("exploration", -0.1),
        ("exploration", 11),
        ("depth", -1),
        ("depth", 5),
        ("actions", 0),
        ("actions", 9),
        ("temperature", 0),
        ("value_tokens", 0),
        ("confidence", "maybe"),
        ("rollouts", 2),
    ],
    "moa": [
        ("drafts", 1),
        ("drafts", 9),
        ("temperature", 0),
        ("temperature", 3),
        ("critique_tokens", 0),
        ("agents", 3),
    ],
    "plansearch": [
        ("observations", 0),
        ("observations", 9),
        ("plans", 0),
        ("plans", 9),
        ("temperature", 0),
        ("observation_tokens", 0),
        ("plan_tokens", 0),
        ("select_tokens", 0),
        ("solutions", 2),
    ],
    "pvg": [
        ("rounds", 0),
        ("rounds", 6),
        ("solutions", 0),
        ("solutions", 9),
        ("temperature", 0),
        ("score_tokens", 0),
        ("confidence", "maybe"),
        ("verifiers", 2),
    ],
    "rstar": [
        ("rollouts", 0),
        ("rollouts", 33),
        ("max_depth", 0),
        ("max_depth", 9),
        ("c", -1),
        ("temperature", 0),
        ("step_tokens", 0),
        ("answer_tokens", 0),
        ("num_rollouts", 5),
    ],
    "rto": [("restate_tokens", 0), ("judge_tokens", 0), ("judge", "sometimes"), ("rounds", 2)],
    "tot": [
        ("breadth", 0),
        ("breadth", 9),
        ("depth", 0),
        ("depth", 6),
        ("beam", 0),
        ("beam", 9),
        ("temperature", 0),
        ("thought_tokens", 0),
        ("score_tokens", 0),
        ("confidence", "maybe"),
        ("width", 2),
    ],
    "z3": [("fix_attempts", -1), ("fix_attempts", 6), ("code_tokens", 0), ("code_temperature", 3)],
}


@pytest.mark.parametrize(
    ("slug", "field", "value"),
    [(slug, field, value) for slug, bad in BAD_OPTIONS.items() for field, value in bad],
)
async def test_a_bad_option_is_a_400_naming_it_before_any_call(
    slug: str, field: str, value: object
) -> None:
    backend = scripted(["never sent"])
    response = await chat(backend, f"{slug}-{MODEL}", ponder={slug: {field: value}})
    assert_error(response, 400, type="invalid_request_error", param=f"ponder.{slug}.{field}")
    assert not backend.calls
