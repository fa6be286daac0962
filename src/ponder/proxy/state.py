"""What the routes share: built once per app in `create_app()`."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ponder.backends.base import Backend
from ponder.config import Settings
from ponder.keys import Keyring
from ponder.plugins.resources import Resources, server_resources
from ponder.proxy.chat import ChatService
from ponder.proxy.limits import RateLimiter
from ponder.spl_store import Store
from ponder.strategies.engine import Engine
from ponder.tracing import Tracing


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
    rate_limiter: RateLimiter = field(init=False)
    started: float = field(default_factory=time.time)
    background: dict[tuple[str, str], asyncio.Task[None]] = field(default_factory=dict)
    """The background Responses API runs in flight in this process, by (tenant, response id)."""

    def __post_init__(self) -> None:
        self.resources = server_resources(self.settings, self.backend, self.engine)
        self.chat = ChatService.for_settings(
            self.settings, self.backend, self.engine, self.store, self.resources, self.tracing
        )
        self.rate_limiter = RateLimiter(self.settings.rate_limit_per_minute)
