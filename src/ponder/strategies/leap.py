"""`leap`: principles learned from mistakes on the conversation's own worked examples, after
Zhang et al. 2024 ("In-context principle learning from mistakes"):

1. the model lists the worked examples of the conversation (few-shot questions given with their
   answers, in the system prompt, earlier turns or the request), as `Question:` / `Answer:`
   blocks (a JSON list of `{"question", "answer"}` is read too). An example whose question is
   not in the conversation word for word (spacing and case aside), or whose answer is not
   written after it, is dropped, as the model made it up; so is one whose question is the whole
   request. At most `max_examples` are kept;
2. the model answers each example's question itself, at `temperature`, all at once. Each is a
   one-turn conversation of its own: the client's conversation holds the example's answer;
3. an attempt whose final answer differs from the given one is a mistake (an attempt cut off at
   the token limit has no answer and is neither right nor wrong); for each mistake, the model is
   shown the correct answer and states the mistake and a principle that avoids it, all at once;
4. one call condenses these low-level principles into at most `max_principles` high-level ones
   (a numbered list; unparseable, the low-level principles are used as they are);
5. the answer is the client's conversation with the principles added to its system prompt,
   streamed to a streaming client.

Without worked examples, or without a mistake on them, there is nothing to learn: the answer is
the client's conversation as it is. The examples, attempts and principles stream as reasoning.

Calls, with the defaults and `e` examples found (at most 4), `w` of them answered wrongly:
1 extraction + `e` attempts + `w` principles + 1 condensation (when `w` > 0) + 1 answer, so
2 (no examples), `e` + 2 (no mistakes), or `e` + `w` + 3: at most 11. A failed call fails the
request. For the request's `n`, the engine runs `n` independent runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field

from ponder.answers import extract_answer
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import (
    SampleTemperature,
    followup,
    helper_sampling,
    last_user_text,
    preview,
    voice,
    with_system,
)
from ponder.strategies.context import RequestContext, gather
from ponder.strategies.showing import after_request, listing, parse_list
from ponder.types import Completion, Message

EXTRACT_PROMPT = (
    "Do not answer my request. List the worked examples that this conversation shows: questions "
    "or tasks given together with their correct answers. Do not list my request itself. Copy "
    'each one exactly, as a block of two lines, "Question: ..." then "Answer: ...". Reply with '
    'only the blocks, or with "NONE" when there are no worked examples.'
)
ATTEMPT_PROMPT = (
    'Think step by step, then give your final answer on the last line as "Answer: ...".'
)
PRINCIPLE_PROMPT = (
    "Your answer is wrong. The correct answer is:\n{answer}\n\nCompare your working with the "
    "correct answer and find your mistake. Then state one general principle that would have "
    'avoided it. Reply in the form "Mistake: ... Principle: ...".'
)
LESSONS_INTRO = "Lessons learned from mistakes on worked examples:"
CONDENSE_PROMPT = (
    "Condense these lessons into at most {count} general, high-level principles for solving "
    "similar problems. Write them as a numbered list, one principle per line, and nothing else."
)
PRINCIPLES_INTRO = (
    "Principles learned from mistakes on the worked examples of this conversation; follow them:"
)

_BLOCK = re.compile(
    r"^[\s*#]*question[\s*]*:[\s*]*(.*?)^[\s*#]*answer[\s*]*:[\s*]*(.*?)"
    r"(?=^[\s*#]*question[\s*]*:|\Z)",
    re.IGNORECASE | re.DOTALL | re.MULTILINE,
)


class LeapConfig(StrategyConfig):
    max_examples: int = Field(
        4, ge=1, le=8, description="Most worked examples taken from the conversation"
    )
    max_principles: int = Field(
        5, ge=1, le=10, description="Most high-level principles added to the system prompt"
    )
    temperature: SampleTemperature = 0.7
    extract_tokens: int = Field(1024, ge=1, description="Token limit of the extraction call")
    attempt_tokens: int = Field(512, ge=1, description="Token limit of each attempt at an example")
    principle_tokens: int = Field(
        256, ge=1, description="Token limit of each call that learns from one mistake"
    )
    condense_tokens: int = Field(512, ge=1, description="Token limit of the condensation call")


@dataclass(frozen=True, slots=True)
class Example:
    question: str
    answer: str


def parse_examples(text: str | None) -> list[Example]:
    """The examples in the extraction reply: a JSON list of objects with `question` and `answer`,
    else `Question:` / `Answer:` blocks; none when there are neither."""
    raw = (text or "").strip()
    pairs = _json_pairs(raw)
    if pairs is None:
        pairs = _BLOCK.findall(raw)
    return [Example(q.strip(), a.strip()) for q, a in pairs if q.strip() and a.strip()]


def _json_pairs(text: str) -> list[tuple[str, str]] | None:
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end < start:
        return None
    try:
        data = json.loads(text[start : end + 1])
    except ValueError:
        return None
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        return None
    return [(str(item.get("question", "")), str(item.get("answer", ""))) for item in data]


def _squeezed(text: str) -> str:
    return " ".join(text.lower().split())


def asked_question(request: str) -> str:
    """The question a request asks: the sentence that ends at its last question mark, from the
    sentence end or line break before it ("" when the request has no question mark)."""
    end = request.rfind("?")
    if end < 0:
        return ""
    start = max(request.rfind(mark, 0, end) for mark in ".!?\n") + 1
    return request[start : end + 1].strip()


def grounded(examples: Sequence[Example], messages: Sequence[Message]) -> list[Example]:
    """The examples whose question is in the conversation with their answer written after it
    (spacing and case aside), and which are worked before the question the client asks: not
    the whole request, and not overlapping the request's last question. (On GSM8K the 1.5B
    listed the request's own question with a number from the problem above it, "How many
    spoons were in the package?" and "12", or with the start of the format line after it, "The
    answer is", and learned from those "mistakes".)"""
    shown = _squeezed("\n".join(m.text for m in messages))
    request = _squeezed(last_user_text(messages))
    asked = _squeezed(asked_question(request))
    asked_at = shown.rfind(asked) if asked else -1

    def found(e: Example) -> bool:
        question = _squeezed(e.question)
        at = shown.find(question)
        if at < 0 or question == request:
            return False
        if asked_at >= 0 and at + len(question) > asked_at and at < asked_at + len(asked):
            return False
        return shown.find(_squeezed(e.answer), at + len(question)) >= 0

    return [e for e in examples if found(e)]


def attempt_prompt(example: Example) -> list[Message]:
    return [Message("user", f"{example.question}\n\n{ATTEMPT_PROMPT}")]


class Leap:
    slug: ClassVar[str] = "leap"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = LeapConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, LeapConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        examples = await self._examples(ctx, messages)
        lessons = await self._lessons(ctx, examples) if examples else []
        if not lessons:
            if examples:
                ctx.reason("No mistakes to learn from: answering directly\n")
            return await ctx.final(messages, ctx.sampling)
        principles = await self._condense(ctx, lessons)
        taught = with_system(messages, f"{PRINCIPLES_INTRO}\n{listing(principles)}")
        return await ctx.final(taught, ctx.sampling)

    async def _examples(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Example]:
        """The conversation's worked examples, as the model lists them, checked against it."""
        (listed,) = await ctx.complete(
            after_request(messages, EXTRACT_PROMPT),
            helper_sampling(ctx.sampling, self.config.extract_tokens, 0.0),
        )
        found = parse_examples(listed.content)
        checked = grounded(found, messages)
        examples = checked[: self.config.max_examples]
        if examples:
            ctx.reason(f"Worked examples found: {len(examples)}\n")
        else:
            ctx.reason("No worked examples found: answering directly\n")
        ctx.step(
            "examples",
            examples=[{"question": e.question, "answer": e.answer} for e in examples],
            dropped=len(found) - len(checked),
        )
        return examples

    async def _lessons(self, ctx: RequestContext, examples: Sequence[Example]) -> list[str]:
        """The model's attempts at the examples; for each one it got wrong, what it learns."""
        cfg = self.config
        attempting = helper_sampling(
            ctx.sampling, cfg.attempt_tokens, ctx.sampling.temperature or cfg.temperature
        )
        attempts = [
            c
            for (c,) in await gather(
                [ctx.complete(attempt_prompt(e), attempting) for e in examples]
            )
        ]
        wrong: list[tuple[Example, Completion]] = []
        verdicts: list[str] = []
        for i, (example, attempt) in enumerate(zip(examples, attempts, strict=True), start=1):
            given, got = extract_answer(example.answer), voice(attempt)
            verdict = "unfinished" if got is None else "right" if got == given else "wrong"
            verdicts.append(verdict)
            if verdict == "wrong":
                wrong.append((example, attempt))
            ctx.reason(f"Example {i}: {verdict} ({preview(got, 40)}; given {preview(given, 40)})\n")
        ctx.step("attempts", attempts=[a.content or "" for a in attempts], verdicts=verdicts)
        if not wrong:
            return []
        learning = helper_sampling(ctx.sampling, cfg.principle_tokens, 0.0)
        learned = await gather(
            [
                ctx.complete(
                    followup(
                        attempt_prompt(example),
                        attempt.content or "",
                        PRINCIPLE_PROMPT.format(answer=example.answer),
                    ),
                    learning,
                )
                for example, attempt in wrong
            ]
        )
        lessons = [text for (c,) in learned if (text := " ".join((c.content or "").split()))]
        for lesson in lessons:
            ctx.reason(f"Mistake: {preview(lesson, 120)}\n")
        ctx.step("mistakes", lessons=lessons)
        return lessons

    async def _condense(self, ctx: RequestContext, lessons: Sequence[str]) -> list[str]:
        """High-level principles from the lessons (the lessons themselves when unparseable)."""
        cfg = self.config
        prompt = "\n\n".join(
            (LESSONS_INTRO, listing(lessons), CONDENSE_PROMPT.format(count=cfg.max_principles))
        )
        (condensed,) = await ctx.complete(
            [Message("user", prompt)], helper_sampling(ctx.sampling, cfg.condense_tokens, 0.0)
        )
        principles = (parse_list(condensed.content) or list(lessons))[: cfg.max_principles]
        for i, principle in enumerate(principles, start=1):
            ctx.reason(f"Principle {i}: {preview(principle, 120)}\n")
        ctx.step("principles", principles=principles)
        return principles
