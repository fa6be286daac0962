"""What the wire protocols' request models share: the open base model, the helpers that write
rules between fields into the schema, and the parts of the schema that come from the strategy
registry (the strategy names of `optillm_approach`, the options under `ponder`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from ponder.strategies.registry import Registry


class Open(BaseModel):
    # strict: a value of another JSON type is refused, as OpenAI does ("2" is no integer, 1 no
    # boolean), so what the schema forbids is a 400 rather than quietly converted.
    model_config = ConfigDict(extra="allow", strict=True)


def absent_or(name: str, *allowed: dict[str, Any]) -> dict[str, Any]:
    """Schema: `name` is absent, null or matches one of `allowed`."""
    return {"properties": {name: {"anyOf": [{"type": "null"}, *allowed]}}}


def present(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """Schema: `name` is given and matches `schema`."""
    return {"required": [name], "properties": {name: schema}}


def whole(value: object) -> object:
    """4.0 -> 4: JSON Schema counts 4.0 as an integer (4.5, "4" and true stay refused)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# ---- `ponder` and `optillm_approach`: the flags, and what the strategy registry gives -----


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


def approach_schema(schema: dict[str, Any]) -> None:
    """`optillm_approach` (`approach_pattern`), or null."""
    pattern = approach_pattern(side_by_side=True)
    schema["anyOf"] = [{"type": "string", "pattern": pattern}, {"type": "null"}]


def one_answer_approach_schema(schema: dict[str, Any]) -> None:
    """`optillm_approach` less strategies side by side (where a reply holds one answer), or
    null."""
    pattern = approach_pattern(side_by_side=False)
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


def ponder_schema(schema: dict[str, Any]) -> None:
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
