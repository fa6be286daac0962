"""`openai` backend: any OpenAI-compatible server, through one shared httpx client."""

from __future__ import annotations

import email.utils
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing, asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn

import httpx

from ponder.backends.base import Capabilities
from ponder.backends.wire import completions_of, deltas_of, messages_body, sampling_body
from ponder.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    InvalidRequest,
    PonderError,
    UnknownModel,
    UpstreamRateLimited,
)
from ponder.tokens import count_prompt_tokens, count_tokens
from ponder.types import Completion, Delta, Message, Sampling, Usage

log = logging.getLogger(__name__)


class OpenAICompatBackend:
    """An OpenAI-compatible server.

    `continuation`: the server continues a prefilled assistant turn when asked with vLLM's
    request fields (the last message an assistant one, `continue_final_message: true`,
    `add_generation_prompt: false`), as vLLM's and SGLang's OpenAI servers do. Off by default:
    other servers ignore the fields and start a new turn, so strategies that need
    continuation (`Capabilities.continuation`) refuse to run on them."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        continuation: bool = False,
    ) -> None:
        self.capabilities = Capabilities(
            native_n=True,
            logprobs=True,
            tools=True,
            max_concurrency=64,
            continuation=continuation,
        )
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._secret = api_key
        # One TLS context for every client of the pool: building one loads the CA bundle,
        # tens of milliseconds of the event loop per new client.
        tls = httpx.create_ssl_context()
        self._clients = ClientPool(
            lambda: httpx.AsyncClient(
                base_url=base_url.rstrip("/") + "/",
                headers=headers,
                timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                transport=transport,
                verify=tls,
            )
        )

    # ---- Backend protocol ------------------------------------------------------------------

    async def models(self) -> list[str]:
        response = await self._send("GET", "models")
        data = _object(response.content).get("data")
        if not isinstance(data, list):
            raise BackendError("upstream /models answer has no 'data' list")
        return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]

    def serves(self, model: str) -> bool:
        return True  # the upstream decides; an unknown model comes back as a 404

    async def ready(self) -> bool:
        try:
            await self._send("GET", "models")
        except PonderError:
            return False
        return True

    async def aclose(self) -> None:
        await self._clients.aclose()

    async def complete(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> list[Completion]:
        response = await self._send(
            "POST", "chat/completions", self._body(model, messages, sampling, n)
        )
        choices = completions_of(_object(response.content))
        if len(choices) != n:
            raise BackendError(f"upstream returned {len(choices)} choices, {n} were asked for")
        return choices

    async def stream(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> AsyncIterator[Delta]:
        body = self._body(model, messages, sampling, n)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        finished: set[int] = set()
        usage: Usage | None = None
        text_seen: list[str] = []
        done = False
        async with aclosing(self._events(body)) as events:
            async for data in events:
                if data == "[DONE]":
                    done = True
                    break
                chunk = _object(data)
                if "error" in chunk:
                    message = _message_of(chunk, "upstream stream failed", self._secret)
                    raise BackendError(message, retryable=True)
                for delta in deltas_of(chunk):
                    if delta.usage is not None:
                        usage = delta.usage
                        continue
                    if delta.index >= n:
                        raise BackendError(
                            f"the upstream streamed choice {delta.index}; {n} were asked for",
                            retryable=True,
                        )
                    if delta.content:
                        text_seen.append(delta.content)
                    if delta.finish_reason is not None:
                        finished.add(delta.index)
                    yield delta
        if len(finished) < n and not done:
            raise BackendError("upstream stream ended before every choice finished", retryable=True)
        for index in range(n):
            if index not in finished:
                yield Delta(index=index, finish_reason="stop")
        if usage is None:  # the upstream ignored stream_options: count the tokens ourselves
            usage = Usage(count_prompt_tokens(messages), count_tokens("".join(text_seen)))
        yield Delta(usage=usage)

    # ---- internals -------------------------------------------------------------------------

    @staticmethod
    def _body(
        model: str, messages: Sequence[Message], sampling: Sampling, n: int
    ) -> dict[str, Any]:
        body = sampling_body(sampling)
        body["model"] = model
        body["messages"] = messages_body(messages)
        if n != 1:
            body["n"] = n
        return body

    async def _events(self, body: dict[str, Any]) -> AsyncGenerator[str, None]:
        """The `data:` payloads of a streamed chat completion, as they arrive."""
        with _upstream_call():
            async with (
                self._clients.client() as client,
                client.stream("POST", "chat/completions", json=body) as response,
            ):
                if response.status_code >= 400:
                    await response.aread()
                    _raise_for(response, self._secret)
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        yield line[5:].strip()

    async def _send(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        with _upstream_call():
            async with self._clients.client() as client:
                response = await client.request(method, path, json=body)
        if response.status_code >= 400:
            _raise_for(response, self._secret)
        return response


class ClientPool:
    """Keep-alive connections to the upstream, as a free list of one-connection clients.

    httpx's own pool scans every connection (a system call each) on every request and
    response, so one shared client with many connections costs O(connections) per request:
    at 64 concurrent requests that made Ponder slower than its upstream. Taking an idle
    client from a list is O(1); connections are still reused, and at most `max_idle` stay open.
    """

    def __init__(self, make: Callable[[], httpx.AsyncClient], max_idle: int = 256) -> None:
        self._make = make
        self._idle: list[httpx.AsyncClient] = []
        self._max_idle = max_idle
        self._closed = False

    @asynccontextmanager
    async def client(self) -> AsyncIterator[httpx.AsyncClient]:
        client = self._idle.pop() if self._idle else self._make()
        try:
            yield client
        finally:
            if self._closed or len(self._idle) >= self._max_idle:
                await client.aclose()
            else:
                self._idle.append(client)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for client in idle:
            await client.aclose()


def _object(raw: str | bytes) -> dict[str, Any]:
    """A JSON object from the upstream, or a BackendError saying it sent something else."""
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise BackendError("the upstream sent malformed JSON", retryable=True) from exc
    if not isinstance(value, dict):
        raise BackendError("the upstream sent JSON that is not an object", retryable=True)
    return value


def _message_of(body: object, default: str, secret: str | None = None) -> str:
    """The upstream's error message, with Ponder's upstream key masked (providers echo it)."""
    message = default
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            message = str(err["message"])
        elif isinstance(err, str):
            message = err
    return message.replace(secret, "***") if secret else message


@contextmanager
def _upstream_call() -> Iterator[None]:
    """Whatever the HTTP stack raises while Ponder talks to the upstream becomes a BackendError.

    httpx means to raise only `httpx.HTTPError`, but not everything below it is wrapped: on
    uvloop (which `ponder serve` runs on), a connection the upstream resets as soon as it is
    opened makes httpcore fail with an AttributeError (the socket it inspects is gone); a raw
    OSError, an anyio or h11 error or a RuntimeError can come through the same way. For the
    client this is a broken connection like any other; only HTTP I/O runs in this block, so
    nothing of Ponder's own is mistaken for one, and the traceback is logged.
    """
    try:
        yield
    except PonderError:
        raise
    except httpx.HTTPError as exc:
        _raise_transport(exc)
    except Exception as exc:
        name = type(exc).__name__
        log.warning("the HTTP client failed unexpectedly (%s)", name, exc_info=exc)
        raise BackendUnavailable(
            f"the connection to the upstream broke: {name}", retryable=True
        ) from exc


def _raise_transport(exc: httpx.HTTPError) -> NoReturn:
    """Connecting failed, or the connection broke: worth another try. A read timeout is not:
    the upstream was reached and spent its time."""
    name = type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        raise BackendTimeout(f"cannot reach the upstream: {name}", retryable=True) from exc
    if isinstance(exc, httpx.TimeoutException):
        raise BackendTimeout("the upstream did not answer in time") from exc
    if isinstance(exc, httpx.TransportError):
        raise BackendUnavailable(f"cannot reach the upstream: {name}", retryable=True) from exc
    raise BackendError(f"upstream call failed: {name}") from exc


def _raise_for(response: httpx.Response, secret: str | None) -> NoReturn:
    try:
        body: object = response.json()
    except ValueError:
        body = None
    status = response.status_code
    message = _message_of(body, f"upstream answered HTTP {status}", secret)
    retry_after = retry_after_s(response.headers.get("retry-after"))
    param = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        p = body["error"].get("param")
        param = p if isinstance(p, str) else None
    if status == 404:
        raise UnknownModel(message, param=param or "model")
    if status in (400, 409, 413, 422):
        raise InvalidRequest(message, param=param)
    if status in (401, 403):
        log.warning("upstream rejected Ponder's credentials (HTTP %s)", status)
        raise BackendError(
            "the upstream rejected Ponder's credentials; check PONDER_UPSTREAM_API_KEY"
        )
    if status == 429:
        raise UpstreamRateLimited(message, retryable=True, retry_after=retry_after)
    if status in (502, 503):
        raise BackendUnavailable(message, retryable=True, retry_after=retry_after)
    if status in (408, 504):
        raise BackendTimeout(message, retryable=True)
    raise BackendError(message, retryable=status >= 500)


def retry_after_s(value: str | None) -> float | None:
    """`Retry-After` in seconds (it may be a number of seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
