"""`deepthink`: SELF-DISCOVER (Zhou et al., 2024) with uncertainty-routed chain of thought.

First the model composes a reasoning structure for the task, in three calls one after another,
each at temperature 0 and each with the material inside the client's last user turn, after its
request: SELECT picks the reasoning modules that fit the task from a fixed list of short ones
(`MODULES`); ADAPT rewrites the selected modules for this task; IMPLEMENT turns them into a
step-by-step plan, a short JSON object of steps. When the selection names no module of the list,
or more than `MAX_SELECTED` of them (it repeated the list rather than choosing: Qwen2.5-Coder
1.5B named all 16 on a GSM8K probe, and the 16-step plan left its chains cut off before any
answer), a default set is used (`DEFAULT_MODULES`); an empty adaptation falls back to the
selected modules, and a plan without a JSON object is used as written.

Then `chains` chains of thought are sampled at once from the client's conversation, with the
structure after its system prompt. When the share of chains that agree on the majority answer
(`voice`, then `majority_vote`) is at least `threshold`, the first chain with that answer is
returned as it is; otherwise the model is unsure, and one greedy call (temperature 0) with the
same structure gives the answer, which streams to a streaming client.

Calls at the defaults (3 chains): 3 to build the structure, 3 chains, and 1 greedy call when
the chains disagree: 6 or 7 (4 or 5 with native `n`, where the chains are one call). A failed
call fails the request. For the request's `n`, the engine runs `n` independent runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from ponder.answers import majority_vote
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import (
    SampleTemperature,
    helper_sampling,
    preview,
    varied,
    voice,
    with_system,
)
from ponder.strategies.context import RequestContext
from ponder.strategies.showing import after_request
from ponder.types import Completion, Message

MODULES: tuple[tuple[str, str], ...] = (
    ("Decompose", "break the problem into smaller sub-problems and solve them in order"),
    ("Work backwards", "start from what is asked and trace back to what is given"),
    ("Check arithmetic", "redo each step's calculation to confirm it"),
    ("Knowns and unknowns", "list the given quantities and the ones to find before starting"),
    ("Restate", "say the problem in your own words to be sure what is asked"),
    ("Analogy", "recall a similar problem and reuse the method that solved it"),
    ("Equations", "write the relations between the quantities as equations"),
    ("Simple case", "try a small or simple case first, then generalise"),
    ("Tabulate", "keep track of cases or values in a list or table"),
    ("Assumptions", "question each assumption: is it stated, or only supposed?"),
    ("Estimate", "estimate the answer roughly and compare it with the result"),
    ("Alternatives", "think of more than one approach and take the simplest"),
    ("Timeline", "follow the events in the order they happen"),
    ("Units", "check the units and what each number counts"),
    ("Edge cases", "consider special cases and exceptions"),
    ("Answer check", "check that the final answer responds to exactly what was asked"),
)
DEFAULT_MODULES = (0, 2, 15)
MAX_SELECTED = 5
"""The most modules a selection may name (it is asked for 2 to 4); past it, the default set."""

SELECT_PROMPT = (
    "Do not solve my task yet. From these reasoning modules, select the 2 to 4 that would help "
    "most in solving it:\n\n{modules}\n\nReply with the number and name of each module you "
    "select, one per line, like `1. Decompose`."
)
ADAPT_PROMPT = (
    "Do not solve my task yet. These reasoning modules were selected for it:\n\n{modules}\n\n"
    "Rewrite each module so that it says what to do for this particular task: one line each."
)
IMPLEMENT_PROMPT = (
    "Do not solve my task yet. These reasoning modules were adapted to it:\n\n{adapted}\n\n"
    "Turn them into a step-by-step reasoning structure for solving the task: a short JSON "
    "object whose keys are the steps in order, each with an empty string to fill in while "
    'solving, like {{"Step 1: ...": "", "Step 2: ...": "", "Final answer": ""}}. Reply with '
    "the JSON only."
)
SOLVE_INSTRUCTIONS = (
    "Solve the user's task by following this reasoning structure, filling in each step in "
    "order, then give the final answer on a last line of its own, as `The answer is ...`.\n\n"
    "{structure}"
)
NO_ANSWER = "(no answer)"
PREVIEW_CHARS = 200

_LEADING_NUMBER = re.compile(r"^\W*(?:module\s*)?(\d{1,2})\b", re.IGNORECASE)


class DeepThinkConfig(StrategyConfig):
    chains: int = Field(3, ge=2, le=16, description="How many chains of thought are sampled")
    threshold: float = Field(
        0.6,
        ge=0,
        le=1,
        description="Share of chains that must agree on the majority answer for it to be "
        "returned; below it, one greedy call answers",
    )
    temperature: SampleTemperature = 0.7
    plan_tokens: int = Field(
        512,
        ge=16,
        le=8192,
        description="Token limit of each of the select, adapt and implement calls",
    )


def numbered(indices: Sequence[int]) -> str:
    """The modules at `indices`, one a line, as "3. Check arithmetic: redo each ..."."""
    return "\n".join(f"{i + 1}. {MODULES[i][0]}: {MODULES[i][1]}" for i in indices)


def selected_modules(reply: str) -> list[int]:
    """The indices of the modules a SELECT reply names, by a line's leading number or by
    name, in list order; empty when it names none."""
    chosen: set[int] = set()
    for line in reply.splitlines():
        lead = _LEADING_NUMBER.match(line)
        if lead and 1 <= int(lead.group(1)) <= len(MODULES):
            chosen.add(int(lead.group(1)) - 1)
    lowered = reply.lower()
    chosen.update(i for i, (name, _) in enumerate(MODULES) if name.lower() in lowered)
    return sorted(chosen)


def structure_of(reply: str) -> str:
    """The plan in an IMPLEMENT reply: its outermost JSON object when it has one, else the
    reply as written (stripped)."""
    start, end = reply.find("{"), reply.rfind("}")
    if 0 <= start < end:
        return reply[start : end + 1]
    return reply.strip()


class DeepThink:
    slug: ClassVar[str] = "deepthink"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = DeepThinkConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, DeepThinkConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        structure = await self.discover(ctx, messages)
        solving = with_system(messages, SOLVE_INSTRUCTIONS.format(structure=structure))
        sampling = varied(ctx.sampling, self.config.temperature)
        chains = await ctx.sample(solving, self.config.chains, sampling)
        answers = [voice(c) for c in chains]
        for i, answer in enumerate(answers, start=1):
            ctx.reason(f"Chain {i}: {answer if answer is not None else NO_ANSWER}\n")
        vote = majority_vote(answers)
        share = vote.count / len(chains)
        sure = vote.winner is not None and share >= self.config.threshold
        ctx.reason(
            f"Agreement: {vote.winner if vote.winner is not None else NO_ANSWER} "
            f"({vote.count} of {len(chains)}, {share:.2f} "
            f"{'>=' if sure else '<'} {self.config.threshold:g})"
            f"{'' if sure else ': answering greedily'}\n"
        )
        ctx.step(
            "chains",
            tally=vote.tally,
            winner=vote.winner,
            share=round(share, 4),
            routed="majority" if sure else "greedy",
        )
        if sure:
            return [chains[vote.first]]
        return await ctx.final(solving, ctx.sampling.with_(temperature=0.0))

    async def discover(self, ctx: RequestContext, messages: Sequence[Message]) -> str:
        """SELECT, ADAPT and IMPLEMENT, one after another: the task's reasoning structure."""
        planning = helper_sampling(ctx.sampling, self.config.plan_tokens, 0.0)
        listed = numbered(range(len(MODULES)))
        (select,) = await ctx.complete(
            after_request(messages, SELECT_PROMPT.format(modules=listed)), planning
        )
        chosen = selected_modules(select.content or "")
        usable = 0 < len(chosen) <= MAX_SELECTED
        modules = chosen if usable else list(DEFAULT_MODULES)
        ctx.reason(f"Modules: {', '.join(MODULES[i][0] for i in modules)}\n")
        ctx.step(
            "select",
            modules=[MODULES[i][0] for i in modules],
            parsed=bool(chosen),
            named=len(chosen),
            default=not usable,
        )

        (adapt,) = await ctx.complete(
            after_request(messages, ADAPT_PROMPT.format(modules=numbered(modules))), planning
        )
        adapted = (adapt.content or "").strip() or numbered(modules)
        ctx.reason(f"Adapted: {preview(adapted, PREVIEW_CHARS)}\n")
        ctx.step("adapt", adapted=adapted)

        (implement,) = await ctx.complete(
            after_request(messages, IMPLEMENT_PROMPT.format(adapted=adapted)), planning
        )
        structure = structure_of(implement.content or "") or adapted
        ctx.reason(f"Structure: {preview(structure, PREVIEW_CHARS)}\n")
        ctx.step("implement", structure=structure)
        return structure
