from __future__ import annotations

import pytest

from ponder.errors import InvalidRequest, UnknownModel
from ponder.strategies.resolve import Route, approach_in_prompt, resolve
from ponder.types import Message

KNOWN = {"none": "none", "sc": "sc", "self_consistency": "sc", "refine": "refine", "tot": "tot"}


def canonical(name: str) -> str | None:
    return KNOWN.get(name)


@pytest.mark.parametrize(
    ("name", "approach", "expected"),
    [
        ("smollm2-135m", None, Route("smollm2-135m", ("none",))),
        ("gpt-4o", None, Route("gpt-4o", ("none",))),
        ("gpt", None, Route("gpt", ("none",))),
        ("none-smollm2-135m", None, Route("smollm2-135m", ("none",))),
        ("sc-gpt-4o", None, Route("gpt-4o", ("sc",))),
        ("self_consistency-gpt-4o", None, Route("gpt-4o", ("sc",))),
        ("sc&refine-m", None, Route("m", ("sc", "refine"), "pipeline")),
        ("sc|tot-m-1", None, Route("m-1", ("sc", "tot"), "parallel")),
        ("nosuchstrategy-smollm2-135m", None, Route("nosuchstrategy-smollm2-135m", ("none",))),
        ("sc-", None, Route("sc-", ("none",))),
        ("gpt-4o", "sc", Route("gpt-4o", ("sc",))),
        ("sc-gpt-4o", "refine", Route("sc-gpt-4o", ("refine",))),
        ("m", "self_consistency&refine", Route("m", ("sc", "refine"), "pipeline")),
        ("m", "sc|tot", Route("m", ("sc", "tot"), "parallel")),
    ],
)
def test_resolve(name: str, approach: str | None, expected: Route) -> None:
    assert resolve(name, canonical, approach) == expected


@pytest.mark.parametrize(
    ("name", "approach", "error", "param"),
    [
        ("sc&bogus-m", None, UnknownModel, "model"),
        ("bogus|sc-m", None, UnknownModel, "model"),
        ("sc&tot|refine-m", None, InvalidRequest, "model"),
        ("m", "bogus", InvalidRequest, "optillm_approach"),
        ("m", "sc&bogus", InvalidRequest, "optillm_approach"),
    ],
)
def test_resolve_errors(
    name: str, approach: str | None, error: type[Exception], param: str
) -> None:
    with pytest.raises(error) as info:
        resolve(name, canonical, approach)
    assert info.value.param == param


LAYERED = {**KNOWN, "readurls": "readurls", "privacy": "privacy", "pii": "privacy"}
PLUGINS = {"readurls", "privacy"}


def layered(name: str) -> str | None:
    return LAYERED.get(name)


def is_plugin(name: str) -> bool:
    return LAYERED.get(name) in PLUGINS


@pytest.mark.parametrize(
    ("name", "approach", "expected"),
    [
        ("readurls-m", None, Route("m", ("none",), "single", ("readurls",))),
        ("readurls&sc-m", None, Route("m", ("sc",), "single", ("readurls",))),
        ("pii&readurls&sc-m", None, Route("m", ("sc",), "single", ("privacy", "readurls"))),
        ("readurls&privacy-m", None, Route("m", ("none",), "single", ("readurls", "privacy"))),
        (
            "readurls&sc&refine-m",
            None,
            Route("m", ("sc", "refine"), "pipeline", ("readurls",)),
        ),
        ("sc&refine-m", None, Route("m", ("sc", "refine"), "pipeline")),
        ("sc|tot-m", None, Route("m", ("sc", "tot"), "parallel")),
        ("m", "readurls&self_consistency", Route("m", ("sc",), "single", ("readurls",))),
        ("m", "privacy", Route("m", ("none",), "single", ("privacy",))),
    ],
)
def test_plugins_come_first_each_around_the_rest(
    name: str, approach: str | None, expected: Route
) -> None:
    assert resolve(name, layered, approach, is_plugin) == expected


@pytest.mark.parametrize(
    ("name", "approach", "says", "param"),
    [
        ("sc&readurls-m", None, "'readurls' comes after a strategy", "model"),
        ("readurls&sc&privacy-m", None, "'privacy' comes after a strategy", "model"),
        ("readurls|sc-m", None, "'readurls' is joined with '|'", "model"),
        ("m", "sc&readurls", "'readurls' comes after a strategy", "optillm_approach"),
        ("m", "readurls|sc", "'readurls' is joined with '|'", "optillm_approach"),
    ],
)
def test_a_plugin_out_of_place_is_a_400_that_says_why(
    name: str, approach: str | None, says: str, param: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        resolve(name, layered, approach, is_plugin)
    assert info.value.param == param and says in str(info.value)


def test_a_tag_in_the_conversation_names_the_approach() -> None:
    system = Message("system", "Be brief.<optillm_approach>sc</optillm_approach>")
    asks = Message("user", "<optillm_approach>tot</optillm_approach> 2+2?")
    kept, approach = approach_in_prompt([system, asks])
    assert approach == "sc"  # the system message's tag comes first
    assert kept == [Message("system", "Be brief."), asks]  # only that message loses its tags

    kept, approach = approach_in_prompt([Message("developer", "x"), asks])
    assert (approach, kept) == ("tot", [Message("developer", "x"), Message("user", "2+2?")])


def test_a_tag_is_taken_out_of_text_parts_and_an_empty_system_message_goes() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    parts = (
        {"type": "text", "text": "<optillm_approach> bon </optillm_approach>"},
        image,
        {"type": "text", "text": "What is in it?"},
    )
    kept, approach = approach_in_prompt(
        [Message("system", "<optillm_approach>x</optillm_approach>"), Message("user", parts)]
    )
    assert approach == "x"
    assert kept == [Message("user", parts)]
    kept, approach = approach_in_prompt([Message("user", parts)])
    assert approach == "bon"
    assert kept == [Message("user", (image, {"type": "text", "text": "What is in it?"}))]


def test_no_tag_leaves_the_conversation_as_it_is() -> None:
    messages = [Message("system", "<optillm_approach>"), Message("user", "hi")]
    assert approach_in_prompt(messages) == (messages, None)


def test_auto_leaves_the_route_to_the_name_and_a_tags_errors_name_the_messages() -> None:
    assert resolve("sc-m", canonical, "auto") == Route("m", ("sc",))
    with pytest.raises(InvalidRequest) as info:
        resolve("m", canonical, "bogus", approach_param="messages")
    assert info.value.param == "messages"
