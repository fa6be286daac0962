"""`plansearch`: search over plans written in natural language, after Wang et al. 2024
("Planning in natural language improves LLM search for code generation"). Rather than sampling
many answers that tend to repeat one idea, the search varies the idea first:

1. the model lists `observations` first-order observations about the request (one call; its
   reply is read as a numbered or bulleted list, else taken whole as one observation);
2. subsets of them (pairs first, then triples, and so on: the first `plans`) are each combined
   into one new, second-order observation, all at once;
3. each subset, with its combined observation, becomes a plan in plain words, all at once;
4. a solution is written from each plan, all at once, with the client's sampling;
5. the model compares the solutions and ends with a line `Selected: k`. A solution that states
   a placeholder as its answer ("The answer is N.", a plan copied, not carried out) is not
   shown, unless all do; when one solution is left, it is the answer with no selection call.
   Without a usable line, the solution is chosen as `showing.best` chooses with no scores
   among those shown: one that finished over one cut off at the token limit, then the one
   whose final answer most solutions share, then the first.

The client gets the chosen solution's full text, as written. The observations, the plans and
the material of each step go to the model inside the client's last user turn, after its request;
the rest of the conversation is kept as it is. The observations, combinations, plans and the
choice stream as reasoning lines.

Calls: with the defaults (3 observations, 3 plans): 1 observation list + 3 combinations +
3 plans + 3 solutions + 1 selection = 11. A list of one observation needs no combination and
gives one plan and one solution, with nothing to select: 3 calls; so does a search where all
solutions but one state a placeholder: 10 calls. A failed call fails the
request. For the request's `n`, the engine runs `n` independent searches.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain, combinations, islice
from typing import ClassVar

from pydantic import Field

from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import SampleTemperature, helper_sampling, preview
from ponder.strategies.context import RequestContext, gather
from ponder.strategies.showing import (
    REQUESTED_FORM,
    after_request,
    best,
    listing,
    numbered,
    parse_list,
    selection,
    worked_out,
)
from ponder.types import Completion, Message

OBSERVE_PROMPT = (
    "Do not solve my request yet. List {count} useful, non-obvious observations about it: "
    "facts, constraints, properties or techniques that could help to solve it. Write them as a "
    'numbered list, one observation per line ("1. ..."), and nothing else.'
)
OBSERVATIONS_INTRO = "Observations about my request:"
COMBINE_PROMPT = (
    "Do not solve my request yet. Combine the observations above into one new, deeper "
    "observation that follows from them taken together. Reply with only that observation, in "
    "one or two sentences."
)
PLAN_PROMPT = (
    "Do not solve my request yet. Using these observations, write a short plan in plain words: "
    "the steps that will solve my request. Do not carry the steps out and do not give the "
    "answer."
)
PLAN_INTRO = "A plan for my request:"
SOLVE_PROMPT = (
    "Follow the plan to answer my request: write the complete answer, with its working, "
    f"{REQUESTED_FORM}. Do not mention the plan."
)
SOLUTIONS_INTRO = "Here are {count} candidate solutions to my request above:"
SELECT_PROMPT = (
    "Do not write a new solution. Compare the candidate solutions: check each one's steps and "
    "result against my request. Then end your reply with one line of the form "
    '"Selected: k", where k is the number of the best solution.'
)


class PlanSearchConfig(StrategyConfig):
    observations: int = Field(
        3, ge=1, le=8, description="How many first-order observations the model is asked to list"
    )
    plans: int = Field(
        3,
        ge=1,
        le=8,
        description="How many subsets of observations are combined, each into one plan and one "
        "solution",
    )
    temperature: SampleTemperature = 0.7
    observation_tokens: int = Field(
        512, ge=1, description="Token limit of the observation list and of each combination call"
    )
    plan_tokens: int = Field(512, ge=1, description="Token limit of each plan call")
    select_tokens: int = Field(512, ge=1, description="Token limit of the selection call")


def subsets(count: int, limit: int) -> list[tuple[int, ...]]:
    """The indices of the observations each plan starts from: the first `limit` pairs, then
    triples and so on; with fewer than two observations, the one set of all of them."""
    if count < 2:
        return [tuple(range(count))]
    by_size = (combinations(range(count), size) for size in range(2, count + 1))
    return list(islice(chain.from_iterable(by_size), limit))


class PlanSearch:
    slug: ClassVar[str] = "plansearch"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = PlanSearchConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, PlanSearchConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        cfg = self.config
        temperature = ctx.sampling.temperature or cfg.temperature
        noting = helper_sampling(ctx.sampling, cfg.observation_tokens, temperature)
        planning = helper_sampling(ctx.sampling, cfg.plan_tokens, temperature)

        (listed,) = await ctx.complete(
            after_request(messages, OBSERVE_PROMPT.format(count=cfg.observations)), noting
        )
        observations = parse_list(listed.content)[: cfg.observations]
        for i, observation in enumerate(observations, start=1):
            ctx.reason(f"Observation {i}: {preview(observation, 80)}\n")
        ctx.step("observations", observations=observations)

        groups = [[observations[i] for i in s] for s in subsets(len(observations), cfg.plans)]
        combined = await gather(
            [
                ctx.complete(
                    after_request(messages, OBSERVATIONS_INTRO, listing(g), COMBINE_PROMPT),
                    noting,
                )
                for g in groups
                if len(g) > 1
            ]
        )
        derived = iter((c.content or "").strip() for (c,) in combined)
        notes = [[*g, next(derived)] if len(g) > 1 else g for g in groups]
        for i, note in enumerate(notes, start=1):
            if len(note) > len(groups[i - 1]):
                ctx.reason(f"Combined observation {i}: {preview(note[-1], 80)}\n")
        ctx.step("combined", notes=notes)

        drafted = await gather(
            [ctx.complete(self._plan_prompt(messages, note), planning) for note in notes]
        )
        plans = [(c.content or "").strip() for (c,) in drafted]
        for i, plan in enumerate(plans, start=1):
            ctx.reason(f"Plan {i}: {preview(plan, 80)}\n")
        ctx.step("plans", plans=plans)

        written = await gather(
            [
                ctx.complete(after_request(messages, PLAN_INTRO, plan, SOLVE_PROMPT), ctx.sampling)
                for plan in plans
            ]
        )
        solutions = [c for (c,) in written]
        ctx.step("solutions", solutions=[s.content or "" for s in solutions])
        chosen = await self._select(ctx, messages, solutions)
        return [solutions[chosen]]

    @staticmethod
    def _plan_prompt(messages: Sequence[Message], note: Sequence[str]) -> list[Message]:
        if not note:
            return after_request(messages, PLAN_PROMPT)
        return after_request(messages, OBSERVATIONS_INTRO, listing(note), PLAN_PROMPT)

    async def _select(
        self, ctx: RequestContext, messages: Sequence[Message], solutions: Sequence[Completion]
    ) -> int:
        """The index of the solution the model selects, else the best by `showing.best` with no
        scores (finished first, then the most shared answer, then the first)."""
        shown = worked_out(solutions)
        if len(shown) == 1:
            return shown[0]
        candidates = [solutions[i] for i in shown]
        prompt = after_request(
            messages,
            SOLUTIONS_INTRO.format(count=len(candidates)),
            numbered("Solution", candidates),
            SELECT_PROMPT,
        )
        (verdict,) = await ctx.complete(
            prompt, helper_sampling(ctx.sampling, self.config.select_tokens, 0.0)
        )
        picked = selection(verdict.content, len(candidates))
        at = best(candidates, [0.0] * len(candidates)) if picked is None else picked
        selected = None if picked is None else shown[picked]
        chosen = shown[at]
        how = "by the model" if selected is not None else "by shared answer"
        ctx.reason(f"Selected solution {chosen + 1} ({how})\n")
        ctx.step(
            "selection",
            shown=[i + 1 for i in shown],
            verdict=verdict.content or "",
            selected=selected,
            chosen=chosen,
        )
        return chosen
