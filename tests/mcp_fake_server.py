"""A tiny MCP server over stdio for the `mcp` plugin's tests, written with the SDK's server
side. Tools: `add(a, b)` and `lookup(key)` (which raises for "boom" and returns a long text for
"long"); with `--mortal`, also `die()`, which ends the process at once."""

from __future__ import annotations

import os
import sys

from mcp.server.mcpserver import MCPServer

FACTS = {"capital_of_france": "Paris", "answer": "42"}
LONG = "0123456789" * 1000

server = MCPServer("fake", log_level="CRITICAL")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def lookup(key: str) -> str:
    """Look up a fact by its key."""
    if key == "boom":
        raise ValueError("the fact store is broken")
    if key == "long":
        return LONG
    return FACTS.get(key, "unknown key")


if "--mortal" in sys.argv:

    @server.tool()
    def die() -> str:
        """End the server's process."""
        os._exit(3)


if __name__ == "__main__":
    server.run("stdio")
