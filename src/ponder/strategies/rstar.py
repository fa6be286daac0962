"""`rstar`: mutual reasoning, after Qi et al. 2024 ("Mutual Reasoning Makes Smaller LLMs Stronger
Problem-Solvers"). A Monte Carlo tree search generates reasoning trajectories; a second pass
keeps those the model can reach again from half of their steps; the best of them is answered.

Generation. Each node of the tree is a partial trajectory: the steps so far, and the rephrased
request when it descends from one. A node's children come from rStar's actions, one call each,
all at once: A1 the next single step; A2 all the remaining steps, to the answer; A3 the next
sub-question and its answer; A4, only after an A3 node whose reply came in the `Sub-question:`,
`Sub-answer:` form, that sub-question answered again, carefully, step by step (replacing its
sub-answer); A5, at the root only, the request rephrased with each of its conditions listed
(its subtree works from the rephrasing). A child that states its final answer ("The answer
is ...", `\\boxed{}`, `####`), or an A2 child that finished, is terminal; an A2 child cut off at
its token limit or stating a placeholder ("The answer is <answer>.", the prompts' format
copied), or a non-terminal child at `max_depth`, is a dead end. Each of `rollouts` rollouts:

1. selects from the root by UCT (`c`): an unvisited child first, else the highest
   `value / visits + c * sqrt(ln(parent visits) / visits)` (ties to the earlier action; dead
   ends are never selected), down to a node not yet expanded;
2. expands it, and while none of its new children is terminal goes on expanding its first
   open child (rolling out), until a terminal child appears or none is left to expand;
3. rewards each new terminal child with its answer's self-consistency: the share of all the
   terminal trajectories found so far (its own included) that give the same final answer;
   the rollout's reward is their mean (0 when it found none; a rollout that selects a terminal
   node again re-scores it, with no call) and is added to every node on its path.

Discrimination. For each distinct terminal trajectory, its lines are cut at about half (the
first `lines // 2` are kept; rStar cuts at a random step) and the model completes it from that
prefix with the A2 prompt, all at once. A trajectory whose completion finishes with the same
final answer (`extract_answer`) is confirmed.

The answer. Among the confirmed trajectories, the one with the highest reward (its terminal
node's mean value); ties go to the answer more trajectories share, then the earlier. With none
confirmed, the same order over all of them. The chosen trajectory's steps become an assistant
turn and one last call, with the client's sampling, writes the final answer from it ("Using the
reasoning above, ..."), streamed to a streaming client: a trajectory is a list of labelled
steps and sub-questions, not a reply written for the client, and the last call puts it in the
form the request asks for, under the client's own `max_tokens` and `stop`. With no terminal
trajectory at all, that call answers the conversation as it is.

Each rollout, each check and the choice stream as reasoning lines and go into the trace. The
request, the rephrasing and the steps so far go to the model inside the client's last user
turn, after its request; the rest of the conversation is kept as it is.

Calls at the defaults (5 rollouts, depth 3): an expansion is 3 or 4 calls (the root's 4: A1,
A2, A3, A5; after an A3 node 4, else 3). Commonly the first four rollouts expand the root and
its three open children and the fifth expands one more node or none: about 14 to 18 calls, then
one check per distinct terminal trajectory (about 4 to 8), then the final call: about 19 to 27.
At worst a rollout expands `max_depth` nodes and its last expansion's 4 children are all
terminal: `4 * rollouts * max_depth + 4 * rollouts + 1` = 81. Each expansion's calls, and the
checks, are one call per prompt (a native-`n` backend does not merge them). A failed call fails
the request; so does a call past the budget (a 400). For the request's `n`, the engine runs `n`
independent searches.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import Field

from ponder.strategies import common
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import (
    SampleTemperature,
    followup,
    helper_sampling,
    voice,
    without_step_label,
)
from ponder.strategies.context import RequestContext, gather
from ponder.strategies.showing import REQUESTED_FORM, after_request
from ponder.types import Completion, Message, Sampling

ANSWER_FORMAT = '"The answer is <answer>."'
REPHRASE_PROMPT = (
    "Do not solve my request. Rephrase it: list each condition it gives, one per line, then "
    "the question it asks. Reply with only the rephrased request."
)
STEP_PROMPT = (
    "Write only the next single step of reasoning towards answering my request, in one or two "
    f"sentences. If that step reaches the final answer, end it with {ANSWER_FORMAT}"
)
REST_PROMPT = (
    "Write all the remaining steps of reasoning that answer my request, one step per line, "
    f"through to the final answer, and end with {ANSWER_FORMAT}"
)
SUBQUESTION_PROMPT = (
    "Ask the next sub-question that has to be answered to solve my request, and answer it. "
    "Reply in exactly this form:\nSub-question: <the sub-question>\nSub-answer: <its answer, "
    "with a short working>\nIf the sub-answer is the final answer to my request, end it with "
    f"{ANSWER_FORMAT}"
)
REANSWER_PROMPT = (
    "Answer the last sub-question above again, carefully, thinking step by step. Reply with "
    f"only the new sub-answer. If it is the final answer to my request, end it with "
    f"{ANSWER_FORMAT}"
)
REPHRASED_INTRO = "My request, rephrased:"
PARTIAL_INTRO = "The reasoning so far:"
FINAL_PROMPT = (
    f"Using the reasoning above, give the final answer to my original request, {REQUESTED_FORM}."
)

ROOT = "root"
ONE_STEP = "one_step"  # A1
REST = "remaining_steps"  # A2
SUBQUESTION = "subquestion"  # A3
REANSWER = "reanswer"  # A4
REPHRASE = "rephrase"  # A5
PROMPTS = {
    ONE_STEP: STEP_PROMPT,
    REST: REST_PROMPT,
    SUBQUESTION: SUBQUESTION_PROMPT,
    REANSWER: REANSWER_PROMPT,
    REPHRASE: REPHRASE_PROMPT,
}

_STATES_ANSWER = re.compile(r"\\boxed\{|####|\bfinal answer\b|\banswer is\b", re.IGNORECASE)
_SUBQUESTION = re.compile(
    r"sub-?question\s*:\s*(.*?)\s*sub-?answer\s*:\s*(.*)", re.IGNORECASE | re.DOTALL
)


class RStarConfig(StrategyConfig):
    rollouts: int = Field(5, ge=1, le=32, description="How many rollouts the tree search runs")
    max_depth: int = Field(
        3, ge=1, le=8, description="How many actions deep a trajectory may go (A5 counts as one)"
    )
    c: float = Field(
        1.4, ge=0, le=10, description="UCT exploration weight (0 follows the best value only)"
    )
    temperature: SampleTemperature = 0.7
    step_tokens: int = Field(
        256, ge=1, description="Token limit of a next step (A1), a sub-question (A3), a rephrasing"
    )
    answer_tokens: int = Field(
        512,
        ge=1,
        description="Token limit of the remaining steps (A2), a re-answer (A4) and each check",
    )


@dataclass(frozen=True, slots=True)
class Step:
    action: str
    text: str
    question: str | None = None
    """The sub-question an A3 or A4 step answers."""


@dataclass(eq=False)
class Node:
    action: str
    steps: tuple[Step, ...]
    rephrasing: str | None
    depth: int
    answer: str | None = None
    """The final answer, for a terminal node."""
    dead: bool = False
    expanded: bool = False
    children: list[Node] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0

    @property
    def terminal(self) -> bool:
        return self.answer is not None

    @property
    def open(self) -> bool:
        return not (self.terminal or self.dead or self.expanded)

    @property
    def reward(self) -> float:
        return self.value / self.visits if self.visits else 0.0

    @property
    def key(self) -> tuple[str | None, str]:
        return self.rephrasing, steps_text(self.steps)


def steps_text(steps: Sequence[Step]) -> str:
    """The steps as "Step 1: ...\\nStep 2: ...": the text of a trajectory."""
    return "\n".join(f"Step {i}: {s.text}" for i, s in enumerate(steps, start=1))


def states_answer(text: str) -> bool:
    """Whether `text` states a final answer ("answer is", "final answer", boxed, ####)."""
    return _STATES_ANSWER.search(text) is not None


def prefix_lines(steps: Sequence[Step]) -> tuple[str, int, int]:
    """The first half of a trajectory's lines (rounded down), how many, and of how many."""
    lines = [line for line in steps_text(steps).splitlines() if line.strip()]
    cut = len(lines) // 2
    return "\n".join(lines[:cut]), cut, len(lines)


def uct(child: Node, parent_visits: int, c: float) -> float:
    return common.uct(child.reward, child.visits, parent_visits, c)


class RStar:
    slug: ClassVar[str] = "rstar"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = RStarConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, RStarConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        search = Search(self.config, ctx, messages)
        for r in range(1, self.config.rollouts + 1):
            await search.rollout(r)
        distinct: dict[tuple[str | None, str], Node] = {}
        for t in search.terminals:
            distinct.setdefault(t.key, t)
        trajectories = list(distinct.values())
        if not trajectories:
            ctx.reason("No complete trajectory: answering directly\n")
            ctx.step("choice", chosen=None)
            return await ctx.final(messages, ctx.sampling)
        agreed = await search.discriminate(trajectories)
        chosen = choose(trajectories, agreed)
        best = trajectories[chosen]
        ctx.reason(
            f"Chosen: trajectory {chosen + 1} (answer {best.answer}, reward {best.reward:.2f}, "
            f"{'confirmed' if agreed[chosen] else 'unconfirmed'})\n"
        )
        ctx.step(
            "choice",
            chosen=chosen + 1,
            answer=best.answer,
            reward=best.reward,
            confirmed=agreed[chosen],
        )
        return await ctx.final(
            followup(messages, steps_text(best.steps), FINAL_PROMPT), ctx.sampling
        )


def choose(trajectories: Sequence[Node], agreed: Sequence[bool]) -> int:
    """The index of the confirmed trajectory (else of any) with the highest reward; ties to the
    answer more trajectories give, then to the earlier."""
    pool = [i for i, ok in enumerate(agreed) if ok] or list(range(len(trajectories)))
    shares = Counter(t.answer for t in trajectories)

    def rank(i: int) -> tuple[float, int, int]:
        t = trajectories[i]
        return (t.reward, shares[t.answer], -i)

    return max(pool, key=rank)


class Search:
    """The tree of one request's search, and the calls that grow and check it."""

    def __init__(
        self, config: RStarConfig, ctx: RequestContext, messages: Sequence[Message]
    ) -> None:
        self.config = config
        self.ctx = ctx
        self.messages = messages
        temperature = ctx.sampling.temperature or config.temperature
        self.short = helper_sampling(ctx.sampling, config.step_tokens, temperature)
        self.long = helper_sampling(ctx.sampling, config.answer_tokens, temperature)
        self.root = Node(ROOT, (), None, 0)
        self.terminals: list[Node] = []

    def prompt(self, node: Node, action: str, partial: str | None = None) -> list[Message]:
        blocks: list[str] = []
        if node.rephrasing is not None:
            blocks += [REPHRASED_INTRO, node.rephrasing]
        lines = steps_text(node.steps) if partial is None else partial
        if lines:
            blocks += [PARTIAL_INTRO, lines]
        return after_request(self.messages, *blocks, PROMPTS[action])

    def sampling(self, action: str) -> Sampling:
        return self.long if action in (REST, REANSWER) else self.short

    @staticmethod
    def actions(node: Node) -> list[str]:
        actions = [ONE_STEP, REST, SUBQUESTION]
        if node.action == SUBQUESTION and node.steps[-1].question is not None:
            actions.append(REANSWER)
        if node.action == ROOT:
            actions.append(REPHRASE)
        return actions

    async def expand(self, node: Node) -> None:
        actions = self.actions(node)
        replies = await gather(
            [self.ctx.complete(self.prompt(node, a), self.sampling(a)) for a in actions]
        )
        node.expanded = True
        for action, (reply,) in zip(actions, replies, strict=True):
            node.children.append(self.child(node, action, reply))

    def child(self, parent: Node, action: str, reply: Completion) -> Node:
        text = (reply.content or "").strip()
        steps, rephrasing = parent.steps, parent.rephrasing
        if action == REPHRASE:
            rephrasing = text
        elif action == SUBQUESTION and (parsed := _SUBQUESTION.search(text)):
            question, answer = parsed.group(1).strip(), parsed.group(2).strip()
            steps += (Step(action, f"Sub-question: {question}\nSub-answer: {answer}", question),)
        elif action == REANSWER:
            question = parent.steps[-1].question
            last = Step(action, f"Sub-question: {question}\nSub-answer: {text}", question)
            steps = (*steps[:-1], last)
        else:
            steps += (Step(action, without_step_label(text)),)
        node = Node(action, steps, rephrasing, parent.depth + 1)
        if action != REPHRASE and (action == REST or states_answer(text)):
            node.answer = voice(reply)  # none when cut off or a placeholder: not terminal
        if not node.terminal and (action == REST or node.depth >= self.config.max_depth):
            node.dead = True
        return node

    def select(self, node: Node) -> Node:
        candidates = [c for c in node.children if not c.dead]
        if not candidates:
            return node
        scores = [uct(c, node.visits, self.config.c) for c in candidates]
        return candidates[max(range(len(candidates)), key=lambda i: (scores[i], -i))]

    def score(self, node: Node) -> float:
        """Self-consistency: the share of the terminal trajectories so far giving its answer."""
        agreeing = sum(t.answer == node.answer for t in self.terminals)
        return agreeing / len(self.terminals)

    async def rollout(self, r: int) -> None:
        node, path = self.root, [self.root]
        while node.expanded and (chosen := self.select(node)) is not node:
            node = chosen
            path.append(node)
        expanded: list[list[str]] = []
        found: list[Node] = []
        while node.open:
            await self.expand(node)
            expanded.append([c.action for c in node.children])
            found = [c for c in node.children if c.terminal]
            following = next((c for c in node.children if c.open), None)
            if found or following is None:
                break
            node = following
            path.append(node)
        self.terminals += found
        for t in found:
            t.visits, t.value = 1, self.score(t)
        if found:
            reward = sum(t.value for t in found) / len(found)
            outcome = f"answers {', '.join(str(t.answer) for t in found)}"
        elif node.terminal:
            reward = self.score(node)
            outcome = f"answer {node.answer} again"
        else:
            reward, outcome = 0.0, "no answer"
        for n in path:
            n.visits += 1
            n.value += reward
        route = " > ".join(n.action for n in path)
        self.ctx.reason(f"Rollout {r}: {route}: {outcome} (reward {reward:.2f})\n")
        self.ctx.step(
            "rollout",
            rollout=r,
            path=[n.action for n in path],
            expanded=expanded,
            answers=[t.answer for t in found],
            reward=reward,
        )

    async def discriminate(self, trajectories: Sequence[Node]) -> list[bool]:
        """Whether each trajectory, completed by the model from half of its lines, reaches the
        same final answer again."""
        cuts = [prefix_lines(t.steps) for t in trajectories]
        completions = await gather(
            [
                self.ctx.complete(self.prompt(t, REST, prefix), self.long)
                for t, (prefix, _, _) in zip(trajectories, cuts, strict=True)
            ]
        )
        completed = [voice(c) for (c,) in completions]
        agreed = [a == t.answer for a, t in zip(completed, trajectories, strict=True)]
        for i, t in enumerate(trajectories):
            _, kept, total = cuts[i]
            self.ctx.reason(
                f"Check {i + 1}: answer {t.answer}, completed from {kept} of {total} lines to "
                f"{completed[i]}: {'agrees' if agreed[i] else 'disagrees'}\n"
            )
        self.ctx.step(
            "discrimination",
            trajectories=[steps_text(t.steps) for t in trajectories],
            rephrased=[t.rephrasing is not None for t in trajectories],
            answers=[t.answer for t in trajectories],
            rewards=[t.reward for t in trajectories],
            kept_lines=[kept for _, kept, _ in cuts],
            completions=[c.content or "" for (c,) in completions],
            completed=completed,
            agreed=agreed,
        )
        return agreed
