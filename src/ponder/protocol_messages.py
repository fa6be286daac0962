"""Anthropic Messages API wire models (`POST /v1/messages`, `POST /v1/messages/count_tokens`).

The same conventions as `ponder.protocol`: strict types (a value of another JSON type is a 400),
unknown fields accepted, and every rule the server enforces stated in the OpenAPI schema. Block
types Ponder cannot pass on (documents, server tools, ...) are refused with a 400 rather than
dropped. `thinking` and `redacted_thinking` blocks in assistant turns are accepted and dropped:
their text was the model's own working, not part of the conversation. Responses are built as
dicts by `ponder.proxy.convert_messages`; the response models here document their shape.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ponder.protocol_schema import (
    Open,
    absent_or,
    one_answer_approach_schema,
    ponder_schema,
    present,
    whole,
)

# ---- content blocks ------------------------------------------------------------------------


class TextBlock(Open):
    type: Literal["text"]
    text: str


class Base64ImageSource(Open):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class URLImageSource(Open):
    type: Literal["url"]
    url: str


class ImageBlock(Open):
    type: Literal["image"]
    source: Annotated[Base64ImageSource | URLImageSource, Field(discriminator="type")]


class ToolUseBlock(Open):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


ToolResultPart = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class ToolResultBlock(Open):
    type: Literal["tool_result"]
    tool_use_id: str
    content: list[ToolResultPart] | str | None = None
    is_error: bool | None = None


class ThinkingBlock(Open):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(Open):
    type: Literal["redacted_thinking"]
    data: str


UserBlock = Annotated[TextBlock | ImageBlock | ToolResultBlock, Field(discriminator="type")]
AssistantBlock = Annotated[
    TextBlock | ToolUseBlock | ThinkingBlock | RedactedThinkingBlock, Field(discriminator="type")
]


# ---- turns -----------------------------------------------------------------------------------


class UserTurn(Open):
    role: Literal["user"]
    content: list[UserBlock] | str


class AssistantTurn(Open):
    role: Literal["assistant"]
    content: list[AssistantBlock] | str


class SystemTurn(Open):
    """A system message among the turns (where the top-level `system` is not enough)."""

    role: Literal["system"]
    content: list[TextBlock] | str


Turn = Annotated[UserTurn | AssistantTurn | SystemTurn, Field(discriminator="role")]


# ---- tools, thinking, metadata -----------------------------------------------------------------


class CustomTool(Open):
    """A client tool. Server tools (typed `web_search_...`, `bash_...`) are not offered."""

    type: Literal["custom"] | None = None
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any]


class ToolChoiceAuto(Open):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(Open):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(Open):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(Open):
    type: Literal["none"]


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")
]


class ThinkingEnabled(Open):
    type: Literal["enabled"]
    budget_tokens: int = Field(ge=1024)

    @field_validator("budget_tokens", mode="before")
    @classmethod
    def _whole_budget(cls, value: object) -> object:
        return whole(value)


class ThinkingDisabled(Open):
    type: Literal["disabled"]


class ThinkingAdaptive(Open):
    type: Literal["adaptive"]


Thinking = Annotated[
    ThinkingEnabled | ThinkingDisabled | ThinkingAdaptive, Field(discriminator="type")
]


class RequestMetadata(Open):
    user_id: str | None = None


# ---- rules between fields, and the strategy names ----------------------------------------------

MODEL_PATTERN = r"^(?:[^-]*|[^-]*-|[^|-]*-[\s\S]+)$"
"""A backend model, or `<strategies>-<model>` with strategies joined by `&` only: a route of
strategies side by side (`|`) gives several answers, and a message holds one. (A name without a
model after its dash, or without a dash, is a model name like any other.)"""


_TOOLS_FOR_CHOICE: dict[str, Any] = {
    "anyOf": [
        absent_or("tool_choice", {"type": "object", "properties": {"type": {"const": "none"}}}),
        present("tools", {"type": "array", "minItems": 1}),
    ]
}
"""Schema: a `tool_choice` other than `none` needs tools."""

_MODEL_NAMES_A_ROUTE: dict[str, Any] = {
    "anyOf": [
        present("optillm_approach", {"type": "string", "minLength": 1}),
        {"properties": {"model": {"pattern": MODEL_PATTERN}}},
    ]
}
"""Schema: the model name's prefix names the route unless `optillm_approach` does."""


_ASKS: dict[str, Any] = {
    "properties": {
        "role": {"const": "user"},
        "content": {
            "not": {
                "type": "array",
                "items": {"properties": {"type": {"const": "tool_result"}}},
            }
        },
    }
}
"""Schema: a user turn that asks something (not empty, not only tool results): the question
that strategies and plugins look for."""


def _asks(turn: Turn) -> bool:
    if not isinstance(turn, UserTurn):
        return False
    content = turn.content
    return isinstance(content, str) or not all(isinstance(b, ToolResultBlock) for b in content)


_ONE_ANSWER = "runs strategies side by side ('|'), which give several answers: a message holds one"


def _check_route_fields(
    model: str, approach: str | None, tools: list[CustomTool] | None, choice: object
) -> None:
    if approach and "|" in approach:
        raise ValueError(f"optillm_approach {approach!r} {_ONE_ANSWER}")
    if not approach and not re.fullmatch(MODEL_PATTERN, model):
        raise ValueError(f"the model {model!r} {_ONE_ANSWER}")
    if choice is not None and not isinstance(choice, ToolChoiceNone) and not tools:
        raise ValueError("tool_choice requires tools")


# ---- the requests ------------------------------------------------------------------------------


class Prompt(Open):
    """What `/v1/messages` and `/v1/messages/count_tokens` share: the route and the prompt."""

    model_config = ConfigDict(
        json_schema_extra={"allOf": [_TOOLS_FOR_CHOICE, _MODEL_NAMES_A_ROUTE]}
    )

    model: str = Field(
        min_length=1,
        description="A backend model, or `<strategies>-<model>`: strategies joined by `&`.",
    )
    messages: list[Turn] = Field(
        min_length=1,
        description="The conversation: at least one user turn with more than tool results",
        json_schema_extra={"contains": _ASKS},
    )
    system: list[TextBlock] | str | None = None
    tools: list[CustomTool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    optillm_approach: str | None = Field(
        None,
        description="Strategies to run, as an alternative to the model-name prefix: names "
        "joined by `&`. Empty: none given.",
        json_schema_extra=one_answer_approach_schema,
    )

    @model_validator(mode="after")
    def _consistent(self) -> Prompt:
        _check_route_fields(self.model, self.optillm_approach, self.tools, self.tool_choice)
        if not any(_asks(turn) for turn in self.messages):
            raise ValueError("messages need a user turn with more than tool results")
        return self


class CountTokensRequest(Prompt):
    """POST /v1/messages/count_tokens. Unknown fields are accepted and ignored."""


class MessagesRequest(Prompt):
    """POST /v1/messages. Unknown fields are accepted and ignored."""

    max_tokens: int = Field(ge=1)
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stop_sequences: list[str] | None = None
    stream: bool | None = False
    metadata: RequestMetadata | None = None
    ponder: dict[str, Any] | None = Field(
        None,
        description='Per-request options: flags, limits and strategy options {"<slug>": {...}}.',
        json_schema_extra=ponder_schema,
    )

    @field_validator("max_tokens", "top_k", mode="before")
    @classmethod
    def _whole_tokens(cls, value: object) -> object:
        return whole(value)


# ---- responses (documentation of the shape; built as dicts at run time) ---------------------


class OutputTextBlock(BaseModel):
    type: Literal["text"]
    text: str


class OutputThinkingBlock(BaseModel):
    """The strategy's working (and the backend's own reasoning); `signature` is empty."""

    type: Literal["thinking"]
    thinking: str
    signature: str


class OutputToolUseBlock(BaseModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


OutputBlock = Annotated[
    OutputTextBlock | OutputThinkingBlock | OutputToolUseBlock, Field(discriminator="type")
]


class MessagesTokenDetails(BaseModel):
    thinking_tokens: int = Field(
        description="The output tokens of every backend call but the answer's own"
    )


class MessagesUsage(BaseModel):
    input_tokens: int = Field(description="Prompt tokens of every backend call, less cache reads")
    output_tokens: int = Field(description="Output tokens of every backend call")
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    output_tokens_details: MessagesTokenDetails


class MessagesResponse(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[OutputBlock]
    stop_reason: Literal["end_turn", "max_tokens", "tool_use", "refusal"]
    stop_sequence: str | None
    usage: MessagesUsage
    ponder: dict[str, Any] | None = Field(
        None, description='`{"trace": [...]}` when the request asked for `ponder.trace`'
    )


class TokenCount(BaseModel):
    input_tokens: int


class MessagesErrorDetail(BaseModel):
    type: str
    message: str


class MessagesError(BaseModel):
    type: Literal["error"] = "error"
    error: MessagesErrorDetail
