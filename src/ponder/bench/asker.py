"""Asking one item through one approach, as the bench's client: the request (the suite's
messages, the run's sampling, a stable request id), its result scored and written at once, and
with `--trace` the strategy trace Ponder returned beside it."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import openai

from ponder.bench.report import BASELINE as NONE
from ponder.bench.report import SPL
from ponder.bench.results import JsonLines, ResultWriter
from ponder.bench.types import Item, ItemResult, Suite

if TYPE_CHECKING:
    from ponder.bench.runner import BenchConfig

BACKEND_CALLS_HEADER = "x-ponder-backend-calls"


def model_for(approach: str, model: str) -> str:
    """The request's model name: `<approach>-<model>`, or the model itself for "none"."""
    return model if approach == NONE else f"{approach}-{model}"


def _error_text(exc: openai.APIError) -> str:
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else None
    text = message if isinstance(message, str) else exc.message
    if isinstance(exc, openai.APIStatusError):
        return f"{exc.status_code}: {text}"
    return text


def _backend_calls(headers: Any) -> int | None:
    value = headers.get(BACKEND_CALLS_HEADER)
    return int(value) if value is not None and value.isdigit() else None


@dataclass
class Asker:
    """Asks items through one endpoint and writes each result as it comes."""

    client: openai.AsyncOpenAI
    suite: Suite
    config: BenchConfig
    model: str
    writer: ResultWriter
    done: set[tuple[str, str, str]]
    results: list[ItemResult]
    progress: bool
    traces: JsonLines | None = None
    code: str | None = None
    """Stamped on every result (`ItemResult.code`)."""

    async def ask(
        self, approach: str, item: Item, phase: str, ponder: dict[str, Any] | None
    ) -> ItemResult:
        """One request; an API error is the item's result (scored wrong), never the run's end.
        Latency is the whole request as the client saw it, retries included."""
        request: dict[str, Any] = {
            "model": model_for(approach, self.model),
            "messages": self.suite.messages(item),
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
            "seed": self.config.seed,
            # a stable id: SPL's control arm is drawn from it, so a rerun draws the same arms
            "extra_headers": {"x-request-id": f"bench-{phase}-{approach}-{item.id}"},
        }
        if self.config.ponder:  # the run's own options; the phase's (spl's learning) on top
            ponder = {**self.config.ponder, **(ponder or {})}
        if self.traces is not None:
            ponder = {**(ponder or {}), "trace": True}
        if ponder is not None:
            request["extra_body"] = {"ponder": ponder}
        base: dict[str, Any] = {
            "approach": approach,
            "item_id": item.id,
            "question": item.question,
            "expected": item.expected,
            "phase": phase,
            "code": self.code,
        }
        started = time.perf_counter()
        try:
            raw = await self.client.chat.completions.with_raw_response.create(**request)
            completion = raw.parse()
        except openai.APIError as exc:
            headers = exc.response.headers if isinstance(exc, openai.APIStatusError) else {}
            return ItemResult(
                **base,
                answer="",
                extracted=None,
                correct=False,
                prompt_tokens=0,
                completion_tokens=0,
                backend_calls=_backend_calls(headers),
                latency_s=time.perf_counter() - started,
                error=_error_text(exc),
            )
        latency = time.perf_counter() - started
        if self.traces is not None:
            extra = (completion.model_extra or {}).get("ponder") or {}
            self.traces.write_row({**base, "trace": extra.get("trace")})
        answer = (completion.choices[0].message.content or "") if completion.choices else ""
        extracted, correct = self.suite.score(item, answer)
        usage = completion.usage
        return ItemResult(
            **base,
            answer=answer,
            extracted=extracted,
            correct=correct,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            backend_calls=_backend_calls(raw.headers),
            latency_s=latency,
        )

    async def phase(
        self,
        phase: str,
        approach: str,
        items: Sequence[Item],
        concurrency: int,
        ponder: dict[str, Any] | None = None,
        truth: bool = False,
    ) -> None:
        """Ask the items not yet done, `concurrency` at a time; with `truth`, each request
        carries its item's expected answer for SPL to learn from."""
        from tqdm import tqdm

        todo = [item for item in items if (phase, approach, item.id) not in self.done]
        mine = [r for r in self.results if r.phase == phase and r.approach == approach]
        finished, correct = len(mine), sum(r.correct for r in mine)
        bar = tqdm(
            total=len(items),
            initial=len(items) - len(todo),
            desc=approach if phase == "eval" else f"{approach} ({phase})",
            unit="item",
            file=sys.stderr,
            disable=not self.progress,
        )
        gate = asyncio.Semaphore(concurrency)

        async def one(item: Item) -> None:
            nonlocal finished, correct
            options = ponder
            if truth:
                options = {SPL: {"learn": True, "answer": item.expected}}
            async with gate:
                result = await self.ask(approach, item, phase, options)
            self.writer.write(result)
            self.results.append(result)
            self.done.add((phase, approach, item.id))
            finished += 1
            correct += result.correct
            bar.update(1)
            bar.set_postfix(acc=f"{correct / finished:.1%}")

        try:
            async with asyncio.TaskGroup() as group:
                for item in todo:
                    group.create_task(one(item))
        finally:
            bar.close()
