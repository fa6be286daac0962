"""Slug -> strategy factory. One instance per app, built in `create_app()`."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from ponder.errors import InvalidRequest
from ponder.plugins.base import Plugin, PluginFactory
from ponder.strategies.base import Strategy, StrategyConfig, StrategyFactory

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ponder.strategies"

Factory = StrategyFactory | PluginFactory


class DuplicateStrategy(ValueError):
    pass


class Registry:
    def __init__(self, factories: Iterable[Factory] = ()) -> None:
        self._factories: dict[str, Factory] = {}
        self._aliases: dict[str, str] = {}
        for factory in factories:
            self.register(factory)

    def register(self, factory: Factory) -> None:
        for name in (factory.slug, *factory.aliases):
            if name in self._factories or name in self._aliases:
                raise DuplicateStrategy(f"strategy slug {name!r} is registered twice")
            if not name or "-" in name or "&" in name or "|" in name:
                raise ValueError(f"invalid strategy slug {name!r}: no '-', '&' or '|'")
        self._factories[factory.slug] = factory
        for alias in factory.aliases:
            self._aliases[alias] = factory.slug

    def load_entry_points(self) -> None:
        """Register third-party strategies and plugins published under the `ponder.strategies`
        group."""
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            log.info("loading strategy %s from %s", ep.name, ep.value)
            self.register(ep.load())

    def canonical(self, name: str) -> str | None:
        """The slug for a slug or alias, or None when unknown."""
        if name in self._factories:
            return name
        return self._aliases.get(name)

    def is_plugin(self, name: str) -> bool:
        """Whether a slug or alias names a plugin (a layer around a route)."""
        canonical = self.canonical(name)
        return canonical is not None and _is_plugin(self._factories[canonical])

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.canonical(name) is not None

    @property
    def slugs(self) -> list[str]:
        return sorted(self._factories)

    def factory(self, slug: str) -> Factory:
        canonical = self.canonical(slug)
        if canonical is None:
            raise KeyError(slug)
        return self._factories[canonical]

    def config(self, slug: str, options: Mapping[str, Any] | None = None) -> StrategyConfig:
        """The client's options for a strategy, validated against its Config as the JSON they
        came in (strictly: "3" is no integer, true no number), so what the OpenAPI schema
        forbids is refused. 400 naming the first bad knob."""
        factory = self.factory(slug)
        try:
            text = json.dumps(_whole_numbers(dict(options or {})))
            return factory.Config.model_validate_json(text, strict=True)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            param = f"ponder.{factory.slug}" + (f".{where}" if where else "")
            raise InvalidRequest(f"{param}: {first['msg']}", param=param) from exc

    def create(self, slug: str, options: Mapping[str, Any] | None = None) -> Strategy:
        """Build a strategy with the client's options for it, validated against its Config."""
        factory = self.factory(slug)
        if _is_plugin(factory):
            raise ValueError(f"{slug!r} is a plugin, not a strategy")
        return factory(self.config(slug, options))  # type: ignore[return-value]

    def create_plugin(self, slug: str, options: Mapping[str, Any] | None = None) -> Plugin:
        """Build a plugin with the client's options for it, validated against its Config."""
        factory = self.factory(slug)
        if not _is_plugin(factory):
            raise ValueError(f"{slug!r} is a strategy, not a plugin")
        return factory(self.config(slug, options))  # type: ignore[return-value]


def _is_plugin(factory: Factory) -> bool:
    return getattr(factory, "wraps", False) is True


def _whole_numbers(value: Any) -> Any:
    """4.0 -> 4, at any depth: JSON Schema counts 4.0 as an integer, so integer knobs take it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def default_registry(*, entry_points: bool = True) -> Registry:
    from ponder.strategies.catalog import builtin

    registry = Registry(builtin())
    if entry_points:
        registry.load_entry_points()
    return registry
