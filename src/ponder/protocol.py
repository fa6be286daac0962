"""OpenAI Chat Completions wire models.

Requests are validated strictly where the OpenAI API is strict (types, ranges, roles, required
fields, rules between fields) and leniently elsewhere: unknown fields are kept, so they can be
forwarded to a remote backend. Every rule the server enforces is also in the OpenAPI schema (the
rules between fields as `anyOf`s; the strategy names and options from the strategy registry), so a
request the schema allows is accepted and one it forbids is a 400.
Responses are built as plain dicts by `ponder.proxy.convert` for speed; the response models here
document the shape in the OpenAPI schema.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from ponder.strategies.registry import Registry


class _Open(BaseModel):
    # strict: a value of another JSON type is refused, as OpenAI does ("2" is no integer, 1 no
    # boolean), so what the schema forbids is a 400 rather than quietly converted.
    model_config = ConfigDict(extra="allow", strict=True)


def _absent_or(name: str, *allowed: dict[str, Any]) -> dict[str, Any]:
    """Schema: `name` is absent, null or matches one of `allowed`."""
    return {"properties": {name: {"anyOf": [{"type": "null"}, *allowed]}}}


def _present(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """Schema: `name` is given and matches `schema`."""
    return {"required": [name], "properties": {name: schema}}


# ---- content parts -----------------------------------------------------------------------


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImageURL(_Open):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Open):
    data: str
    format: str


class AudioPart(_Open):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FilePart(_Open):
    type: Literal["file"]
    file: dict[str, Any]


class RefusalPart(_Open):
    type: Literal["refusal"]
    refusal: str


UserPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


# ---- messages ----------------------------------------------------------------------------


class FunctionCall(_Open):
    name: str
    arguments: str


class ToolCall(_Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Open):
    role: Literal["system"]
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(_Open):
    role: Literal["developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(_Open):
    role: Literal["user"]
    content: str | list[UserPart]
    name: str | None = None


class AssistantMessage(_Open):
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                _present("content", {"type": ["string", "array"]}),
                _present("tool_calls", {"type": "array", "minItems": 1}),
                _present("function_call", {"type": "object"}),
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


class ToolMessage(_Open):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


ChatMessage = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage,
    Field(discriminator="role"),
]


# ---- tools -------------------------------------------------------------------------------


class FunctionDefinition(_Open):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Open):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Open):
    name: str


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Open):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class ResponseFormat(_Open):
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"properties": {"type": {"enum": ["text", "json_object"]}}},
                _present("json_schema", {"type": "object"}),
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


# ---- the parts of the request schema that come from the strategy registry ----------------

PONDER_FLAGS: dict[str, dict[str, Any]] = {
    "trace": {"type": "boolean", "description": "Return the strategy's steps in `ponder.trace`"},
    "reasoning": {
        "type": "boolean",
        "description": "Stream the strategy's working as reasoning (default true)",
    },
    "max_backend_calls": {
        "type": "integer",
        "minimum": 1,
        "description": "Fewer backend calls than the server allows",
    },
    "deadline_s": {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": "A shorter deadline than the server's, in seconds (504 past it)",
    },
}
"""The `ponder` keys that are not strategies (`ChatService.options` checks them)."""


@cache
def _registry() -> Registry:
    # Imported when the schema is first built: the registry pulls in every strategy, which the
    # wire models do not otherwise need. The default registry is what `create_app` serves.
    from ponder.strategies.registry import default_registry

    return default_registry()


def _names(registry: Registry) -> dict[str, str]:
    """Every name a client may give a strategy (slugs and aliases) -> its slug."""
    return {
        name: slug for slug in registry.slugs for name in (slug, *registry.factory(slug).aliases)
    }


def approach_pattern(*, side_by_side: bool) -> str:
    """The pattern of `optillm_approach`: plugins first, joined by `&`, around strategies
    joined by `&` (or a plugin that picks the strategy itself, last); with `side_by_side`, or
    strategies joined by `|`; or `auto` (the model name decides); or empty."""
    from ponder.strategies.resolve import AUTO

    registry = _registry()
    names = _names(registry)

    def either(kind: Callable[[str], bool]) -> str:
        chosen = sorted((n for n, slug in names.items() if kind(slug)), key=len, reverse=True)
        return "|".join(re.escape(n) for n in chosen) or "(?!)"

    def picks(slug: str) -> bool:
        return bool(getattr(registry.factory(slug), "picks_strategy", False))

    strategy = either(lambda slug: not registry.is_plugin(slug))
    plugin = either(lambda slug: registry.is_plugin(slug) and not picks(slug))
    picker = either(lambda slug: registry.is_plugin(slug) and picks(slug))
    chain = rf"(?:(?:{plugin})&)*(?:(?:{picker})|(?:{plugin})|(?:{strategy})(?:&(?:{strategy}))*)"
    if side_by_side:
        return rf"^(?:{AUTO}|{chain}|(?:{strategy})(?:\|(?:{strategy}))*)?$"
    return rf"^(?:{AUTO}|{chain})?$"


def _approach_schema(schema: dict[str, Any]) -> None:
    """`optillm_approach` (`approach_pattern`), or null."""
    pattern = approach_pattern(side_by_side=True)
    schema["anyOf"] = [{"type": "string", "pattern": pattern}, {"type": "null"}]


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """`schema` with its `$ref`s into `defs` replaced by what they name."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def _ponder_schema(schema: dict[str, Any]) -> None:
    """`ponder`: the flags and limits, and each strategy's options as its Config has them."""
    registry = _registry()
    names = _names(registry)
    properties = dict(PONDER_FLAGS)
    for name, slug in names.items():
        config = registry.factory(slug).Config.model_json_schema()
        properties[name] = _inline(config, config.get("$defs", {}))
    options: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    # A strategy's options go under one of its names only.
    twice = [{"required": [a, b]} for a in names for b in names if a < b and names[a] == names[b]]
    if twice:
        options["not"] = {"anyOf": twice}
    schema["anyOf"] = [options, {"type": "null"}]


# ---- the request -------------------------------------------------------------------------


class ChatCompletionRequest(_Open):
    """POST /v1/chat/completions. Unknown fields are accepted and forwarded."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {
                    "anyOf": [
                        _absent_or("top_logprobs"),
                        _present("logprobs", {"const": True}),
                    ]
                },
                {
                    "anyOf": [
                        _absent_or("stream_options"),
                        _present("stream", {"const": True}),
                    ]
                },
                {
                    "anyOf": [
                        _absent_or("tool_choice", {"const": "none"}),
                        _present("tools", {"type": "array", "minItems": 1}),
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
        json_schema_extra=_approach_schema,
    )
    ponder: dict[str, Any] | None = Field(
        None,
        description='Per-request options: flags, limits and strategy options {"<slug>": {...}}.',
        json_schema_extra=_ponder_schema,
    )

    @field_validator(
        "n", "max_tokens", "max_completion_tokens", "seed", "top_logprobs", mode="before"
    )
    @classmethod
    def _whole(cls, value: object) -> object:
        """4.0 -> 4: JSON Schema counts 4.0 as an integer (4.5, "4" and true stay refused)."""
        return int(value) if isinstance(value, float) and value.is_integer() else value

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
