"""How the `openai` backend talks HTTP to its upstream.

`UpstreamHTTP` is the small surface the backend needs: a request answered whole, and a request
whose body is read line by line (server-sent events). `AiohttpUpstream` is the real one: one
aiohttp session of keep-alive connections per event loop. aiohttp's client costs a fraction of
the CPU per request of the alternatives on a pass-through, where the client is most of what a
proxy does. Tests stand in for the network with `ponder.testing.HandlerUpstream`.

Whatever the network or the HTTP stack raises becomes a `BackendError` here (`upstream_errors`),
so the backend only ever sees answers and Ponder's own errors.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Protocol

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from yarl import URL

from ponder.errors import BackendError, BackendTimeout, BackendUnavailable, PonderError

log = logging.getLogger(__name__)

# Large enough for one server-sent event line carrying log-probabilities of a long chunk.
MAX_LINE_BYTES = 8 * 1024 * 1024

__all__ = [
    "AiohttpUpstream",
    "HTTPReply",
    "HTTPStream",
    "UpstreamHTTP",
    "upstream_errors",
]


@dataclass(frozen=True, slots=True)
class HTTPReply:
    """An answer read whole. `headers` looks names up regardless of case."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class HTTPStream(Protocol):
    """An answer whose body is still arriving."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self) -> bytes:
        """The rest of the body, whole (for an error answer)."""
        ...

    def lines(self) -> AsyncIterator[bytes]:
        """The body's lines as they arrive, each with its line ending."""
        ...


class UpstreamHTTP(Protocol):
    async def request(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> HTTPReply:
        """`method` on `path` (relative to the base URL), answered whole."""
        ...

    def stream(
        self, path: str, body: bytes, headers: Mapping[str, str]
    ) -> AbstractAsyncContextManager[HTTPStream]:
        """POST `body` to `path`; the answer's body is read while it arrives. Leaving the
        context early closes the connection."""
        ...

    async def aclose(self) -> None: ...


class AiohttpUpstream:
    """An upstream at `base_url`, through one aiohttp session per event loop (a session
    belongs to the loop it was made in; tests run several loops in turn).

    `timeout_s` bounds each wait for data from the upstream (not the whole answer: a long
    stream keeps going as long as it keeps sending); `connect_timeout_s` bounds connecting.
    The proxy the environment names for the upstream (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`)
    is read once, here (aiohttp's own reading of it costs a thread hop per request). Connections
    are kept alive and reused; there is no cap on them here, since the callers cap their own
    concurrency."""

    def __init__(self, base_url: str, *, timeout_s: float, connect_timeout_s: float) -> None:
        self._base = URL(base_url.rstrip("/") + "/")
        self._proxy = _env_proxy(self._base)
        self._urls: dict[str, URL] = {}
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s, sock_connect=connect_timeout_s,
            sock_read=timeout_s,
        )  # fmt: skip
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def request(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> HTTPReply:
        with upstream_errors():
            async with self._session_now().request(
                method, self._url(path), data=body, headers=headers, proxy=self._proxy
            ) as response:
                return HTTPReply(response.status, response.headers, await response.read())

    @asynccontextmanager
    async def stream(
        self, path: str, body: bytes, headers: Mapping[str, str]
    ) -> AsyncIterator[HTTPStream]:
        with upstream_errors():
            response = await self._session_now().post(
                self._url(path), data=body, headers=headers, proxy=self._proxy
            )
        try:
            yield _AiohttpStream(response)
        finally:
            # Read to its end, the connection goes back to the pool; else it is closed, so
            # the upstream stops generating for nobody.
            if response.content.at_eof():
                response.release()
            else:
                response.close()

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    def _url(self, path: str) -> URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = self._base.join(URL(path))
        return url

    def _session_now(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ssl=_tls_context()),
                timeout=self._timeout,
            )
            self._loop = loop
        return self._session


class _AiohttpStream:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def read(self) -> bytes:
        with upstream_errors():
            return await self._response.read()

    async def lines(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            with upstream_errors():
                line = await content.readuntil(b"\n", max_size=MAX_LINE_BYTES)
            if not line:
                return
            yield line


def _env_proxy(url: URL) -> str | None:
    if url.host is not None and urllib.request.proxy_bypass(url.host):
        return None
    return urllib.request.getproxies().get(url.scheme)


@cache
def _tls_context() -> ssl.SSLContext:
    """The system's CAs and certifi's bundle, loaded once: building a context reads them, tens
    of milliseconds of the event loop."""
    context = ssl.create_default_context()
    try:
        import certifi
    except ImportError:  # pragma: no cover - certifi comes with the dependencies
        return context
    context.load_verify_locations(certifi.where())
    return context


@contextmanager
def upstream_errors() -> Iterator[None]:
    """Whatever the network or the HTTP stack raises while Ponder talks to the upstream becomes
    a BackendError. Only HTTP I/O runs in this block, so nothing of Ponder's own is mistaken
    for a broken connection; an exception aiohttp does not wrap (an OSError, a RuntimeError
    from a transport closed under it) is logged with its traceback.

    Connecting failed, or the connection broke: worth another try. A read timeout is not: the
    upstream was reached and spent its time."""
    try:
        yield
    except PonderError:
        raise
    except aiohttp.ConnectionTimeoutError as exc:
        raise BackendTimeout(
            f"cannot reach the upstream: {type(exc).__name__}", retryable=True
        ) from exc
    except TimeoutError as exc:  # aiohttp's read timeouts are TimeoutErrors too
        raise BackendTimeout("the upstream did not answer in time") from exc
    except aiohttp.ClientConnectorError as exc:
        raise BackendUnavailable(
            f"cannot reach the upstream: {type(exc).__name__}", retryable=True
        ) from exc
    except (aiohttp.ClientError, ConnectionError) as exc:
        raise BackendUnavailable(
            f"the connection to the upstream broke: {type(exc).__name__}", retryable=True
        ) from exc
    except LineTooLong as exc:
        raise BackendError(
            f"the upstream sent a line of more than {MAX_LINE_BYTES} bytes in its stream"
        ) from exc
    except HttpProcessingError as exc:  # an answer that is not HTTP
        raise BackendUnavailable(
            f"the upstream's answer is not valid HTTP: {type(exc).__name__}", retryable=True
        ) from exc
    except Exception as exc:
        name = type(exc).__name__
        log.warning("the HTTP client failed unexpectedly (%s)", name, exc_info=exc)
        raise BackendUnavailable(
            f"the connection to the upstream broke: {name}", retryable=True
        ) from exc
