"""Backends: where completions come from. Heavy engines are imported only when chosen."""

from __future__ import annotations

from ponder.backends.base import Backend, Capabilities
from ponder.config import Settings

__all__ = ["Backend", "Capabilities", "build_backend"]


def build_backend(settings: Settings) -> Backend:
    if settings.backend == "openai":
        return _remote(settings)
    if settings.upstream_key_from_client:
        raise ValueError("PONDER_UPSTREAM_KEY_FROM_CLIENT needs the openai backend")
    if settings.backend == "vllm":
        from ponder.backends.vllm import VLLMBackend

        if not settings.model:
            raise ValueError("the vllm backend needs --model (a model path or name)")
        return VLLMBackend(
            settings.model,
            model_id=settings.model_id,
            gpu_memory_utilization=settings.gpu_memory_utilization,
        )
    from ponder.backends.llamacpp import EmbeddedBackend

    return EmbeddedBackend(
        settings.model,
        model_id=settings.model_id,
        n_threads=settings.n_threads,
        n_ctx=settings.embedded_ctx,
        sequences=settings.embedded_sequences,
        prefix_cache=settings.embedded_prefix_cache,
        cache_dir=settings.model_cache_dir,
    )


def _remote(settings: Settings) -> Backend:
    """The upstream, then its fallbacks, each call retried on transient failures."""
    from ponder.backends.openai_compat import OpenAICompatBackend
    from ponder.backends.resilience import ResilientBackend, RetryPolicy

    if not settings.base_url:
        raise ValueError("the openai backend needs --base-url (PONDER_BASE_URL)")
    key = settings.upstream_api_key
    upstreams = [
        OpenAICompatBackend(
            url,
            api_key=key.get_secret_value() if key else None,
            timeout_s=settings.upstream_timeout_s,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            continuation=settings.upstream_continuation,
            context_window=settings.upstream_context_window,
            key_from_client=settings.upstream_key_from_client,
        )
        for url in (settings.base_url, *settings.fallback_base_urls)
    ]
    policy = RetryPolicy(
        settings.upstream_retries, settings.upstream_backoff_s, settings.upstream_max_retry_wait_s
    )
    return ResilientBackend(upstreams, policy)
