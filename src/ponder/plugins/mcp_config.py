"""The operator's MCP server file (PONDER_MCP_CONFIG), JSON: which servers the `mcp` plugin
may use. Clients never name a command or a URL; they may only choose among these servers by
name.

```json
{
  "servers": [
    {"name": "math", "command": "/usr/bin/python3", "args": ["-m", "math_server"],
     "env": {"MATH_PRECISION": "20"}, "cwd": "/srv/math"},
    {"name": "docs", "url": "https://docs.internal/mcp", "headers": {"X-Team": "ml"},
     "headers_env": {"Authorization": "DOCS_MCP_AUTH"}}
  ],
  "call_timeout_s": 30,
  "start_timeout_s": 20,
  "restart_after_s": 30
}
```

A stdio server is started with only `env` over a minimal environment (PATH, HOME, ...): it
does not inherit Ponder's own variables. An HTTP server's secret headers are read from the
environment variables `headers_env` names. A file that cannot be read or is invalid stops the
server with a message naming the field; no message quotes a value of `env` or `headers`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SETTING = "PONDER_MCP_CONFIG"

ServerName = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")]


class ServerEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ServerName = Field(description="How tools, traces and clients name the server")
    command: str | None = Field(None, min_length=1, description="stdio: the program to run")
    args: tuple[str, ...] = Field((), description="stdio: its arguments")
    env: dict[str, str] = Field(
        default_factory=dict, description="stdio: its environment, over a minimal one"
    )
    cwd: Path | None = Field(None, description="stdio: its working directory")
    url: str | None = Field(None, description="Streamable HTTP: the endpoint, e.g. https://h/mcp")
    headers: dict[str, str] = Field(default_factory=dict, description="HTTP: headers sent")
    headers_env: dict[str, str] = Field(
        default_factory=dict,
        description="HTTP: headers whose values are read from these environment variables",
    )

    @field_validator("url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL:
            raise ValueError("is not a valid URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL")
        if url.userinfo:  # HTTP clients log URLs
            raise ValueError("credentials are not written in the URL: use `headers_env`")
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> ServerEntry:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either `command` (stdio) or `url` (streamable HTTP)")
        if self.command is not None and (self.headers or self.headers_env):
            raise ValueError("`headers` and `headers_env` are for `url` servers")
        if self.url is not None and (self.args or self.env or self.cwd is not None):
            raise ValueError("`args`, `env` and `cwd` are for `command` servers")
        return self


class McpFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    servers: list[ServerEntry] = Field(min_length=1, max_length=64)
    call_timeout_s: float = Field(30.0, gt=0, le=3600, description="Longest wait for one call")
    start_timeout_s: float = Field(20.0, gt=0, le=600, description="Longest wait for a start")
    restart_after_s: float = Field(
        30.0,
        ge=0,
        le=86_400,
        description="After a server failed to start or died, seconds before it is tried again "
        "(requests needing it meanwhile fail at once)",
    )

    @field_validator("servers")
    @classmethod
    def _distinct(cls, servers: list[ServerEntry]) -> list[ServerEntry]:
        names = [s.name for s in servers]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two servers are both called {name!r}")
        return servers


def load_mcp_file(path: Path, env: Mapping[str, str] | None = None) -> McpFile:
    """The server file at `path`, checked (the variables of `headers_env` included, in `env`,
    the process's environment by default); a ValueError that names the file and the field."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{SETTING}: cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{SETTING}: {path} is not valid JSON: {exc}") from None
    try:
        config = McpFile.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{SETTING}: {path}: {_explain(exc)}") from None
    env = os.environ if env is None else env
    for server in config.servers:
        for variable in server.headers_env.values():
            if not env.get(variable):
                raise ValueError(
                    f"{SETTING}: server {server.name!r} reads a header from the environment "
                    f"variable {variable}, which is not set"
                )
    return config


def _explain(exc: ValidationError) -> str:
    """The errors, by field, without the values (a secret written in the file stays unquoted)."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        where = ".".join(str(part) for part in error["loc"]) or "the file"
        lines.append(f"{where}: {error['msg']}")
    return "; ".join(lines)
