"""One backend call, several choices: each choice carries its own output tokens, so a strategy
that answers with one of them reports honest `reasoning_tokens`."""

from __future__ import annotations

import httpx

from ponder.backends.assemble import Assembler, split_usage
from ponder.backends.openai_compat import OpenAICompatBackend
from ponder.testing import HandlerUpstream
from ponder.types import Delta, Message, Sampling, Usage


def test_the_backends_own_counts_are_kept_when_they_add_up() -> None:
    usage = Usage(prompt_tokens=30, completion_tokens=12, cached_tokens=8)
    assert split_usage(usage, ["a", "bbbbbbbb", "c"], [5, 4, 3]) == [
        Usage(30, 5, 8),
        Usage(0, 4, 0),
        Usage(0, 3, 0),
    ]


def test_without_counts_the_total_is_shared_by_text_length_and_adds_up() -> None:
    usage = Usage(prompt_tokens=30, completion_tokens=10)
    shares = split_usage(usage, ["x" * 30, "x" * 10, "x" * 10])
    assert [u.completion_tokens for u in shares] == [6, 2, 2]
    assert sum(shares, Usage()) == usage
    # counts that do not add up to the call's total are not trusted
    odd = split_usage(usage, ["x" * 30, "x" * 10, "x" * 10], [1, 1, 1])
    assert sum(odd, Usage()) == usage
    # remainders go where the shares were cut most, and nothing is lost
    uneven = split_usage(Usage(0, 7), ["ab", "ab", "ab"])
    assert sorted(u.completion_tokens for u in uneven) == [2, 2, 3]
    assert split_usage(Usage(0, 4), ["", ""]) == [Usage(0, 2), Usage(0, 2)]


def test_a_streamed_call_gives_each_choice_the_tokens_its_finish_reported() -> None:
    assembler = Assembler(2)
    for delta in (
        Delta(index=0, content="short"),
        Delta(index=1, content="a much longer answer"),
        Delta(index=1, finish_reason="stop", completion_tokens=9),
        Delta(index=0, finish_reason="stop", completion_tokens=2),
        Delta(usage=Usage(prompt_tokens=20, completion_tokens=11)),
    ):
        assembler.add(delta)
    first, second = assembler.completions()
    assert (first.usage, second.usage) == (Usage(20, 2), Usage(0, 9))


async def test_an_upstreams_n_choices_share_its_total() -> None:
    body = {
        "choices": [
            {"index": 1, "message": {"content": "y" * 10}, "finish_reason": "stop"},
            {"index": 0, "message": {"content": "x" * 30}, "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 8},
    }
    upstream = HandlerUpstream(lambda r: httpx.Response(200, json=body))
    backend = OpenAICompatBackend("http://up/v1", http=upstream)
    first, second = await backend.complete("m", [Message("user", "hi")], Sampling(), n=2)
    assert (first.usage, second.usage) == (Usage(12, 6), Usage(0, 2))
