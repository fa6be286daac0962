"""A GGUF model's own chat template, and the tool calls a model writes into its text.

`ChatTemplate` renders internal messages (and tools) into the prompt text exactly as
llama-cpp-python's `Llama.create_chat_completion` does for the same GGUF: the same formatter
(the Jinja template from `tokenizer.chat_template`, or the built-in format llama-cpp-python
picks for a well-known template or for a model without one), the same BOS and EOS texts.
`ToolCallParser` takes the calls back out of generated text, incrementally, in the Hermes/Qwen
style: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`.

llama_cpp (and jinja2, which it brings) is imported only when a template is built, so the
parser and the message conversion work without it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ponder.backends.wire import text_chat
from ponder.errors import BackendError, InvalidRequest, Unsupported
from ponder.types import Message

log = logging.getLogger(__name__)

BACKEND = "embedded"
"""How error messages name the backend that renders templates."""


_GUESSED_FORMATS = {
    "chatml": "format_chatml",
    "mistral-instruct": "format_mistral_instruct",
    "llama-3": "format_llama3",
}
"""The built-in formatters llama-cpp-python uses instead of a GGUF template it recognises."""
_FALLBACK_FORMAT = "format_llama2"
"""The formatter llama-cpp-python uses for a GGUF without a chat template."""

_PROBE_TOOL = "ponder_probe_tool_7f3a"


def renders_tools(
    render: Callable[[list[dict[str, Any]], list[dict[str, Any]]], object],
    errors: tuple[type[Exception], ...],
) -> bool:
    """Whether a chat template shows the model the tools it is given: `render(chat, tools)`
    renders a chat with a tool no template knows (in a chat with a system message too, which
    some templates require); `errors` are its refusals."""
    tool = {
        "type": "function",
        "function": {"name": _PROBE_TOOL, "description": "", "parameters": {}},
    }
    user = {"role": "user", "content": "ping"}
    for chat in ([user], [{"role": "system", "content": "sys"}, user]):
        try:
            text = render(chat, [tool])
        except errors:
            continue
        return _PROBE_TOOL in str(text)
    return False


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    """A chat rendered to prompt text.

    Tokenize `text` with parse_special=True, and with add_special (llama.cpp's flag that adds
    the vocabulary's BOS/EOS where the vocabulary asks for them) = `not added_special`.
    """

    text: str
    added_special: bool
    """The text already holds the special tokens the template wants (BOS included)."""
    stop: tuple[str, ...] = ()
    """Stop strings the chat format adds to the request's own."""
    tools: bool = False
    """Tools were rendered into the prompt: parse tool calls out of the answer."""


# ---- messages -> template dicts ------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Mappings and sequences as dicts and lists, which templates and `tojson` read."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _arguments(arguments: str) -> Any:
    """A call's arguments as templates expect them: the JSON object itself (templates write
    `arguments | tojson`); a string that is not a JSON object stays as it is."""
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return arguments
    return parsed if isinstance(parsed, dict) else arguments


def template_messages(messages: Sequence[Message], backend: str = BACKEND) -> list[dict[str, Any]]:
    """Messages as a tool-calling chat template reads them: `developer` as `system`, text
    only, tool calls with their arguments as objects, tool results as `tool` messages.
    Raises Unsupported for image, audio or file parts."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.has_non_text_parts:
            raise Unsupported(f"the {backend} backend reads text only", param="messages")
        d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role}
        if m.tool_calls:
            d["content"] = m.text if m.content is not None else None
            d["tool_calls"] = [
                {
                    "id": tc.id,
                    "type": "function",
                    "function": {"name": tc.name, "arguments": _arguments(tc.arguments)},
                }
                for tc in m.tool_calls
            ]
        else:
            d["content"] = m.text
        if m.name is not None:
            d["name"] = m.name
        if m.role == "tool" and m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        out.append(d)
    return out


def _text_chat(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages for a template without tools: tool traffic as text."""
    return text_chat(messages, BACKEND)


def offered_tools(
    tools: Sequence[Mapping[str, Any]], tool_choice: str | Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """The tools to show the model: none for "none", the named one for a named choice, all of
    them otherwise. Raises InvalidRequest for a choice that names no tool given."""
    plain = [_plain(t) for t in tools]
    if tool_choice is None or tool_choice in ("auto", "required"):
        return plain
    if tool_choice == "none":
        return []
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(name, str):
            raise InvalidRequest("tool_choice names no function", param="tool_choice")
        chosen = [t for t in plain if (t.get("function") or {}).get("name") == name]
        if not chosen:
            raise InvalidRequest(
                f"tool_choice names the function {name!r}, which is not among the tools",
                param="tool_choice",
            )
        return chosen[:1]
    raise InvalidRequest(f"tool_choice {tool_choice!r} is not supported", param="tool_choice")


# ---- the template --------------------------------------------------------------------------


class ChatTemplate:
    """A model's chat template, as llama-cpp-python's `Llama` builds it from the GGUF.

    `template`: the `tokenizer.chat_template` metadata (None where the GGUF has none);
    `bos_token`, `eos_token`: the texts of the BOS and EOS tokens as `Llama` passes them
    (`llama_vocab_get_text`, "" for a token id of -1)."""

    def __init__(self, template: str | None, bos_token: str, eos_token: str, model_id: str) -> None:
        import jinja2
        from llama_cpp import llama_chat_format

        self.model_id = model_id
        self.template = template
        self._errors: tuple[type[Exception], ...] = (
            ValueError,
            TypeError,
            LookupError,
            AttributeError,
            jinja2.TemplateError,
        )
        guessed = (
            llama_chat_format.guess_chat_format_from_gguf_metadata(
                {"tokenizer.chat_template": template}
            )
            if template is not None
            else None
        )
        self._formatter: Callable[..., Any]
        if template is None or guessed is not None:
            name = _GUESSED_FORMATS[guessed] if guessed is not None else _FALLBACK_FORMAT
            self._formatter = getattr(llama_chat_format, name)
            self.format_name: str = guessed or "llama-2"
            self.supports_tools = False
            return
        try:
            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template, eos_token=eos_token, bos_token=bos_token
            )
        except jinja2.TemplateError as exc:
            raise BackendError(f"the chat template of {model_id} does not compile: {exc}") from exc
        self.format_name = "chat_template.default"
        self.supports_tools = renders_tools(
            lambda chat, tools: self._formatter(messages=chat, tools=tools).prompt, self._errors
        )

    def render(
        self,
        messages: Sequence[Message],
        tools: Sequence[Mapping[str, Any]] = (),
        tool_choice: str | Mapping[str, Any] | None = None,
    ) -> RenderedPrompt:
        """The prompt for `messages`, with the tools `tool_choice` leaves (see offered_tools).

        Raises Unsupported for tools on a model whose template has none, or for non-text
        parts; InvalidRequest when the template refuses the messages."""
        offered = offered_tools(tools, tool_choice)
        if offered and not self.supports_tools:
            raise Unsupported(
                f"the model {self.model_id} has no tool-calling chat template", param="tools"
            )
        convert = template_messages if self.supports_tools else _text_chat
        chat = convert(messages)
        try:
            result = self._formatter(
                messages=chat,
                tools=offered or None,
                tool_choice=_plain(tool_choice) if offered else None,
            )
        except self._errors as exc:
            raise InvalidRequest(
                f"the chat template refused the messages: {exc}", param="messages"
            ) from exc
        stop = result.stop
        stops = () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
        return RenderedPrompt(
            text=str(result.prompt),
            added_special=bool(result.added_special),
            stop=tuple(str(s) for s in stops),
            tools=bool(offered),
        )
