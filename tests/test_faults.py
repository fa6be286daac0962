"""Fault injection: Ponder in front of an upstream that fails in every way real ones do.

One run per retry setting sends 66 concurrent requests through Ponder (`openai` backend) to a
`FaultyUpstream`: every fault (500, 429, 503, reset, truncate, stall, slow, garbage, an error
that echoes the upstream key) and none, with the strategies none, re2 and sc, streamed and
not. Each client sends its own token. The tests then check what came back: a valid completion
with the client's own answer, or an OpenAI-shaped error; every stream ends with `[DONE]` or an
in-band error; no client sees another's token; nothing is left in flight. The whole module
logs at DEBUG with canary keys (client and upstream), and no canary may appear in any log
record, header, body or metric.

The outcome shapes hold whatever the retry policy: a fault named by a marker in the prompt
fails every retry of that call in the same way.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion

from ponder.config import Settings
from ponder.faults import FaultyUpstream, marker_policy
from ponder.logs import handler_for
from ponder.proxy import create_app
from ponder.strategies.re2 import REREAD
from ponder.testing import running_server

API_KEY = "canary-client-key-3b9f71d0"
UPSTREAM_KEY = "canary-upstream-key-e4c2a86f"
CANARIES = (API_KEY, UPSTREAM_KEY)
MODEL = "fake-model"
DEADLINE_S = 3.0
"""The stalled requests wait this long; every other request of the burst finishes well within."""

FAULTS = (None, "500", "429", "503", "reset", "truncate", "stall", "slow", "garbage")
FAULTS += ("echo_key", "echo_key:500")
STRATEGIES = ("none", "re2", "sc")
SUCCEEDS = frozenset({None, "slow"})
ERROR_STATUSES = frozenset({429, 502, 503, 504})
"""What an upstream failure may become: never a 500 (Ponder's own bug) nor a 4xx blaming the
client for the upstream's failure."""
TOKEN = re.compile(r"tok[0-9a-f]{12}")


@dataclass(frozen=True)
class Case:
    """One client's request."""

    token: str
    strategy: str
    fault: str | None
    stream: bool
    n: int

    @property
    def prompt(self) -> str:
        return f"{self.token} [fault:{self.fault}]" if self.fault else self.token

    @property
    def model(self) -> str:
        return MODEL if self.strategy == "none" else f"{self.strategy}-{MODEL}"

    @property
    def answer(self) -> str:
        """What every choice says when the request succeeds."""
        if self.strategy == "re2":
            return f"echo: {self.prompt}\n{REREAD}{self.prompt}"
        return f"echo: {self.prompt}"

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": self.prompt}],
            "n": self.n,
            "stream": self.stream,
        }
        if self.strategy == "sc":
            body["ponder"] = {"sc": {"samples": 3}}
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return body


@dataclass
class Outcome:
    case: Case
    status: int
    headers: dict[str, str]
    text: str


@dataclass
class Run:
    """Everything one suite run saw."""

    retries: int
    outcomes: list[Outcome]
    metrics: str
    upstream_in_flight: int
    upstream_calls: int
    seconds: float


class LogCapture(logging.Handler):
    """Every record as Ponder's handler writes it (masked), and each record's raw text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.masked = io.StringIO()
        self.raw: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.raw.append(text)


def cases() -> list[Case]:
    out = []
    for i, (fault, strategy, stream) in enumerate(
        (f, s, st) for f in FAULTS for s in STRATEGIES for st in (False, True)
    ):
        token = f"tok{uuid.uuid4().hex[:12]}"
        out.append(Case(token, strategy, fault, stream, n=2 if i % 5 == 0 else 1))
    return out


async def send(client: httpx.AsyncClient, oai: openai.AsyncOpenAI, case: Case) -> Outcome:
    """Plain requests through the official client, streams through raw httpx (to see every
    byte of the event stream)."""
    if case.stream:
        async with client.stream("POST", "chat/completions", json=case.body()) as response:
            text = (await response.aread()).decode()
            return Outcome(case, response.status_code, dict(response.headers), text)
    body = case.body()
    extra = {"ponder": body["ponder"]} if "ponder" in body else None
    try:
        raw = await oai.chat.completions.with_raw_response.create(
            model=case.model, messages=body["messages"], n=case.n, extra_body=extra
        )
    except openai.APIStatusError as exc:
        r = exc.response
        return Outcome(case, r.status_code, dict(r.headers), r.text)
    completion = raw.parse()
    assert isinstance(completion, ChatCompletion)
    r = raw.http_response
    return Outcome(case, r.status_code, dict(r.headers), r.text)


async def drive(url: str, all_cases: list[Case]) -> list[Outcome]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with (
        httpx.AsyncClient(base_url=url + "/", headers=headers, timeout=30, limits=limits) as c,
        openai.AsyncOpenAI(base_url=url, api_key=API_KEY, max_retries=0, timeout=30) as oai,
    ):
        return list(await asyncio.gather(*(send(c, oai, case) for case in all_cases)))


def scrape(url: str) -> str:
    base = url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    deadline = time.monotonic() + 5
    while True:
        text = httpx.get(f"{base}/metrics", headers=headers, timeout=10).text
        if "ponder_in_flight_requests 0.0" in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


@pytest.fixture(scope="module")
def logs() -> Iterator[LogCapture]:
    """The whole module logs at DEBUG through Ponder's handler (secrets masked), and a raw
    handler keeps each record's unmasked text."""
    capture = LogCapture()
    settings = Settings(
        api_keys=[f"team:{API_KEY}"], upstream_api_key=UPSTREAM_KEY, log_format="json"
    )
    ponder_handler = handler_for(settings, capture.masked)
    root = logging.getLogger()
    saved = root.level
    root.addHandler(capture)  # first: it sees each record before the mask rewrites it
    root.addHandler(ponder_handler)
    root.setLevel(logging.DEBUG)
    yield capture
    root.removeHandler(ponder_handler)
    root.removeHandler(capture)
    root.setLevel(saved)


@pytest.fixture(scope="module", params=[0, 2], ids=["retries0", "retries2"])
def run(request: pytest.FixtureRequest, logs: LogCapture) -> Run:
    retries: int = request.param
    with FaultyUpstream(marker_policy, api_key=UPSTREAM_KEY) as upstream:
        settings = Settings(
            backend="openai",
            base_url=upstream.url,
            api_keys=[f"team:{API_KEY}"],
            upstream_api_key=UPSTREAM_KEY,
            deadline_s=DEADLINE_S,
            stream_keepalive_s=0.5,
            upstream_retries=retries,
            upstream_backoff_s=0.01,
            upstream_max_retry_wait_s=0.05,
            max_concurrent_requests=256,
        )
        with running_server(create_app(settings)) as url:
            started = time.monotonic()
            outcomes = asyncio.run(drive(url, cases()))
            seconds = time.monotonic() - started
            metrics = scrape(url)
            upstream.wait_in_flight(0, within_s=5)
        return Run(retries, outcomes, metrics, upstream.in_flight, upstream.requests, seconds)


# ---- checking one response -------------------------------------------------------------------


def assert_openai_error(error: Any) -> dict[str, Any]:
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    assert error["code"] != "internal_error", error
    return error


def sse_events(text: str) -> list[str]:
    """The `data:` payloads of a stream; every other line is a comment or blank."""
    data = []
    for line in text.split("\n"):
        if line.startswith("data: "):
            data.append(line[6:])
        else:
            assert line == "" or line.startswith(":"), f"not SSE: {line!r}"
    return data


def check_stream(o: Outcome) -> dict[str, Any] | None:
    """A well-formed stream: its in-band error (None if it succeeded)."""
    data = sse_events(o.text)
    assert data, "an empty stream"
    if data[-1] == "[DONE]":
        data = data[:-1]
    events = [json.loads(d) for d in data]
    errors = [e for e in events if "error" in e]
    if errors:
        assert len(errors) == 1 and events[-1] is errors[0], "the error must end the stream"
        events = events[:-1]
    else:
        assert sse_events(o.text)[-1] == "[DONE]", "a stream without an error ends with [DONE]"
    n_choices = o.case.n
    ids = {e["id"] for e in events}
    assert len(ids) <= 1
    content: dict[int, str] = {}
    finishes: dict[int, int] = {}
    for event in events:
        assert event["object"] == "chat.completion.chunk" and event["model"] == o.case.model
        for choice in event["choices"]:
            i = choice["index"]
            assert 0 <= i < n_choices
            content[i] = content.get(i, "") + (choice["delta"].get("content") or "")
            if choice["finish_reason"]:
                finishes[i] = finishes.get(i, 0) + 1
    if errors:
        return assert_openai_error(errors[0]["error"])
    assert finishes == dict.fromkeys(range(n_choices), 1)
    assert content == dict.fromkeys(range(n_choices), o.case.answer)
    assert events[-1]["usage"]["completion_tokens"] > 0
    return None


def check(o: Outcome) -> dict[str, Any] | None:
    """The response is a valid completion with the client's own answer, or an OpenAI-shaped
    error with a sensible status; returns the error (None on success)."""
    assert set(TOKEN.findall(o.text)) <= {o.case.token}, "another client's token"
    if o.status == 200 and o.case.stream:
        assert o.headers["content-type"].startswith("text/event-stream")
        return check_stream(o)
    if o.status == 200:
        completion = ChatCompletion.model_validate_json(o.text)
        assert [c.message.content for c in completion.choices] == [o.case.answer] * o.case.n
        assert completion.model == o.case.model
        return None
    assert o.status in ERROR_STATUSES, (o.status, o.text)
    assert o.headers["content-type"] == "application/json"
    return assert_openai_error(json.loads(o.text)["error"])


# ---- the tests ------------------------------------------------------------------------------


def test_every_response_is_a_completion_or_an_openai_error(run: Run) -> None:
    assert len(run.outcomes) == len(FAULTS) * len(STRATEGIES) * 2
    assert run.seconds < DEADLINE_S + 10
    for o in run.outcomes:
        error = check(o)
        if o.case.fault in SUCCEEDS:
            assert error is None and o.status == 200, (o.case, o.text)
        else:
            assert error is not None, o.case


def test_every_stream_ends_with_done_or_an_in_band_error(run: Run) -> None:
    streams = [o for o in run.outcomes if o.case.stream and o.status == 200]
    # sc streams its working from the start, so its failures can only come in-band
    assert {o.case.fault for o in streams if o.case.strategy == "sc"} == set(FAULTS)
    for o in streams:
        error = check_stream(o)
        assert (error is None) == (o.case.fault in SUCCEEDS), o.case


def test_no_response_reaches_the_wrong_client(run: Run) -> None:
    ids = []
    for o in run.outcomes:
        found = set(TOKEN.findall(o.text))
        assert found <= {o.case.token}
        if o.case.fault in SUCCEEDS:  # answered: its own token, under its own request id
            assert found == {o.case.token}
            ids.append(o.headers["x-request-id"])
    assert len(ids) == len(set(ids)) >= len(SUCCEEDS) * len(STRATEGIES) * 2


def test_a_stalled_upstream_ends_at_the_deadline(run: Run) -> None:
    stalled = [o for o in run.outcomes if o.case.fault == "stall"]
    assert len(stalled) == len(STRATEGIES) * 2
    for o in stalled:
        error = check(o)
        assert error is not None and error["code"] == "deadline_exceeded", o.text
        assert o.status in (200, 504)  # 200: the stream had started, the error came in-band
        if not o.case.stream:
            assert o.status == 504


def test_nothing_is_left_in_flight(run: Run) -> None:
    assert "ponder_in_flight_requests 0.0" in run.metrics
    assert run.upstream_in_flight == 0
    assert run.upstream_calls >= len(run.outcomes)
    tasks = re.search(r"^ponder_event_loop_tasks (\S+)$", run.metrics, re.M)
    assert tasks is not None and float(tasks.group(1)) < 20


def test_no_key_reaches_a_log_header_or_metric(run: Run, logs: LogCapture) -> None:
    lines = logs.masked.getvalue()
    assert len(lines.splitlines()) > 100  # the DEBUG log of the run is there to scan
    for canary in CANARIES:
        assert canary not in lines
        assert canary not in run.metrics
        for o in run.outcomes:
            assert all(canary not in f"{k}: {v}" for k, v in o.headers.items())


def test_no_key_reaches_a_log_record_even_unmasked(run: Run, logs: LogCapture) -> None:
    """Ponder never puts a key into a log record in the first place (the mask is a second
    line of defence, not the only one)."""
    assert logs.raw
    for canary in CANARIES:
        assert not [r for r in logs.raw if canary in r]


def test_no_key_reaches_a_response_body(run: Run) -> None:
    """An upstream error that quotes the key it was given (as providers do) reaches the
    client with the key masked, in plain answers and in-band in streams."""
    echoed = [o for o in run.outcomes if o.case.fault == "echo_key:500"]
    assert len(echoed) == len(STRATEGIES) * 2
    assert all("Incorrect API key provided" in o.text for o in echoed)
    for o in run.outcomes:
        for canary in CANARIES:
            assert canary not in o.text, (o.case, o.text)
