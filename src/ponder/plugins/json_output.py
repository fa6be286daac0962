"""What the `json` plugin checks: the JSON schema a request asks for (`response_format`, or the
plugin's `schema` option), the JSON document in a model's answer, and whether it validates.

An answer's document is looked for in order: the whole answer, the blocks between code fences,
then the JSON objects and arrays written inside prose. The first that validates is the answer;
when none does, the problem names where and which rule (`$.items[0].kind: 'x' is not one of
['a', 'b'] (rule: enum)`), so that a repair prompt and the client's error can both say it.

Schemas are checked with `jsonschema` before any backend call; a reference outside the schema
(`$ref` to a URL or a file) is refused: Ponder fetches no schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing.exceptions import Unresolvable

from ponder.errors import InvalidRequest

OBJECT_SCHEMA: Mapping[str, Any] = {"type": "object"}
"""What `{"type": "json_object"}` asks for: one JSON object."""
DEFAULT_NAME = "response"
"""The name of a schema given as the plugin's option, when the backend is sent it."""
MAX_STARTS = 32
"""Most places in an answer's prose where a JSON document is looked for."""
MAX_PROBLEM_CHARS = 500
"""A validation error's message is cut to this length (it may quote a large document)."""

_FENCE = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)
_REFS = frozenset({"$ref", "$dynamicRef"})


@dataclass(frozen=True, slots=True)
class JsonTarget:
    """The JSON a request asks for."""

    schema: Mapping[str, Any]
    """What the answer must validate against (`OBJECT_SCHEMA` for json_object)."""
    name: str | None
    """The schema's name; None for json_object."""
    response_format: Mapping[str, Any]
    """The `response_format` that asks a constraining backend for it."""

    def validator(self) -> Validator:
        cls = validator_for(self.schema, default=Draft202012Validator)
        return cls(self.schema)


@dataclass(frozen=True, slots=True)
class Checked:
    """An answer, checked: the JSON document's text when one validates, else why not."""

    document: str | None
    problem: str | None = None


def target(
    response_format: Mapping[str, Any] | None, option: Mapping[str, Any] | None
) -> JsonTarget:
    """The JSON the request asks for: the client's `response_format`, or the schema given as
    the plugin's option (which must then agree with it), or any JSON object when neither says.
    A 400 naming the field when the format or the schema cannot be used."""
    kind = (response_format or {}).get("type")
    if kind == "text":
        raise InvalidRequest(
            "the json plugin makes the answer JSON: response_format must be json_object or "
            "json_schema (or be left out)",
            param="response_format",
        )
    given: Mapping[str, Any] | None = None
    name: str | None = None
    if kind == "json_schema":
        assert response_format is not None
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping):
            raise InvalidRequest(
                "response_format.json_schema must be an object with the schema",
                param="response_format.json_schema",
            )
        raw_name = spec.get("name")
        name = raw_name if isinstance(raw_name, str) and raw_name else DEFAULT_NAME
        given = checked_schema(spec.get("schema", {}), "response_format.json_schema.schema")
    if option is not None:
        if given is not None and dict(given) != dict(option):
            raise InvalidRequest(
                "ponder.json.schema and response_format.json_schema.schema differ: give the "
                "schema once",
                param="ponder.json.schema",
            )
        schema = checked_schema(option, "ponder.json.schema")
        fmt = response_format if response_format and given is not None else None
        fmt = fmt or as_format(schema, DEFAULT_NAME)
        return JsonTarget(schema, name or DEFAULT_NAME, fmt)
    if given is not None:
        assert response_format is not None
        return JsonTarget(given, name, response_format)
    return JsonTarget(OBJECT_SCHEMA, None, {"type": "json_object"})


def as_format(schema: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": dict(schema)}}


def checked_schema(schema: object, param: str) -> dict[str, Any]:
    """`schema` when it is a valid JSON schema whose references stay inside it; else a 400
    naming `param` and saying where the schema is wrong."""
    if not isinstance(schema, Mapping):
        raise InvalidRequest(f"{param} must be a JSON schema object", param=param)
    schema = dict(schema)
    if not isinstance(schema.get("$schema", ""), str):
        raise InvalidRequest(f"{param}: $schema must be a string (a URI)", param=param)
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise InvalidRequest(
            f"{param} is not a valid JSON schema: at {exc.json_path}: {_cut(exc.message)} "
            f"(rule: {exc.validator})",
            param=param,
        ) from None
    bad = next(_bad_refs(schema, schema, "$"), None)
    if bad is not None:
        where, ref, why = bad
        raise InvalidRequest(
            f"{param}: the reference {ref!r} at {where} {why}; only references within the "
            "schema ('#/$defs/...') are followed",
            param=param,
        )
    try:  # a reference that leads back to itself shows on any document
        validator = cls(schema)
        probes: tuple[Any, ...] = (None, {}, [])
        for probe in probes:
            best_match(validator.iter_errors(probe))
    except (RecursionError, Unresolvable) as exc:
        raise InvalidRequest(
            f"{param}: the schema's references cannot be followed: {type(exc).__name__}",
            param=param,
        ) from None
    return schema


def _bad_refs(root: Mapping[str, Any], node: object, where: str) -> Iterator[tuple[str, str, str]]:
    """(where, reference, why) of each reference that leads outside the schema or nowhere."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key in _REFS and isinstance(value, str):
                if not value.startswith("#"):
                    yield f"{where}.{key}", value, "points outside the schema"
                elif value.startswith("#/") and not _resolves(root, value[2:]):
                    yield f"{where}.{key}", value, "points to nothing in the schema"
            yield from _bad_refs(root, value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _bad_refs(root, value, f"{where}[{i}]")


def _resolves(root: object, pointer: str) -> bool:
    """Whether the JSON pointer (without its leading "#/") leads somewhere in `root`."""
    node = root
    for raw in pointer.split("/"):
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def check(answer: str | None, validator: Validator) -> Checked:
    """The JSON document of `answer` that validates, or the problem with the first document
    found (or with the answer as JSON, when it holds none)."""
    if answer is None or not answer.strip():
        return Checked(None, "the answer is empty")
    first_problem: str | None = None
    for text, value in documents(answer):
        problem = problem_of(value, validator)
        if problem is None:
            return Checked(text)
        first_problem = first_problem or problem
    if first_problem is not None:
        return Checked(None, first_problem)
    try:
        json.loads(answer)
    except json.JSONDecodeError as exc:
        return Checked(
            None, f"the answer is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        )
    except RecursionError:
        pass
    return Checked(None, "the answer is not JSON: it nests too deeply")


def problem_of(value: Any, validator: Validator) -> str | None:
    """Why `value` does not validate (the most relevant error), or None when it does."""
    try:
        error = best_match(validator.iter_errors(value))
    except (RecursionError, Unresolvable) as exc:
        raise InvalidRequest(
            f"the JSON schema's references cannot be followed: {type(exc).__name__}",
            param="response_format",
        ) from None
    if error is None:
        return None
    return f"at {error.json_path}: {_cut(error.message)} (rule: {error.validator})"


def documents(answer: str) -> Iterator[tuple[str, Any]]:
    """The JSON documents in `answer` with their values: the whole answer, each fenced block,
    then each object or array written in the text (at most `MAX_STARTS` tried)."""
    whole = answer.strip()
    parsed = _loads(whole)
    if parsed is not None:
        yield parsed
    for block in _FENCE.finditer(answer):
        parsed = _loads(block.group(1).strip())
        if parsed is not None:
            yield parsed
    decoder = json.JSONDecoder()
    position, tries = 0, 0
    while tries < MAX_STARTS:
        starts = [i for i in (answer.find("{", position), answer.find("[", position)) if i >= 0]
        if not starts:
            return
        start = min(starts)
        tries += 1
        try:
            value, end = decoder.raw_decode(answer, start)
        except (json.JSONDecodeError, RecursionError):
            position = start + 1
            continue
        text = answer[start:end]
        if text != whole:
            yield text, value
        position = end


def _loads(text: str) -> tuple[str, Any] | None:
    try:
        return text, json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


def _cut(text: str) -> str:
    return text if len(text) <= MAX_PROBLEM_CHARS else text[: MAX_PROBLEM_CHARS - 4] + " ..."
