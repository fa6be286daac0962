"""`mars`: multi-agent reasoning with cross-verification. Several agents answer the client's
conversation at once, each at its own temperature (spread evenly from `min_temperature` to
`max_temperature`: 0.3, 0.65 and 1.0 for the default 3 agents). Each solution is then checked
by the model in two independent verification passes (two samples of the same check, at
`verify_temperature`), each ending in a `VERDICT: CORRECT` or `VERDICT: INCORRECT` line; a
solution counts as verified only when both passes say CORRECT (a pass without a verdict line
does not). For up to `rounds` rounds, every solution that a pass judged INCORRECT is improved,
one call each and all at once, with those passes' reviews in view, and the improved solutions
are verified again (two passes). A pass without a verdict line asks for no improvement: on
Qwen2.5-Coder 1.5B such reviews mostly approve in their own words ("This step holds."), and
`refine`'s revisions on them only made answers worse. The final answer is the majority answer
(`voice`, then `majority_vote`) among the verified solutions that have one, else among all; a
tie among the verified goes to the answer that more of all the solutions give (on GSM8K the
1.5B's agents said 24, 6, 24, only the 6 and one 24 were verified, and the first, 6, won),
then to the earlier; the client gets the full text of the first solution that gave it, as it
came back (no fresh generation, so nothing more streams).

The solution under check, and then the reviews, go to the model inside the client's last user
turn, after its request; the rest of the conversation is kept as it is.

Calls at the defaults (3 agents, 1 round), on a backend without native `n`: 3 answers, then
2 verification passes per solution, all 6 at once: 9 when no solution is judged INCORRECT;
when every one is, 3 improvements and 6 more passes: 18. In general `3 * agents` to
`3 * agents * (1 + rounds)`. With native `n`, the two passes of a solution are one call: 6 to
12. A failed call fails the request. For the request's `n`, the engine runs `n` independent
runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field

from ponder.answers import majority_vote
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import helper_sampling, preview, voice
from ponder.strategies.context import RequestContext, gather
from ponder.strategies.showing import REQUESTED_FORM, after_request, verdict
from ponder.types import Completion, Message

VERDICT = "VERDICT:"
CORRECT = "CORRECT"
INCORRECT = "INCORRECT"
VERDICTS = (INCORRECT, CORRECT)
PASSES = 2

SOLUTION_INTRO = "A proposed solution to my request above:"
VERIFY_PROMPT = (
    "Do not write your own solution. Verify the proposed solution one step at a time: say what "
    "each step claims, redo its calculation yourself, and say whether it holds; then check that "
    "it answers exactly what my request asks. List every issue you find. End with one last "
    f"line: `{VERDICT} {CORRECT}` if the solution is right, or `{VERDICT} {INCORRECT}` if it "
    "is not."
)
ISSUES_INTRO = "A reviewer checked this solution and found these issues:"
IMPROVE_PROMPT = (
    "Write an improved, complete solution to my request that fixes these issues, with its "
    f"working, ending with the final answer {REQUESTED_FORM}. Do not mention the review."
)
NO_ANSWER = "(no answer)"
NO_VERDICT = "no verdict"
PREVIEW_CHARS = 80


class MultiAgentReasoningConfig(StrategyConfig):
    agents: int = Field(3, ge=2, le=8, description="How many agents answer at once")
    min_temperature: float = Field(
        0.3, gt=0, le=2, description="Temperature of the first agent (the most focused)"
    )
    max_temperature: float = Field(
        1.0, gt=0, le=2, description="Temperature of the last agent (the most varied)"
    )
    rounds: int = Field(
        1,
        ge=0,
        le=3,
        description="Rounds of improving the solutions a verification pass judged INCORRECT",
    )
    verify_temperature: float = Field(
        0.7, gt=0, le=2, description="Temperature of the two independent verification passes"
    )
    verify_tokens: int = Field(512, ge=16, le=8192, description="Token limit of each pass")


@dataclass(frozen=True, slots=True)
class Check:
    """The verification of one solution: the text of each pass, and each one's verdict."""

    reviews: tuple[str, ...]
    verdicts: tuple[str | None, ...]

    @property
    def correct(self) -> tuple[bool, ...]:
        return tuple(v == CORRECT for v in self.verdicts)

    @property
    def verified(self) -> bool:
        """Whether every pass said CORRECT."""
        return all(self.correct)

    @property
    def rejected(self) -> bool:
        """Whether a pass said INCORRECT (what asks for an improvement)."""
        return INCORRECT in self.verdicts

    @property
    def issues(self) -> str:
        """The reviews of the passes that said INCORRECT, a paragraph each."""
        failed = [r for r, v in zip(self.reviews, self.verdicts, strict=True) if v == INCORRECT]
        return "\n\n".join(r.strip() or "(the reviewer gave no details)" for r in failed)


def temperatures(config: MultiAgentReasoningConfig) -> list[float]:
    """Each agent's temperature, evenly spread from the lowest to the highest."""
    low, high, k = config.min_temperature, config.max_temperature, config.agents
    return [round(low + (high - low) * i / (k - 1), 4) for i in range(k)]


class MultiAgentReasoning:
    slug: ClassVar[str] = "mars"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = MultiAgentReasoningConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, MultiAgentReasoningConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        samplings = [ctx.sampling.with_(temperature=t) for t in temperatures(self.config)]
        solutions = await gather([ctx.complete(messages, s) for s in samplings])
        current = [s for (s,) in solutions]
        for i, (solution, sampling) in enumerate(zip(current, samplings, strict=True), start=1):
            ctx.reason(
                f"Agent {i} (temperature {sampling.temperature:g}): "
                f"{preview(solution.content, PREVIEW_CHARS)}\n"
            )
        ctx.step("agents", solutions=[s.content or "" for s in current])
        checks = await self.verify(ctx, messages, current, list(range(len(current))), 0)

        for r in range(1, self.config.rounds + 1):
            failing = [i for i, check in enumerate(checks) if check.rejected]
            if not failing:
                break
            improved = await gather(
                [
                    ctx.complete(
                        after_request(
                            messages,
                            SOLUTION_INTRO,
                            current[i].content or "",
                            ISSUES_INTRO,
                            checks[i].issues,
                            IMPROVE_PROMPT,
                        ),
                        samplings[i],
                    )
                    for i in failing
                ]
            )
            for i, (solution,) in zip(failing, improved, strict=True):
                current[i] = solution
                ctx.reason(f"Improved {i + 1}: {preview(solution.content, PREVIEW_CHARS)}\n")
            ctx.step(
                "improvement",
                round=r,
                improved=[i + 1 for i in failing],
                solutions=[current[i].content or "" for i in failing],
            )
            rechecked = await self.verify(ctx, messages, current, failing, r)
            for i, check in zip(failing, rechecked, strict=True):
                checks[i] = check
        return [self.aggregate(ctx, current, checks)]

    async def verify(
        self,
        ctx: RequestContext,
        messages: Sequence[Message],
        solutions: Sequence[Completion],
        which: Sequence[int],
        r: int,
    ) -> list[Check]:
        """Two independent verification passes of each solution in `which`, all at once."""
        sampling = helper_sampling(
            ctx.sampling, self.config.verify_tokens, self.config.verify_temperature
        )
        passes = await gather(
            [ctx.sample(verify_messages(messages, solutions[i]), PASSES, sampling) for i in which]
        )
        checks = [
            Check(
                tuple(p.content or "" for p in reviews),
                tuple(verdict(p.content or "", VERDICTS, VERDICT) for p in reviews),
            )
            for reviews in passes
        ]
        verdicts = [list(c.verdicts) for c in checks]
        for i, said in zip(which, verdicts, strict=True):
            ctx.reason(f"Check {i + 1}: {', '.join(v or NO_VERDICT for v in said)}\n")
        ctx.step("verification", round=r, solutions=[i + 1 for i in which], verdicts=verdicts)
        return checks

    def aggregate(
        self, ctx: RequestContext, solutions: list[Completion], checks: list[Check]
    ) -> Completion:
        """The first solution giving the majority answer among the verified ones that have an
        answer, else among all; a tie goes to the answer more of all the solutions give, then
        to the earlier."""
        answers = [voice(s) for s in solutions]
        verified = [i for i, c in enumerate(checks) if c.verified and answers[i] is not None]
        pool = verified or list(range(len(solutions)))
        pooled = [answers[i] for i in pool]
        vote = majority_vote(pooled)
        support = Counter(a for a in answers if a is not None)
        winner = max(vote.leaders, key=lambda a: support[a], default=None)
        chosen = pool[pooled.index(winner)] if winner is not None else pool[0]
        ctx.reason(
            f"Vote among {'verified' if verified else 'all'} solutions: "
            f"{winner if winner is not None else NO_ANSWER} "
            f"({vote.count} of {len(pool)}"
            f"{f', the tie decided by all {len(solutions)}' if len(vote.leaders) > 1 else ''})\n"
        )
        ctx.step(
            "vote",
            answers=answers,
            verified=[i + 1 for i in verified],
            tally=vote.tally,
            winner=winner,
            chosen=chosen + 1,
        )
        return solutions[chosen]


def verify_messages(messages: Sequence[Message], solution: Completion) -> list[Message]:
    return after_request(messages, SOLUTION_INTRO, solution.content or "", VERIFY_PROMPT)
