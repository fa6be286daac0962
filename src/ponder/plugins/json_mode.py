"""`json`, a plugin: the request's `response_format` made to hold. The answer the client gets
is one JSON document that validates against the request's schema, or the request fails with
an error that says where the document breaks which rule.

The schema comes from `response_format` (`json_schema`, or `json_object`: any JSON object), or
from the option `schema` when the client cannot send `response_format`; with neither, the
answer must be a JSON object. A schema that is not valid JSON Schema, or that refers outside
itself, is a 400 before any backend call.

- A backend that constrains decoding (`Capabilities.json_schema`: the embedded engine turns the
  schema into a grammar, vLLM into its structured outputs) is sent the `response_format`, and
  the conversation as it is.
- Any other backend is sent the client's sampling unchanged (an upstream may honour the
  client's `response_format`), and the schema as an instruction after the system prompt.

Either way every choice of the rest of the route is checked: its JSON is taken from the whole
answer, a code fence or the surrounding prose, and validated with `jsonschema`. A choice that
does not validate is repaired: the model is shown its answer and the exact validation error
and asked for the corrected JSON only, at most `max_repairs` times (each an ordinary metered
call, traced as `json_repair`); then the request fails (502, code `json_validation_failed`).
Choices that call tools pass through unchecked: they are not the answer yet.

Streaming: the answer is never streamed before it validates. The rest of the route runs with
its answer held back (its reasoning still streams), and the validated document is sent whole.
This holds on constraining backends too: a grammar does not stop an answer cut off at
`max_tokens`, nor enforce every rule of JSON Schema (bounds such as `minimum` are not in it).

Around `sc` (`json&sc-model`): every sample is asked for the JSON, sc votes as it always does
(on each sample's final answer: the last number the document holds, else its whole text), and
the winning sample is checked and, if need be, repaired.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar, Literal

from jsonschema.protocols import Validator
from pydantic import Field, field_validator

from ponder.errors import BackendError
from ponder.plugins.base import Inner, reasoning_only
from ponder.plugins.json_output import Checked, JsonTarget, check, checked_schema, target
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import followup, preview, with_system
from ponder.strategies.context import RequestContext, gather
from ponder.types import Completion, Message, Sampling

SCHEMA_INSTRUCTION = (
    "Answer with one JSON document only: no text before or after it and no code fences. "
    "It must validate against this JSON schema:\n{schema}"
)
OBJECT_INSTRUCTION = (
    "Answer with one JSON object only: no text before or after it and no code fences."
)
REPAIR_REQUEST = (
    "Your answer does not validate: {problem}. Reply with the corrected JSON only: one JSON "
    "document, no text before or after it and no code fences."
)


class JsonConfig(StrategyConfig):
    schema_: dict[str, Any] | None = Field(
        None,
        alias="schema",
        description="The JSON schema the answer must validate against, when the request has "
        "no response_format of type json_schema (if it has one, the two must be equal)",
    )
    max_repairs: int = Field(
        2,
        ge=0,
        le=5,
        description="Most repair calls for a choice whose JSON does not validate, before the "
        "request fails",
    )

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            checked_schema(schema, "ponder.json.schema")
        return schema


class JsonMode:
    slug: ClassVar[str] = "json"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = JsonConfig
    wraps: ClassVar[Literal[True]] = True

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, JsonConfig)
        self.config = config

    async def run(
        self, ctx: RequestContext, messages: Sequence[Message], inner: Inner
    ) -> list[Completion]:
        wanted = target(ctx.sampling.response_format, self.config.schema_)
        validator = wanted.validator()
        constrained = ctx.backend.capabilities.json_schema
        if constrained:
            sampling = ctx.sampling.with_(response_format=wanted.response_format)
            prompt = list(messages)
        else:
            sampling = ctx.sampling
            prompt = with_system(messages, instruction(wanted))
        held = reasoning_only(ctx.sink) if ctx.sink is not None else None
        choices = await inner(replace(ctx, sampling=sampling, sink=held), prompt)

        calls = [
            self._valid(ctx.for_choice(ctx.choice_index + i), prompt, sampling, choice, validator)
            for i, choice in enumerate(choices)
        ]
        results = await gather(calls)
        ctx.step(
            "json",
            constrained=constrained,
            schema=wanted.name,
            repairs=[repairs for _, repairs in results],
        )
        return [choice for choice, _ in results]

    async def _valid(
        self,
        ctx: RequestContext,
        prompt: Sequence[Message],
        sampling: Sampling,
        choice: Completion,
        validator: Validator,
    ) -> tuple[Completion, int]:
        """The choice with its validated JSON as its content, and how many repairs it took."""
        if choice.tool_calls:
            return choice, 0
        current = choice
        checked = await _checked(choice.content, validator)
        repairs = 0
        while checked.problem is not None:
            problem = checked.problem
            if repairs == self.config.max_repairs:
                ctx.reason(f"JSON: still invalid after {_repairs(repairs)}: {problem}\n")
                raise BackendError(
                    f"the model's answer does not validate against the JSON schema after "
                    f"{_repairs(repairs)}: {problem}",
                    param="response_format",
                    code="json_validation_failed",
                )
            repairs += 1
            ctx.reason(f"JSON: {problem}; repair {repairs} of {self.config.max_repairs}.\n")
            ctx.step(
                "json_repair",
                choice=ctx.choice_index,
                attempt=repairs,
                problem=problem,
                answer=preview(current.content, 200),
            )
            asked = followup(prompt, current.content or "", REPAIR_REQUEST.format(problem=problem))
            (current,) = await ctx.complete(asked, sampling)
            checked = await _checked(current.content, validator)
        if repairs:
            ctx.reason(f"JSON: valid after {_repairs(repairs)}.\n")
        return replace(current, content=checked.document), repairs


async def _checked(answer: str | None, validator: Validator) -> Checked:
    """`check`, off the event loop: a schema's `pattern` runs a regular expression on what the
    model wrote, and a slow one must not stall every other request."""
    return await asyncio.to_thread(check, answer, validator)


def _repairs(count: int) -> str:
    return f"{count} repair{'' if count == 1 else 's'}"


def instruction(wanted: JsonTarget) -> str:
    """What a backend that does not constrain decoding is told about the JSON wanted."""
    if wanted.name is None:
        return OBJECT_INSTRUCTION
    return SCHEMA_INSTRUCTION.format(schema=json.dumps(wanted.schema, ensure_ascii=False))
