"""The Anthropic Messages and Responses front ends on the real embedded model (SmolLM2-135M
through llama.cpp), each streamed through its official SDK."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest

from ponder.backends.llamacpp import EmbeddedBackend
from ponder.config import Settings
from ponder.protocol_messages import CountTokensRequest
from ponder.proxy import create_app
from ponder.proxy.convert_messages import count_request, input_tokens
from ponder.testing import running_server
from tests.conftest import MODEL

pytestmark = pytest.mark.integration

SYSTEM = "You are a helpful assistant."
QUESTION = "Name three colors."


@pytest.fixture(scope="module")
def root(embedded: EmbeddedBackend) -> Iterator[str]:
    """The server's root URL (the Anthropic SDK adds /v1 itself)."""
    with running_server(create_app(Settings(), backend=embedded)) as url:
        yield url.removesuffix("/v1")


def test_messages_stream_through_the_anthropic_sdk(root: str) -> None:
    client = anthropic.Anthropic(base_url=root, api_key="unused", max_retries=0, timeout=120)
    with client.messages.stream(
        model=MODEL,
        max_tokens=24,
        system=SYSTEM,
        messages=[{"role": "user", "content": QUESTION}],
    ) as stream:
        pieces = list(stream.text_stream)
        message = stream.get_final_message()
    assert len(pieces) > 1, "the answer arrives token by token"
    text = "".join(pieces)
    assert text.strip() and [b.type for b in message.content] == ["text"]
    assert message.content[0].type == "text" and message.content[0].text == text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert 0 < message.usage.output_tokens <= 24
    # the chat template, the system prompt, the question: read from the prefix cache when an
    # earlier request had the same start (Anthropic counts cache reads apart)
    usage = message.usage
    assert usage.input_tokens >= 1  # at least the last token is evaluated
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) > 10


def test_a_stop_sequence_is_named_in_the_answer(root: str) -> None:
    client = anthropic.Anthropic(base_url=root, api_key="unused", max_retries=0, timeout=120)
    message = client.messages.create(
        model=MODEL,
        max_tokens=24,
        system=SYSTEM,
        messages=[{"role": "user", "content": QUESTION}],
        stop_sequences=["zzz", " "],
    )
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", " ")
    assert message.content[0].type == "text" and " " not in message.content[0].text


def test_responses_stream_through_the_openai_sdk_on_a_strategy(root: str) -> None:
    client = openai.OpenAI(base_url=f"{root}/v1", api_key="unused", max_retries=0, timeout=120)
    events = list(
        client.responses.create(
            model=f"sc-{MODEL}",
            instructions=SYSTEM,
            input=QUESTION,
            max_output_tokens=24,
            stream=True,
            extra_body={"ponder": {"sc": {"samples": 2}}},
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert "response.reasoning_summary_text.delta" in kinds  # sc's vote, as it works
    assert [e.sequence_number for e in events] == list(range(len(events)))
    response = events[-1].response  # type: ignore[union-attr]
    assert response.output_text.strip()
    assert response.usage is not None
    assert response.usage.output_tokens > 0
    assert response.usage.output_tokens_details.reasoning_tokens < response.usage.output_tokens


def test_count_tokens_is_exact_on_the_embedded_model(root: str) -> None:
    """count_tokens counts with the model's own chat template and tokenizer: what a call with
    the same prompt is charged (input and cache reads together), and not tiktoken's estimate."""
    client = anthropic.Anthropic(base_url=root, api_key="unused", max_retries=0, timeout=120)
    messages: list[anthropic.types.MessageParam] = [
        {"role": "user", "content": "Count the words in this sentence, please."},
        {"role": "assistant", "content": "There are seven words."},
        {"role": "user", "content": QUESTION},
    ]
    counted = client.messages.count_tokens(model=MODEL, system=SYSTEM, messages=messages)
    message = client.messages.create(model=MODEL, max_tokens=1, system=SYSTEM, messages=messages)
    charged = message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    assert counted.input_tokens == charged
    body = {"model": MODEL, "system": SYSTEM, "messages": messages}
    estimate = input_tokens(count_request(CountTokensRequest.model_validate(body)))
    assert estimate != charged  # tiktoken's estimate, used before, was not what is charged
