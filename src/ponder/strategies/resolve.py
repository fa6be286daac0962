"""Model-name resolution: which strategies run, on which backend model.

A pure function of the name, the optional `optillm_approach` field (`auto`: the name decides)
and the set of known slugs:

    smollm2-135m          -> none on smollm2-135m
    none-smollm2-135m     -> none on smollm2-135m
    sc-gpt-4o             -> sc on gpt-4o
    sc&refine-m           -> sc, then refine on its answer ("pipeline")
    sc|tot-m              -> sc and tot side by side, one choice each ("parallel")
    readurls&sc-m         -> the plugin readurls around sc
    readurls-m            -> readurls around none

Plugins come first in an "&" chain, each around the rest; a plugin after a strategy, or in a
"|" route, is a 400 that says why.

The approach may also be named inside the conversation, as clients of other proxies do: an
`<optillm_approach>sc</optillm_approach>` tag in a system (or developer) message, else in a user
message (`approach_in_prompt`). The first tag found decides, over the `optillm_approach` field,
and the message it was in goes on without its tags.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import takewhile
from typing import Literal

from ponder.errors import InvalidRequest, UnknownModel
from ponder.types import Message

Mode = Literal["single", "pipeline", "parallel"]


AUTO = "auto"
"""The `optillm_approach` that leaves the route to the model name (the default elsewhere)."""
_TAG = re.compile(r"<optillm_approach>(.*?)</optillm_approach>", re.DOTALL)
_OPENING = "<optillm_approach>"


@dataclass(frozen=True, slots=True)
class Route:
    model: str
    slugs: tuple[str, ...]
    """The strategies."""
    mode: Mode = "single"
    plugins: tuple[str, ...] = ()
    """The plugins around the strategies, outermost first."""


def _split(approach: str, param: str) -> tuple[tuple[str, ...], Mode]:
    if "&" in approach and "|" in approach:
        raise InvalidRequest(f"cannot mix '&' and '|' in {approach!r}", param=param)
    if "&" in approach:
        return tuple(approach.split("&")), "pipeline"
    if "|" in approach:
        return tuple(approach.split("|")), "parallel"
    return (approach,), "single"


def _layered(
    model: str, slugs: tuple[str, ...], mode: Mode, is_plugin: Callable[[str], bool], param: str
) -> Route:
    """The route of known `slugs`, with its leading plugins taken out as layers."""
    plugins = tuple(takewhile(is_plugin, slugs))
    strategies = slugs[len(plugins) :]
    late = [s for s in strategies if is_plugin(s)]
    if late:
        raise InvalidRequest(
            f"the plugin {late[0]!r} comes after a strategy: plugins come first, each around "
            f"the rest of the route (as in 'readurls&sc-<model>')",
            param=param,
        )
    if not plugins:
        return Route(model, slugs, mode)
    if mode == "parallel":
        raise InvalidRequest(
            f"the plugin {plugins[0]!r} is joined with '|': a plugin goes around a route with "
            "'&' (as in 'readurls&sc-<model>')",
            param=param,
        )
    strategies = strategies or ("none",)
    return Route(model, strategies, "pipeline" if len(strategies) > 1 else "single", plugins)


def resolve(
    name: str,
    canonical: Callable[[str], str | None],
    optillm_approach: str | None = None,
    is_plugin: Callable[[str], bool] = lambda slug: False,
    approach_param: str = "optillm_approach",
) -> Route:
    """Resolve a model name. `canonical` maps a slug or alias to its slug, or None if unknown;
    `is_plugin` says whether a slug names a plugin; `approach_param` is where the approach
    came from, named by its errors."""
    if optillm_approach and optillm_approach != AUTO:
        parts, mode = _split(optillm_approach, approach_param)
        slugs = tuple(canonical(p) for p in parts)
        unknown = [p for p, s in zip(parts, slugs, strict=True) if s is None]
        if unknown:
            raise InvalidRequest(
                f"unknown strategy {unknown[0]!r} in optillm_approach", param=approach_param
            )
        known = tuple(s for s in slugs if s is not None)
        return _layered(name, known, mode, is_plugin, approach_param)

    prefix, sep, rest = name.partition("-")
    if not sep or not rest:
        return Route(name, ("none",))
    parts, mode = _split(prefix, "model")
    slugs = tuple(canonical(p) for p in parts)
    if mode == "single":
        slug = slugs[0]
        if slug is None:
            return Route(name, ("none",))
        return _layered(rest, (slug,), mode, is_plugin, "model")
    unknown = [p for p, s in zip(parts, slugs, strict=True) if s is None]
    if unknown:
        raise UnknownModel(
            f"The model '{name}' does not exist: unknown strategy {unknown[0]!r}", param="model"
        )
    return _layered(rest, tuple(s for s in slugs if s is not None), mode, is_plugin, "model")


def approach_in_prompt(messages: Sequence[Message]) -> tuple[list[Message], str | None]:
    """The approach an `<optillm_approach>` tag names in the conversation (the first tag of its
    system and developer messages, else of its user messages, in order), and the conversation
    with that message's tags taken out (a system message left empty is dropped); the
    conversation as it is, and None, when no message holds one."""
    instructions = [i for i, m in enumerate(messages) if m.role in ("system", "developer")]
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    for i in (*instructions, *users):
        text = messages[i].text
        found = _TAG.search(text) if _OPENING in text else None
        if found is None:
            continue
        rest = _untagged(messages[i])
        kept = [*messages[:i], *([] if rest is None else [rest]), *messages[i + 1 :]]
        return kept, found.group(1).strip()
    return list(messages), None


def _untagged(message: Message) -> Message | None:
    """`message` without its `<optillm_approach>` tags; None for a system or developer message
    with nothing else in it."""
    content = message.content
    if isinstance(content, str):
        text = _TAG.sub("", content).strip()
        if not text and message.role != "user":
            return None
        return replace(message, content=text)
    parts = tuple(
        {**p, "text": _TAG.sub("", str(p.get("text", ""))).strip()}
        if p.get("type") == "text"
        else p
        for p in content or ()
    )
    parts = tuple(p for p in parts if p.get("type") != "text" or p["text"])
    if not parts and message.role != "user":
        return None
    return replace(message, content=parts)
