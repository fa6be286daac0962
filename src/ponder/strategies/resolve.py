"""Model-name resolution: which strategies run, on which backend model.

A pure function of the name, the optional `optillm_approach` field and the set of known slugs:

    smollm2-135m          -> none on smollm2-135m
    none-smollm2-135m     -> none on smollm2-135m
    sc-gpt-4o             -> sc on gpt-4o
    sc&refine-m           -> sc, then refine on its answer ("pipeline")
    sc|tot-m              -> sc and tot side by side, one choice each ("parallel")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ponder.errors import InvalidRequest, UnknownModel

Mode = Literal["single", "pipeline", "parallel"]


@dataclass(frozen=True, slots=True)
class Route:
    model: str
    slugs: tuple[str, ...]
    mode: Mode = "single"


def _split(approach: str, param: str) -> tuple[tuple[str, ...], Mode]:
    if "&" in approach and "|" in approach:
        raise InvalidRequest(f"cannot mix '&' and '|' in {approach!r}", param=param)
    if "&" in approach:
        return tuple(approach.split("&")), "pipeline"
    if "|" in approach:
        return tuple(approach.split("|")), "parallel"
    return (approach,), "single"


def resolve(
    name: str,
    canonical: Callable[[str], str | None],
    optillm_approach: str | None = None,
) -> Route:
    """Resolve a model name. `canonical` maps a slug or alias to its slug, or None if unknown."""
    if optillm_approach:
        parts, mode = _split(optillm_approach, "optillm_approach")
        slugs = tuple(canonical(p) for p in parts)
        unknown = [p for p, s in zip(parts, slugs, strict=True) if s is None]
        if unknown:
            raise InvalidRequest(
                f"unknown strategy {unknown[0]!r} in optillm_approach", param="optillm_approach"
            )
        return Route(name, tuple(s for s in slugs if s is not None), mode)

    prefix, sep, rest = name.partition("-")
    if not sep or not rest:
        return Route(name, ("none",))
    parts, mode = _split(prefix, "model")
    slugs = tuple(canonical(p) for p in parts)
    if mode == "single":
        slug = slugs[0]
        return Route(rest, (slug,)) if slug is not None else Route(name, ("none",))
    unknown = [p for p, s in zip(parts, slugs, strict=True) if s is None]
    if unknown:
        raise UnknownModel(
            f"The model '{name}' does not exist: unknown strategy {unknown[0]!r}", param="model"
        )
    return Route(rest, tuple(s for s in slugs if s is not None), mode)
