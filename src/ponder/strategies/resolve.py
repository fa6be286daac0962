"""Model-name resolution: which strategies run, on which backend model.

A pure function of the name, the optional `optillm_approach` field and the set of known slugs:

    smollm2-135m          -> none on smollm2-135m
    none-smollm2-135m     -> none on smollm2-135m
    sc-gpt-4o             -> sc on gpt-4o
    sc&refine-m           -> sc, then refine on its answer ("pipeline")
    sc|tot-m              -> sc and tot side by side, one choice each ("parallel")
    readurls&sc-m         -> the plugin readurls around sc
    readurls-m            -> readurls around none

Plugins come first in an "&" chain, each around the rest; a plugin after a strategy, or in a
"|" route, is a 400 that says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import takewhile
from typing import Literal

from ponder.errors import InvalidRequest, UnknownModel

Mode = Literal["single", "pipeline", "parallel"]


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
) -> Route:
    """Resolve a model name. `canonical` maps a slug or alias to its slug, or None if unknown;
    `is_plugin` says whether a slug names a plugin."""
    if optillm_approach:
        parts, mode = _split(optillm_approach, "optillm_approach")
        slugs = tuple(canonical(p) for p in parts)
        unknown = [p for p, s in zip(parts, slugs, strict=True) if s is None]
        if unknown:
            raise InvalidRequest(
                f"unknown strategy {unknown[0]!r} in optillm_approach", param="optillm_approach"
            )
        known = tuple(s for s in slugs if s is not None)
        return _layered(name, known, mode, is_plugin, "optillm_approach")

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
