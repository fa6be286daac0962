"""The tools a server offers its strategies, from its settings: the built-in ones always, the
ones that run model-written code or fetch URLs only where the operator turned them on."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from ponder.config import Settings
from ponder.strategies.tools import BUILTIN_TOOLS, Tool

log = logging.getLogger(__name__)


def server_tools(settings: Settings) -> Mapping[str, Tool]:
    tools: dict[str, Tool] = dict(BUILTIN_TOOLS)
    if settings.enable_code_execution:
        from ponder.sandbox.code import PythonTool, z3_location

        tools["python"] = PythonTool(settings.code_timeout_s, settings.code_memory_mb)
        z3_folder = z3_location()
        if z3_folder is not None:  # for the z3 strategy, not a react tool
            tools["z3"] = PythonTool(
                settings.code_timeout_s, settings.code_memory_mb, z3_folder=z3_folder
            )
        if os.geteuid() == 0:
            log.warning(
                "code execution is on and Ponder runs as root: the process limit does not "
                "bind root, so run Ponder as an unprivileged user"
            )
    if settings.enable_url_fetch:
        from ponder.sandbox.fetch import FetchUrlTool

        tools["fetch_url"] = FetchUrlTool.for_settings(settings)
    if settings.web_search_url:
        from ponder.plugins.search_provider import WebSearch, WebSearchTool

        search = WebSearch.for_settings(settings)
        if search is not None:
            tools["web_search"] = WebSearchTool(search)
    return tools
