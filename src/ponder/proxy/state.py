"""What the routes share: built once per app in `create_app()`."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ponder.backends.base import Backend
from ponder.config import Settings
from ponder.keys import Keyring
from ponder.plugins.resources import Resources, server_resources
from ponder.proxy.chat import ChatService
from ponder.proxy.limits import RateLimiter
from ponder.spl_store import Store
from ponder.strategies.engine import Engine
from ponder.tracing import Tracing

if TYPE_CHECKING:
    from ponder.proxy.shared_limits import RedisLimits, SharedRateLimiter


@dataclass
class AppState:
    settings: Settings
    backend: Backend
    engine: Engine
    owns_backend: bool
    store: Store
    keyring: Keyring
    tracing: Tracing | None = None
    """OpenTelemetry tracing (None: off)."""
    resources: Resources = field(init=False)
    """What the server lends its plugins, built from the settings (closed with the app)."""
    chat: ChatService = field(init=False)
    rate_limiter: RateLimiter | SharedRateLimiter = field(init=False)
    shared_limits: RedisLimits | None = field(init=False)
    """Where replicas share the rate limits and the concurrency cap (None: per process)."""
    started: float = field(default_factory=time.time)
    background: dict[tuple[str, str], asyncio.Task[None]] = field(default_factory=dict)
    """The background Responses API runs in flight in this process, by (tenant, response id)."""

    def __post_init__(self) -> None:
        self.resources = server_resources(self.settings, self.backend, self.engine)
        self.chat = ChatService.for_settings(
            self.settings, self.backend, self.engine, self.store, self.resources, self.tracing
        )
        settings = self.settings
        if not settings.redis_url:
            self.shared_limits = None
            self.rate_limiter = RateLimiter(settings.rate_limit_per_minute)
            return
        from ponder.proxy.shared_limits import RedisLimits, SharedAdmission, SharedRateLimiter

        self.shared_limits = RedisLimits(
            settings.redis_url, settings.redis_timeout_s, settings.limits_on_redis_error
        )
        self.rate_limiter = SharedRateLimiter(self.shared_limits, settings.rate_limit_per_minute)
        self.chat.admission = SharedAdmission(
            self.shared_limits,
            settings.max_concurrent_requests,
            settings.max_queued_requests,
            settings.queue_timeout_s,
            lease_s=settings.deadline_s + settings.queue_timeout_s + 60,
        )
