"""`openai` backend: any OpenAI-compatible server (over HTTP as `upstream_http` speaks it)."""

from __future__ import annotations

import email.utils
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any, NoReturn

import orjson

from ponder import __version__
from ponder.backends.base import CLIENT_KEY, Capabilities
from ponder.backends.upstream_http import AiohttpUpstream, HTTPReply, UpstreamHTTP
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
from ponder.fastjson import dumps
from ponder.tokens import count_prompt_tokens, count_tokens
from ponder.types import Completion, Delta, Message, Sampling, Usage

log = logging.getLogger(__name__)

USER_AGENT = f"ponder/{__version__}"


CLIENT_KEY_SOURCE = "the key your request sent"


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
        http: UpstreamHTTP | None = None,
        continuation: bool = False,
        context_window: int | None = None,
        key_setting: str = "PONDER_UPSTREAM_API_KEY",
        key_from_client: bool = False,
    ) -> None:
        """`http` stands in for the network (tests); by default, `AiohttpUpstream`.
        `context_window`: the upstream model's, where the operator knows it (an upstream does
        not say). `key_setting` names where the key comes from, for the error when the
        upstream refuses it. `key_from_client`: a request's own key (`CLIENT_KEY`), where its
        client sent one, goes to the upstream instead of `api_key`."""
        self.capabilities = Capabilities(
            native_n=True,
            logprobs=True,
            tools=True,
            max_concurrency=64,
            continuation=continuation,
            context_window=context_window,
        )
        auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._headers = {"Accept": "application/json", "User-Agent": USER_AGENT, **auth}
        self._post_headers = {**self._headers, "Content-Type": "application/json"}
        self._secret = api_key
        self._key_setting = key_setting
        self._key_from_client = key_from_client
        self._http = http or AiohttpUpstream(
            base_url, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s
        )

    # ---- Backend protocol ------------------------------------------------------------------

    async def models(self) -> list[str]:
        response = await self._send("GET", "models")
        data = _object(response.body).get("data")
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
        await self._http.aclose()

    async def complete(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> list[Completion]:
        response = await self._send(
            "POST", "chat/completions", self._body(model, messages, sampling, n)
        )
        choices = completions_of(_object(response.body))
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
                    secret = self._auth(self._post_headers)[1]
                    message = _message_of(chunk, "upstream stream failed", secret)
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

    def _auth(self, headers: dict[str, str]) -> tuple[dict[str, str], str | None, str]:
        """A call's headers, the key they carry (kept out of errors) and where it came from:
        the request's own key where this backend takes it and the client sent one, else
        the server's."""
        key = CLIENT_KEY.get() if self._key_from_client else None
        if key is None:
            return headers, self._secret, self._key_setting
        return {**headers, "Authorization": f"Bearer {key}"}, key, CLIENT_KEY_SOURCE

    async def _events(self, body: dict[str, Any]) -> AsyncGenerator[str, None]:
        """The `data:` payloads of a streamed chat completion, as they arrive."""
        headers, secret, source = self._auth(self._post_headers)
        async with self._http.stream("chat/completions", dumps(body), headers) as response:
            if response.status >= 400:
                reply = HTTPReply(response.status, response.headers, await response.read())
                _raise_for(reply, secret, source)
            async for line in response.lines():
                if line.startswith(b"data:"):
                    yield line[5:].strip().decode("utf-8", "replace")

    async def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> HTTPReply:
        if body is None:
            headers, secret, source = self._auth(self._headers)
            response = await self._http.request(method, path, None, headers)
        else:
            headers, secret, source = self._auth(self._post_headers)
            response = await self._http.request(method, path, dumps(body), headers)
        if response.status >= 400:
            _raise_for(response, secret, source)
        return response


def _object(raw: str | bytes) -> dict[str, Any]:
    """A JSON object from the upstream, or a BackendError saying it sent something else."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
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


def _raise_for(response: HTTPReply, secret: str | None, key_setting: str) -> NoReturn:
    try:
        body: object = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        body = None
    status = response.status
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
        raise BackendError(f"the upstream rejected Ponder's credentials; check {key_setting}")
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
