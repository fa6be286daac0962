"""OpenAI Responses API wire models (`POST /v1/responses`).

Validated as strictly as the Chat Completions models in `ponder.protocol` (types, ranges, the
rules between fields, all in the OpenAPI schema too); unknown fields are accepted and ignored
(a Responses field means nothing to a Chat Completions backend, so none is forwarded). What
Ponder cannot do is refused with a 400 that says so: tools other than functions, images by
file id, files, and the Conversations and prompt-template features.
Responses are built as plain dicts by `ponder.proxy.convert_responses`; the response models
here document their shape.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from ponder.protocol import FunctionDefinition
from ponder.protocol_schema import (
    Open,
    absent_or,
    approach_schema,
    ponder_schema,
    present,
    whole,
)

MAX_MODEL = 256
"""The longest model name a stored response keeps."""


# ---- input content parts -----------------------------------------------------------------


class InputText(Open):
    type: Literal["input_text"]
    text: str


class InputImage(Open):
    type: Literal["input_image"]
    image_url: str = Field(description="A URL or a `data:` URL of the image")
    detail: Literal["auto", "low", "high"] | None = None
    file_id: None = Field(None, description="Not supported: Ponder has no file store (400)")

    @field_validator("file_id", mode="before")
    @classmethod
    def _no_file_ids(cls, value: object) -> object:
        if value is not None:
            raise ValueError(
                "images by file_id are not supported (Ponder has no file store): "
                "send the image as image_url"
            )
        return value


class OutputText(Open):
    type: Literal["output_text"]
    text: str
    annotations: list[Any] | None = None


class Refusal(Open):
    type: Literal["refusal"]
    refusal: str


# Unions are told apart by a tag in parentheses, which an error's location leaves out
# (`ponder.proxy.errors.param_of`), so that it names the field: `input[0].content[1].file_id`.


def _typed(value: Any) -> Any:
    """The tag of a part or item: its `type`; "message" for an item without one."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return f"({kind or 'message'})" if kind is None or isinstance(kind, str) else None


def _text_or_list(value: Any) -> str:
    return "(text)" if isinstance(value, str) else "(list)"


ContentPart = Annotated[
    Annotated[InputText, Tag("(input_text)")]
    | Annotated[InputImage, Tag("(input_image)")]
    | Annotated[OutputText, Tag("(output_text)")]
    | Annotated[Refusal, Tag("(refusal)")],
    Discriminator(
        _typed,
        custom_error_type="invalid_content_part",
        custom_error_message="a content part's type must be input_text, input_image, "
        "output_text or refusal (input_file is not supported)",
    ),
]

ToolOutputPart = Annotated[
    Annotated[InputText, Tag("(input_text)")] | Annotated[InputImage, Tag("(input_image)")],
    Discriminator(
        _typed,
        custom_error_type="invalid_content_part",
        custom_error_message="a function call output part's type must be input_text or input_image",
    ),
]

Content = Annotated[
    Annotated[str, Tag("(text)")] | Annotated[list[ContentPart], Tag("(list)")],
    Discriminator(_text_or_list),
]
ToolOutput = Annotated[
    Annotated[str, Tag("(text)")] | Annotated[list[ToolOutputPart], Tag("(list)")],
    Discriminator(_text_or_list),
]


# ---- input items -------------------------------------------------------------------------


class MessageItem(Open):
    """A message: `{role, content}` as written by hand, or an output message passed back."""

    type: Literal["message"] | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: Content


class FunctionCallItem(Open):
    """A function call the model made (passed back with its output)."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputItem(Open):
    type: Literal["function_call_output"]
    call_id: str
    output: ToolOutput


class ReasoningItem(Open):
    """A reasoning item passed back: accepted and left out of the prompt."""

    type: Literal["reasoning"]


InputItem = Annotated[
    Annotated[MessageItem, Tag("(message)")]
    | Annotated[FunctionCallItem, Tag("(function_call)")]
    | Annotated[FunctionCallOutputItem, Tag("(function_call_output)")]
    | Annotated[ReasoningItem, Tag("(reasoning)")],
    Discriminator(
        _typed,
        custom_error_type="invalid_input_item",
        custom_error_message="an input item's type must be message, function_call, "
        "function_call_output or reasoning",
    ),
]
Input = Annotated[
    Annotated[str, Tag("(text)")] | Annotated[list[InputItem], Field(min_length=1), Tag("(list)")],
    Discriminator(_text_or_list),
]


# ---- tools, text format, reasoning --------------------------------------------------------


class FunctionTool(FunctionDefinition):
    """A function tool, flat: Chat Completions' function definition with its `type`."""

    type: Literal["function"]


class FunctionChoice(Open):
    type: Literal["function"]
    name: str


class TextFormatText(Open):
    type: Literal["text"]


class TextFormatJsonObject(Open):
    type: Literal["json_object"]


class TextFormatJsonSchema(Open):
    type: Literal["json_schema"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[
    Annotated[TextFormatText, Tag("(text)")]
    | Annotated[TextFormatJsonObject, Tag("(json_object)")]
    | Annotated[TextFormatJsonSchema, Tag("(json_schema)")],
    Discriminator(
        _typed,
        custom_error_type="invalid_text_format",
        custom_error_message="text.format's type must be text, json_object or json_schema",
    ),
]


class TextConfig(Open):
    format: TextFormat | None = None


class ReasoningConfig(Open):
    effort: str | None = Field(None, description="Forwarded to the backend as reasoning_effort")
    summary: Literal["auto", "concise", "detailed"] | None = None


# ---- the request -------------------------------------------------------------------------

_HOSTED_TOOLS_NOTE = "only function tools: Ponder runs no hosted tools"


class ResponseRequest(Open):
    """POST /v1/responses. Unknown fields are accepted and ignored."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {
                    "anyOf": [
                        absent_or("tool_choice", {"const": "none"}, {"const": "auto"}),
                        present("tools", {"type": "array", "minItems": 1}),
                    ]
                },
                {
                    "anyOf": [
                        absent_or("background", {"const": False}),
                        {"properties": {"store": {"anyOf": [{"type": "null"}, {"const": True}]}}},
                    ]
                },
                {
                    "anyOf": [
                        absent_or("background", {"const": False}),
                        absent_or("stream", {"const": False}),
                    ]
                },
            ]
        }
    )

    model: str = Field(
        min_length=1,
        max_length=MAX_MODEL,
        description="A backend model, or `<strategies>-<model>`: strategies joined by `&` (one "
        "after the other) or `|` (side by side), never both.",
        json_schema_extra={"pattern": r"^(?:[^-]*|[^&-]*-[\s\S]+|[^|-]*-[\s\S]+|[^-]*-)$"},
    )
    input: Input = Field(description="The user's text, or the items of the conversation so far")
    instructions: str | None = Field(
        None, description="A system message first (not carried over by previous_response_id)"
    )
    previous_response_id: str | None = Field(
        None, description="Continue the conversation of this stored response"
    )
    tools: list[FunctionTool] | None = Field(None, description=_HOSTED_TOOLS_NOTE)
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    reasoning: ReasoningConfig | None = None
    text: TextConfig | None = None
    store: bool | None = Field(True, description="Keep the response for GET and continuation")
    stream: bool | None = False
    background: bool | None = Field(
        False, description="Answer at once and run in the background (needs store)"
    )
    metadata: dict[str, str] | None = None
    user: str | None = None
    conversation: None = Field(None, description="Not supported (400)")
    prompt: None = Field(None, description="Not supported (400)")
    optillm_approach: str | None = Field(
        None,
        description="Strategies to run, as an alternative to the model-name prefix: names "
        "joined by `&` or `|` (not both). Empty: none given.",
        json_schema_extra=approach_schema,
    )
    ponder: dict[str, Any] | None = Field(
        None,
        description='Per-request options: flags, limits and strategy options {"<slug>": {...}}.',
        json_schema_extra=ponder_schema,
    )

    @field_validator("max_output_tokens", mode="before")
    @classmethod
    def _whole(cls, value: object) -> object:
        return whole(value)

    @field_validator("tools", mode="before")
    @classmethod
    def _functions_only(cls, value: object) -> object:
        if isinstance(value, list):
            for tool in value:
                kind = tool.get("type") if isinstance(tool, dict) else None
                if isinstance(kind, str) and kind != "function":
                    raise ValueError(
                        f"tools of type '{kind}' are not supported ({_HOSTED_TOOLS_NOTE})"
                    )
        return value

    @field_validator("conversation", "prompt", mode="before")
    @classmethod
    def _unsupported(cls, value: object) -> object:
        if value is not None:
            raise ValueError("not supported by Ponder: send the conversation as input items")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ResponseRequest:
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise ValueError("tool_choice requires tools")
        if self.background:
            if self.store is False:
                raise ValueError("background requires store to be true")
            if self.stream:
                raise ValueError("background responses cannot be streamed by Ponder")
        return self


# ---- responses (documentation of the shape; built as dicts at run time) -------------------


class OutputTextPart(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any]


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputTextPart]


class SummaryText(BaseModel):
    type: Literal["summary_text"] = "summary_text"
    text: str


class OutputReasoning(BaseModel):
    type: Literal["reasoning"] = "reasoning"
    id: str
    summary: list[SummaryText] = Field(description="The strategy's working")


class OutputFunctionCall(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = Annotated[
    OutputMessage | OutputReasoning | OutputFunctionCall, Field(discriminator="type")
]


class InputTokensDetails(BaseModel):
    cached_tokens: int


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = Field(description="Output tokens of every call but the answer's")


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseErrorDetail(BaseModel):
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: Literal["completed", "incomplete", "failed", "cancelled", "in_progress", "queued"]
    background: bool
    error: ResponseErrorDetail | None
    incomplete_details: IncompleteDetails | None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: dict[str, Any]
    store: bool = Field(description="Whether the response was stored")
    temperature: float | None
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    top_p: float | None
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None
    user: str | None
    metadata: dict[str, str]
    ponder: dict[str, Any] | None = Field(
        None, description='The strategy\'s steps, as `trace`, with `ponder: {"trace": true}`'
    )


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool
