"""The operator's upstream pool file (PONDER_PROXY_CONFIG), JSON or TOML, and the pool it builds.

```toml
strategy = "weighted"      # weighted | round_robin | failover
cooldown_s = 30            # how long an upstream that failed is skipped
health_check = false       # ask GET /models before using it again

[[upstreams]]
name = "big"               # in logs and traces (default: host:port of base_url)
base_url = "http://10.0.0.5:8000/v1"
api_key_env = "BIG_KEY"    # the environment variable holding its key (never the key itself)
weight = 3
max_concurrency = 16
context_window = 32768     # its model's, for longcepo, memory and compact (optional)
models = { "gpt-4o" = "qwen2.5-72b" }   # client's model name -> the upstream's
```

Retries, backoff and timeouts are the server's upstream settings (PONDER_UPSTREAM_RETRIES,
PONDER_UPSTREAM_BACKOFF_S, PONDER_UPSTREAM_MAX_RETRY_WAIT_S, PONDER_UPSTREAM_TIMEOUT_S,
PONDER_UPSTREAM_CONNECT_TIMEOUT_S). A file that cannot be read or is invalid stops the server
with a message naming the field; a key written into the file is refused, and no message ever
quotes a key.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ponder.backends.balance import Choice
from ponder.backends.openai_compat import OpenAICompatBackend
from ponder.backends.pool import Upstream, UpstreamPool
from ponder.backends.resilience import RetryPolicy
from ponder.backends.upstream_http import UpstreamHTTP
from ponder.config import Settings

SETTING = "PONDER_PROXY_CONFIG"

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class UpstreamEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name | None = Field(
        None, description="How logs and traces call it (default: host:port of base_url)"
    )
    base_url: str = Field(description="The OpenAI-compatible base URL, e.g. http://host:8000/v1")
    api_key_env: str | None = Field(
        None, min_length=1, description="The environment variable that holds its API key"
    )
    weight: int = Field(1, ge=1, le=1000, description="Share of calls under `weighted`")
    max_concurrency: int = Field(16, ge=1, le=4096, description="Most calls in flight on it")
    continuation: bool = Field(
        False, description="It continues a prefilled assistant turn (continue_final_message)"
    )
    context_window: int | None = Field(
        None, ge=256, description="Its model's context window in tokens (for longcepo, memory)"
    )
    models: dict[str, str] = Field(
        default_factory=dict, description="Model names clients use -> the upstream's own"
    )

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL:
            raise ValueError("is not a valid URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL")
        if url.userinfo:  # HTTP clients log URLs
            raise ValueError(
                "credentials are not written in the URL: put the key in an environment "
                "variable and name it in `api_key_env`"
            )
        return value

    def label(self) -> str:
        if self.name:
            return self.name
        url = httpx.URL(self.base_url)
        return f"{url.host}:{url.port}" if url.port else url.host


class PoolFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Choice = Field("weighted", description="weighted | round_robin | failover")
    cooldown_s: float = Field(30.0, ge=0, le=86_400, description="Seconds a failed one is skipped")
    health_check: bool = Field(False, description="GET /models before using one again")
    upstreams: list[UpstreamEntry] = Field(min_length=1, max_length=256)


def load_pool_file(path: Path) -> PoolFile:
    """The pool file at `path`, checked; a ValueError that names the file and the field."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{SETTING}: cannot read {path}: {exc.strerror}") from None
    try:
        data = _parse(path, raw)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{SETTING}: {path} is not valid: {exc}") from None
    try:
        return PoolFile.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{SETTING}: {path}: {_explain(exc)}") from None


def build_pool(
    settings: Settings,
    *,
    env: Mapping[str, str] | None = None,
    http: Mapping[str, UpstreamHTTP] | None = None,
) -> UpstreamPool:
    """The pool the settings' file describes, its keys read from `env` (the process's
    environment by default); `http` stands in for the network in tests, by upstream name."""
    if settings.proxy_config is None:
        raise ValueError(f"{SETTING} is not set")
    config = load_pool_file(settings.proxy_config)
    env = os.environ if env is None else env
    names = [entry.label() for entry in config.upstreams]
    if len(set(names)) != len(names):
        raise ValueError(
            f"{SETTING}: two upstreams are both called {_duplicate(names)!r}; "
            "give each a distinct `name`"
        )
    upstreams = []
    for entry, name in zip(config.upstreams, names, strict=True):
        backend = OpenAICompatBackend(
            entry.base_url,
            api_key=_key(entry, name, env),
            timeout_s=settings.upstream_timeout_s,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            http=(http or {}).get(name),
            continuation=entry.continuation,
            context_window=entry.context_window,
            key_setting=(
                f"{entry.api_key_env} (upstream {name!r} of {SETTING})"
                if entry.api_key_env
                else f"upstream {name!r} of {SETTING}, which sends no key"
            ),
        )
        upstreams.append(
            Upstream(name, backend, entry.weight, entry.max_concurrency, dict(entry.models))
        )
    return UpstreamPool(
        upstreams,
        choice=config.strategy,
        cooldown_s=config.cooldown_s,
        health_check=config.health_check,
        policy=RetryPolicy(
            settings.upstream_retries,
            settings.upstream_backoff_s,
            settings.upstream_max_retry_wait_s,
        ),
    )


def _parse(path: Path, raw: bytes) -> Any:
    if path.suffix == ".toml":
        return tomllib.loads(raw.decode())
    if path.suffix == ".json":
        return json.loads(raw)
    raise ValueError("the file name must end in .json or .toml")


def _explain(exc: ValidationError) -> str:
    """The errors, by field, without the values (a key written in the file stays unquoted)."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        where = ".".join(str(part) for part in error["loc"]) or "the file"
        message = error["msg"]
        if error["loc"] and error["loc"][-1] in ("api_key", "key"):
            message = (
                "keys are not written in this file: put it in an environment variable "
                "and name that variable in `api_key_env`"
            )
        lines.append(f"{where}: {message}")
    return "; ".join(lines)


def _key(entry: UpstreamEntry, name: str, env: Mapping[str, str]) -> str | None:
    if entry.api_key_env is None:
        return None
    key = env.get(entry.api_key_env)
    if not key:
        raise ValueError(
            f"{SETTING}: upstream {name!r} takes its key from the environment variable "
            f"{entry.api_key_env}, which is not set"
        )
    return key


def _duplicate(names: list[str]) -> str:
    return next(name for name in names if names.count(name) > 1)
