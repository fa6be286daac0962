"""OpenAI Chat Completions wire models.

Requests are validated strictly where the OpenAI API is strict (types, ranges, roles, required
fields, rules between fields) and leniently elsewhere: unknown fields are kept, so they can be
forwarded to a remote backend. Every rule the server enforces is also in the OpenAPI schema (the
rules between fields as `anyOf`s; the strategy names and options from the strategy registry, by
`ponder.protocol_schema`), so a request the schema allows is accepted and one it forbids is a 400.
Responses are built as plain dicts by `ponder.proxy.convert` for speed; the response models here
document the shape in the OpenAPI schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ponder.protocol_schema import Open, absent_or, approach_schema, ponder_schema, present, whole

# ---- content parts -----------------------------------------------------------------------


class TextPart(Open):
    type: Literal["text"]
    text: str


class ImageURL(Open):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Open):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(Open):
    data: str
    format: str


class AudioPart(Open):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FilePart(Open):
    type: Literal["file"]
    file: dict[str, Any]


class RefusalPart(Open):
    type: Literal["refusal"]
    refusal: str


UserPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


# ---- messages ----------------------------------------------------------------------------


class FunctionCall(Open):
    name: str
    arguments: str


class ToolCall(Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(Open):
    role: Literal["system"]
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(Open):
    role: Literal["developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(Open):
    role: Literal["user"]
    content: str | list[UserPart]
    name: str | None = None


class AssistantMessage(Open):
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                present("content", {"type": ["string", "array"]}),
                present("tool_calls", {"type": "array", "minItems": 1}),
                present("function_call", {"type": "object"}),
            ]
        }
    )

    role: Literal["assistant"]
    content: str | list[AssistantPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None

    @model_validator(mode="after")
    def _has_something(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls and self.function_call is None:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class ToolMessage(Open):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


ChatMessage = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage,
    Field(discriminator="role"),
]


# ---- tools -------------------------------------------------------------------------------


class FunctionDefinition(Open):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Open):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Open):
    name: str


class NamedToolChoice(Open):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(Open):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class ResponseFormat(Open):
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"properties": {"type": {"enum": ["text", "json_object"]}}},
                present("json_schema", {"type": "object"}),
            ]
        }
    )

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("a json_schema format needs its json_schema object")
        return self


# ---- the request -------------------------------------------------------------------------


class ChatCompletionRequest(Open):
    """POST /v1/chat/completions. Unknown fields are accepted and forwarded."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {
                    "anyOf": [
                        absent_or("top_logprobs"),
                        present("logprobs", {"const": True}),
                    ]
                },
                {
                    "anyOf": [
                        absent_or("stream_options"),
                        present("stream", {"const": True}),
                    ]
                },
                {
                    "anyOf": [
                        absent_or("tool_choice", {"const": "none"}),
                        present("tools", {"type": "array", "minItems": 1}),
                    ]
                },
            ]
        }
    )

    model: str = Field(
        min_length=1,
        description="A backend model, or `<strategies>-<model>`: strategies joined by `&` (one "
        "after the other) or `|` (side by side), never both.",
        # Only a prefix that mixes '&' and '|' is refused (400, by `resolve`, which says why);
        # an unknown name is a 404.
        json_schema_extra={"pattern": r"^(?:[^-]*|[^&-]*-[\s\S]+|[^|-]*-[\s\S]+|[^-]*-)$"},
    )
    messages: list[ChatMessage] = Field(min_length=1)
    n: int = Field(1, ge=1, le=128)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = Field(
        None,
        json_schema_extra={
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "maxItems": 4},
                {"type": "null"},
            ]
        },
    )
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
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

    @field_validator(
        "n", "max_tokens", "max_completion_tokens", "seed", "top_logprobs", mode="before"
    )
    @classmethod
    def _whole(cls, value: object) -> object:
        return whole(value)

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise ValueError("tool_choice requires tools")
        return self


# ---- responses (documentation of the shape; built as dicts at run time) -------------------


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = None


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"]
    logprobs: dict[str, Any] | None = None


class UsageModel(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: UsageModel
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# ---- /v1/ponder responses ------------------------------------------------------------------


class SplStrategy(BaseModel):
    object: Literal["ponder.spl.strategy"] = "ponder.spl.strategy"
    id: int
    problem_type: str
    status: Literal["candidate", "active", "retired"]
    origin: str = Field(description="starter, learned, imported, refined or merged")
    parent_id: int | None = Field(
        None, description="The strategy this one was refined or merged from"
    )
    version: int
    attempts: int
    successes: int
    success_rate: float | None
    text: str
    created_at: str = Field(description="ISO 8601, UTC")
    updated_at: str = Field(description="ISO 8601, UTC")


class SplStrategyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SplStrategy]


class FeedbackResult(BaseModel):
    request_id: str
    applied: bool = Field(description="False when a better signal had decided the outcome")
    outcome: bool | None
    source: Literal["ground_truth", "feedback", "judge"] | None
    promoted: list[int] = Field(description="Strategies promoted to active by this outcome")
    retired: list[int] = Field(description="Strategies retired by this outcome")
    episodes: int = Field(description="Memory episodes that took the feedback")
