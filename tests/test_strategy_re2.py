"""`re2`: the question is read twice, in one backend call."""

from __future__ import annotations

from ponder.strategies.re2 import REREAD
from ponder.tokens import count_prompt_tokens, count_tokens
from ponder.types import Message
from tests.conftest import MODEL, chat, scripted, streamed_text, user


async def test_question_is_read_twice_in_one_call_with_the_conversation_kept() -> None:
    backend = scripted(["Paris"])
    messages = [
        {"role": "system", "content": "Be terse."},
        user("Hi"),
        {"role": "assistant", "content": "Hello!"},
        user("Capital of France?"),
    ]
    response = await chat(
        backend, f"re2-{MODEL}", messages=messages, temperature=0.3, stop=["\n\n"], max_tokens=20
    )
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "Paris"
    (call,) = backend.calls
    assert [m.role for m in call.messages] == ["system", "user", "assistant", "user"]
    assert call.messages[0].text == "Be terse."
    assert call.prompt == f"Capital of France?\n{REREAD}Capital of France?"
    assert (call.sampling.temperature, call.sampling.stop, call.sampling.max_tokens) == (
        0.3,
        ("\n\n",),
        20,
    )
    assert body["usage"]["prompt_tokens"] == count_prompt_tokens(call.messages)
    assert body["usage"]["completion_tokens"] == count_tokens("Paris")
    assert response.headers["x-ponder-backend-calls"] == "1"


async def test_rereads_option_and_request_n_in_one_call() -> None:
    backend = scripted(lambda call, i: f"answer {i}")
    response = await chat(backend, f"re2-{MODEL}", n=2, ponder={"re2": {"rereads": 2}})
    assert [c["message"]["content"] for c in response.json()["choices"]] == [
        "answer 0",
        "answer 1",
    ]
    (call,) = backend.calls
    assert call.n == 2
    assert call.prompt == f"hello\n{REREAD}hello\n{REREAD}hello"


async def test_streams_the_answer_token_by_token() -> None:
    backend = scripted(["one two three"])
    response = await chat(backend, f"re2-{MODEL}", stream=True)
    assert streamed_text(response.text) == "one two three"
    assert backend.calls[0].stream


async def test_image_parts_are_kept_when_the_text_is_repeated() -> None:
    backend = scripted(["a cat"])
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    content = [{"type": "text", "text": "What is this?"}, image]
    await chat(backend, f"re2-{MODEL}", messages=[{"role": "user", "content": content}])
    (message,) = backend.calls[0].messages
    assert message == Message(
        "user",
        ({"type": "text", "text": f"What is this?\n{REREAD}What is this?"}, image),
    )


async def test_bad_option_is_a_400_naming_the_field() -> None:
    response = await chat(scripted(), f"re2-{MODEL}", ponder={"re2": {"rereads": 9}})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "ponder.re2.rereads"
