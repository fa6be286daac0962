"""Serving an app: `ponder serve`'s workers, and a background thread for the bench's
in-process Ponder and for tests."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

A = TypeVar("A")


@contextmanager
def running_server(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `app` with uvicorn on a free port in a background thread; yields the base URL
    (".../v1"). The app runs on that thread's event loop."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="ponder-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def frozen(app: A) -> A:
    """`app`, with everything allocated until now (modules, settings, the app itself) moved
    out of the cyclic garbage collector's sight (`gc.freeze`). A server allocates all of that
    once, but without this every full collection walks it again: on a pass-through that cost a
    fifth of the CPU per request and most of the tail latency. Call it once, last thing before
    serving; what requests allocate is collected as always."""
    gc.collect()
    gc.freeze()
    return app


def app_from_environment() -> Any:
    """The app of one `ponder serve --workers N` process: its settings from the environment
    (`ponder serve` puts its flags there first), logging as the parent's."""
    from ponder.config import Settings
    from ponder.logs import configure
    from ponder.proxy import create_app

    settings = Settings()
    configure(settings)
    return frozen(create_app(settings))
