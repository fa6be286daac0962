"""What a server lends its plugins: things built once from its settings (a search provider, MCP
sessions, a pool of upstreams, the engine...), shared by every request.

`server_resources()` builds them; each plugin module that needs one adds its block there, keyed
by the plugin's slug. A plugin asks for its resource with `resource()`, which refuses the
request with a 403 naming the setting when the operator has not configured it. Resources with
an `aclose()` are closed with the app.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

from ponder.errors import PermissionDenied

if TYPE_CHECKING:
    from ponder.backends.base import Backend
    from ponder.config import Settings
    from ponder.strategies.context import RequestContext
    from ponder.strategies.engine import Engine

log = logging.getLogger(__name__)

R = TypeVar("R")

Resources = Mapping[str, object]

ENGINE = "engine"
"""The server's engine (and its registry), for plugins that build and run strategies (always
lent)."""


def server_resources(settings: Settings, backend: Backend, engine: Engine) -> Resources:
    """The resources the settings turn on, by name."""
    resources: dict[str, object] = {ENGINE: engine}
    if settings.proxy_config is not None:  # the proxy plugin's pool of upstreams
        from ponder.backends.pool_config import build_pool

        resources["proxy"] = build_pool(settings)
    if settings.mcp_config is not None:  # the mcp plugin's sessions (started on first use)
        from ponder.plugins.mcp_hub import McpHub

        resources["mcp"] = McpHub.from_settings(settings)
    if settings.web_search_url:  # the web_search and deep_research plugins' search provider
        from ponder.plugins.search_provider import SLUG, WebSearch

        resources[SLUG] = WebSearch.for_settings(settings)
    # the privacy plugin's detector of personal data (built on first use, once per process)
    from ponder.plugins.privacy_detect import Detectors

    resources["privacy"] = Detectors(settings.privacy_model)
    return resources


def resource(ctx: RequestContext, name: str, kind: type[R], setting: str) -> R:
    """The resource `name` lent to this request, or a 403 naming the setting that turns it on."""
    found = ctx.resources.get(name)
    if not isinstance(found, kind):
        raise PermissionDenied(
            f"the {name} plugin is not configured on this server (an operator turns it on "
            f"with {setting})",
            param="model",
        )
    return found


async def close_resources(resources: Resources) -> None:
    """Close every resource that can be closed; one failing does not keep the rest open."""
    for name, value in resources.items():
        close = getattr(value, "aclose", None)
        if close is None or not callable(close):
            continue
        try:
            result = close()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("closing the %s resource failed", name)
