"""Every plugin slug answers by name, as a model prefix and as `optillm_approach`; the ones
that need the network, code execution or an operator's file are refused with a 403 naming the
setting until it is configured; and plugins compose around a strategy (`privacy&sc`,
`readurls&memory&moa`) with the strategy's exact number of backend calls."""

from __future__ import annotations

import pytest

from ponder.config import Settings
from ponder.testing import Call
from tests.conftest import MODEL, assert_error, chat, scripted, user

REPLY = '{"answer": 42}\nThe answer is 42.'
# The plugins that run with no server setting, with the options a scripted backend needs (it
# reports no context window).
OPEN = {
    "memory": {"context_window": 4096},
    "compact": {"context_window": 4096},
    "longcepo": {"context_window": 4096},
    "privacy": {},
    "json": {},
    "router": {},
    "mem": {},
}
# The plugins an operator turns on, and the setting each 403 names.
GATED = {
    "readurls": "PONDER_ENABLE_URL_FETCH",
    "executecode": "PONDER_ENABLE_CODE_EXECUTION",
    "web_search": "PONDER_WEB_SEARCH_URL",
    "deep_research": "PONDER_WEB_SEARCH_URL",
    "mcp": "PONDER_MCP_CONFIG",
    "proxy": "PONDER_PROXY_CONFIG",
}


def reply(call: Call, index: int) -> str:
    return REPLY


@pytest.mark.parametrize("slug", sorted(OPEN))
@pytest.mark.parametrize("how", ["prefix", "optillm_approach"])
async def test_a_plugin_that_needs_no_setting_answers_by_name(slug: str, how: str) -> None:
    backend = scripted(reply)
    fields: dict[str, object] = {"ponder": {slug: OPEN[slug]}}
    if how == "prefix":
        response = await chat(backend, f"{slug}-{MODEL}", **fields)
    else:
        response = await chat(backend, MODEL, optillm_approach=slug, **fields)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    assert int(response.headers["x-ponder-backend-calls"]) == len(backend.calls) >= 1


@pytest.mark.parametrize("slug", sorted(GATED))
@pytest.mark.parametrize("how", ["prefix", "optillm_approach"])
async def test_a_plugin_the_operator_has_not_turned_on_is_a_403_naming_the_setting(
    slug: str, how: str
) -> None:
    backend = scripted(reply)
    if how == "prefix":
        response = await chat(backend, f"{slug}-{MODEL}")
    else:
        response = await chat(backend, MODEL, optillm_approach=slug)
    assert_error(response, 403)
    assert GATED[slug] in response.json()["error"]["message"]
    assert backend.calls == []


async def test_privacy_around_sc_masks_every_sample_and_restores_the_vote() -> None:
    backend = scripted(lambda call, index: "Alice Johnson is 42. The answer is 42.")
    question = "My name is Alice Johnson, mail alice.johnson@example.com. How old am I, 42?"
    response = await chat(
        backend, f"privacy&sc-{MODEL}", messages=[user(question)], ponder={"sc": {"samples": 3}}
    )
    assert response.status_code == 200, response.text
    assert len(backend.calls) == 3
    for call in backend.calls:
        seen = " ".join(m.text for m in call.messages)
        assert "Alice" not in seen and "alice.johnson@example.com" not in seen
    assert "42" in response.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("how", ["prefix", "optillm_approach"])
async def test_readurls_and_memory_wrap_moa_with_moa_s_own_calls(how: str) -> None:
    backend = scripted(reply)
    settings = Settings(enable_url_fetch=True)
    options = {"memory": {"context_window": 4096}}
    if how == "prefix":
        response = await chat(
            backend, f"readurls&memory&moa-{MODEL}", settings=settings, ponder=options
        )
    else:
        response = await chat(
            backend,
            MODEL,
            settings=settings,
            optillm_approach="readurls&memory&moa",
            ponder=options,
        )
    assert response.status_code == 200, response.text
    bare = scripted(reply)
    alone = await chat(bare, f"moa-{MODEL}")
    # no URL to read and an input that fits: the plugins add no call of their own
    assert len(backend.calls) == len(bare.calls) == int(alone.headers["x-ponder-backend-calls"])
    assert [c.prompt for c in backend.calls] == [c.prompt for c in bare.calls]
