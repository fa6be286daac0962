"""`mcts`: Monte Carlo tree search over replies and their revisions. The root is the client's
conversation as it came; its children are replies to it, and a deeper node is a revision of its
parent's reply: the model is shown that reply after the client's request and asked to check it
and write its reply again, corrected where needed. Each of `simulations` simulations:

1. **selection**: from the root, while the node has children, go to the child with the highest
   UCT score, `value / visits + exploration * sqrt(ln(parent visits) / visits)` (on a tie,
   the earlier child; an unvisited child would come first, but every child is rated as it is
   made);
2. **expansion**: the node reached is given `actions` children, candidate assistant replies
   sampled at once (one call with a native-`n` backend);
3. **simulation**: each new child is rolled forward `depth` revisions, one sampled revision a
   turn (with `depth` 0, the child's own reply is rated);
4. **value**: the model rates, at temperature 0, how well the last reply of each state reached
   answers the client's request, from 0 to 10 (read with `read_score`: where the backend
   reports log-probabilities, the rating's expected value under them, since a judge that writes
   8 or 10 for nearly everything is still more or less sure of it; else the number written;
   unreadable counts as 0), normalised to 0..1; the new children's rollouts, and then their
   ratings, run at once;
5. **back-propagation**: each value is added to its child and to every node above it, each
   counting one visit.

After the simulations the answer is the reply of the root's best child: the higher mean value,
then the most visited, then the earlier; it is returned as the model wrote it (no new
generation, so nothing streams but the working).

Choices of this implementation, to keep a search cheap and deterministic:

- A state goes on with a fixed request for a revision (check the reply against the request
  and write it again, corrected where needed), not a follow-up the model invents: the client
  wants its own request answered, and an invented follow-up would take the dialogue to other
  questions, whose replies say little about how well a reply answers that request. A deeper
  node thus costs no call to set up.
- The reply to revise goes to the model inside the client's last user turn, after its
  request, as its rating shows it the reply to rate: asked as a second turn of the
  dialogue instead ("check your last reply against my request before it"), the 1.5B model
  took the follow-up for the whole request in 40 of 180 rollouts on GSM8K ("your request is
  incomplete", "I cannot read your request"), and such a rollout's low rating fell on the
  reply it was meant to revise. A revision is shown only the reply it revises, not the ones
  above it.
- A rollout is one sampled reply a turn, not a choice among several, and every new child is
  rolled out and rated rather than one picked at random: with few simulations every candidate
  still gets a value, and nothing is random but the model's own samples.
- The reply returned answers the client's conversation as it came; deeper replies are
  revisions, and only tell how far the reply above them can be taken.

The answer goes by mean value, not by visits as in a long search: with the defaults' two
simulations, the child whose rollout was rated best is expanded in the second and then has the
most visits whatever its children score, so choosing by visits would make the second
simulation's nine calls count for nothing. By mean value, a reply whose revisions rate badly
falls behind the others.

Calls: per simulation, `actions` replies (one call with native `n`), `actions x depth` rollout
replies and `actions` ratings: `simulations x actions x (2 + depth)` in all, 18 at the defaults
(2 x 3 x 3); with native `n`, `simulations x (1 + actions x (1 + depth))`, 14. A failed call
fails the request. For the request's `n`, the engine runs `n` independent searches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import Field

from ponder.strategies import common
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import (
    RatingConfidence,
    SampleTemperature,
    helper_sampling,
    preview,
    rating_sampling,
    read_score,
    varied,
)
from ponder.strategies.context import RequestContext, gather
from ponder.strategies.showing import after_request, marked
from ponder.types import Completion, Message, Sampling

REPLY_INTRO = "Here is a reply to my request above:"
REVISE_PROMPT = (
    "Check this reply against my request, step by step. Then write your complete reply to my "
    "request again, corrected where needed, so that it stands on its own."
)
VALUE_PROMPT = (
    "How well does this reply answer my request: is it correct, complete and clear? Rate it "
    "from 0 (not at all) to 10 (perfectly). Reply with only the number."
)


class MCTSConfig(StrategyConfig):
    simulations: int = Field(2, ge=1, le=16, description="How many simulations the search runs")
    exploration: float = Field(
        0.2, ge=0, le=10, description="Weight of the exploration term of the UCT score"
    )
    depth: int = Field(
        1,
        ge=0,
        le=4,
        description="How many revisions each new node is rolled forward before it is rated (0: "
        "the node's own reply is rated)",
    )
    actions: int = Field(
        3, ge=1, le=8, description="How many candidate replies each expansion samples"
    )
    temperature: SampleTemperature = 0.7
    value_tokens: int = Field(8, ge=1, description="Token limit of each rating call")
    confidence: RatingConfidence = True


@dataclass(eq=False)
class Node:
    """A reply (a revision of its parent's, below the root's children), or the root (none)."""

    reply: Completion | None = None
    parent: Node | None = None
    path: tuple[int, ...] = ()
    children: list[Node] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0

    @property
    def mean(self) -> float:
        return self.value / self.visits if self.visits else 0.0

    @property
    def label(self) -> str:
        """The node's place in the tree: "2" for the root's second child, "2.1" for its first."""
        return ".".join(str(i) for i in self.path)

    def child(self, reply: Completion) -> Node:
        node = Node(reply, self, (*self.path, len(self.children) + 1))
        self.children.append(node)
        return node


def uct(node: Node, parent_visits: int, exploration: float) -> float:
    """The UCT score of `node`: its mean value plus the exploration term; infinite for a node
    never visited."""
    return common.uct(node.mean, node.visits, parent_visits, exploration)


def best_child(node: Node) -> Node:
    """The child the search settles on: the higher mean value, then the most visited, then the
    earlier."""
    return max(node.children, key=lambda c: (c.mean, c.visits))


def continuation(messages: Sequence[Message], reply: Completion | None) -> list[Message]:
    """The conversation a reply is sampled for: the client's as it came (at the root), or with
    the reply to revise and the request for a revision after its request."""
    if reply is None:
        return list(messages)
    return after_request(messages, REPLY_INTRO, marked(reply), REVISE_PROMPT)


class MonteCarloTreeSearch:
    slug: ClassVar[str] = "mcts"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = MCTSConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, MCTSConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        cfg = self.config
        sampling = varied(ctx.sampling, cfg.temperature)
        rating = rating_sampling(
            helper_sampling(ctx.sampling, cfg.value_tokens, 0.0),
            cfg.confidence and ctx.backend.capabilities.logprobs,
        )
        root = Node()
        for simulation in range(1, cfg.simulations + 1):
            leaf = self._select(root)
            where = f"reply {leaf.label}" if leaf.path else "the request"
            ctx.reason(f"Simulation {simulation}: expanding {where}\n")
            replies = await ctx.sample(continuation(messages, leaf.reply), cfg.actions, sampling)
            children = [leaf.child(reply) for reply in replies]
            rollouts = await self._roll_out(ctx, messages, replies, sampling)
            values = await self._rate(ctx, messages, [r[-1] for r in rollouts], rating)
            for child, reply, value in zip(children, replies, values, strict=True):
                self._back_propagate(child, value)
                ctx.reason(
                    f"Reply {child.label}: {preview(reply.content, 80)} (value {value:.2f})\n"
                )
            ctx.step(
                "simulation",
                simulation=simulation,
                expanded=list(leaf.path),
                replies=[r.content or "" for r in replies],
                rollouts=[[t.content or "" for t in r[1:]] for r in rollouts],
                values=values,
            )
        chosen = best_child(root)
        ctx.reason(
            f"Chosen reply {chosen.label}: {chosen.visits} visits, mean value {chosen.mean:.2f}\n"
        )
        ctx.step(
            "choice",
            visits=[c.visits for c in root.children],
            values=[c.mean for c in root.children],
            chosen=chosen.path[0],
        )
        assert chosen.reply is not None
        return [chosen.reply]

    def _select(self, node: Node) -> Node:
        while node.children:
            parent = node
            node = max(
                parent.children, key=lambda c: uct(c, parent.visits, self.config.exploration)
            )
        return node

    async def _roll_out(
        self,
        ctx: RequestContext,
        messages: Sequence[Message],
        replies: Sequence[Completion],
        sampling: Sampling,
    ) -> list[list[Completion]]:
        """Each child's reply followed by the `depth` revisions of its rollout, each turn of all
        the rollouts at once."""
        rollouts = [[reply] for reply in replies]
        for _ in range(self.config.depth):
            turned = await gather(
                [ctx.complete(continuation(messages, r[-1]), sampling) for r in rollouts]
            )
            for rollout, (reply,) in zip(rollouts, turned, strict=True):
                rollout.append(reply)
        return rollouts

    @staticmethod
    async def _rate(
        ctx: RequestContext,
        messages: Sequence[Message],
        replies: Sequence[Completion],
        rating: Sampling,
    ) -> list[float]:
        """How well each reply answers the client's request, from 0 to 1, all rated at once."""
        rated = await gather(
            [
                ctx.complete(after_request(messages, REPLY_INTRO, marked(r), VALUE_PROMPT), rating)
                for r in replies
            ]
        )
        return [(read_score(r, 0, 10) or 0.0) / 10 for (r,) in rated]

    @staticmethod
    def _back_propagate(node: Node, value: float) -> None:
        walk: Node | None = node
        while walk is not None:
            walk.visits += 1
            walk.value += value
            walk = walk.parent
