"""`spl`, a plugin: system prompt learning. The query is classified into a problem type, the
tenant's best strategies for that type are added to the system prompt as a reference block,
and the rest of the route answers (`none` in `spl-model`; in `spl&sc-model`, `sc` samples with
the strategies in every sample's prompt, and learning judges the voted answer). In learning
mode the request then teaches the store: its outcome updates the
strategies' records, and a new strategy is written (or merged, or a failing one refined).

Calls: one classification (none when the query's type is cached), the rest of the route's
(with `none`, the answer: all `n` choices in one call); in learning mode also at most one judge
call and at most two evolution calls (write + merge, or one refinement). All of them are
metered and counted in the usage. The learning calls come after the answer (a streaming client
has it by then); if one of them fails or the request's call budget runs out, learning stops
(traced as `spl_learn_failed`) and the client still gets its answer.

The control arm: in learning mode a share of requests (`PONDER_SPL_EXPLORE`, 0.2) is answered
with no strategies at all. Their outcomes are the baseline of their problem type, which every
strategy of the type is promoted or retired against (`ponder.spl_store.decisions`).

Learning mode: the tenant has learning on (`ponder spl learn --tenant T on`), or the request
asks for it with `ponder: {"spl": {"learn": true}}` and the server lets clients do that
(`spl_client_learning`). `learn: false` turns it off for one request. The ground truth
(`answer`) is only accepted in learning mode. A learning request is recorded under its
request id, so that feedback can reach it later; a retry with the same id is not learned from
twice.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import Field

from ponder.errors import BackendError, BudgetExceeded, NotFound, PermissionDenied
from ponder.plugins.base import Inner
from ponder.spl.classify import classify
from ponder.spl.learn import evolve, outcome
from ponder.spl.proposals import Lesson
from ponder.spl.select import select, with_strategies
from ponder.spl.starter import starter_drafts
from ponder.spl_store import PROBLEM_TYPES, Status, Store, TenantSettings
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import last_user_text
from ponder.strategies.context import RequestContext
from ponder.types import Completion, Message


class SplConfig(StrategyConfig):
    answer: str | None = Field(
        None, description="The correct answer, to learn from (learning mode only)"
    )
    learn: bool | None = Field(
        None,
        description="true: learn from this request (if the server allows clients to); "
        "false: do not, even if the tenant learns",
    )
    judge: bool = Field(
        True, description="Without an answer, ask the model whether its answer was correct"
    )
    max_strategies: int = Field(3, ge=0, le=10, description="Most strategies added to the prompt")


class SystemPromptLearning:
    slug: ClassVar[str] = "spl"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = SplConfig
    wraps: ClassVar[Literal[True]] = True

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, SplConfig)
        self.config = config

    async def run(
        self, ctx: RequestContext, messages: Sequence[Message], inner: Inner
    ) -> list[Completion]:
        store = ctx.require_store()
        settings = await asyncio.to_thread(store.tenant, ctx.tenant)
        learning = self.learning(settings, store, may_learn=ctx.may_learn)
        if not settings.seeded:
            seeded = await asyncio.to_thread(store.seed, ctx.tenant, starter_drafts())
            ctx.step("spl_seed", strategies=seeded)

        query = last_user_text(messages)
        problem_type, cached = await classify(ctx, store, query)
        ctx.step("spl_classify", problem_type=problem_type, cached=cached)

        statuses: tuple[Status, ...] = ("active", "candidate") if learning else ("active",)
        pool = await asyncio.to_thread(store.strategies, ctx.tenant, problem_type, statuses)
        control = learning and in_control(learn_id(ctx), store.lifecycle.explore)
        limit = 0 if control else self.config.max_strategies
        chosen = select(query, pool, limit, learning)
        ids = [r.strategy.id for r in chosen]
        ctx.step(
            "spl_select",
            ids=ids,
            scores=[round(r.score, 3) for r in chosen],
            considered=len(pool),
            learning=learning,
            control=control,
        )
        used = ", ".join(f"#{i}" for i in ids) or "none"
        if control:
            used += " (control arm: measuring the baseline)"
        ctx.reason(f"Problem type: {problem_type}. Strategies used: {used}.\n")
        prompt = with_strategies(messages, problem_type, [r.strategy.text for r in chosen])
        choices = await inner(ctx, prompt)

        if learning:
            answer = (choices[0].content or "") if choices else ""
            try:
                await self.learn(ctx, store, problem_type, query, answer, tuple(ids), control)
            except (BackendError, BudgetExceeded) as exc:
                # The answer is there; learning is best effort and must not cost the client it.
                ctx.step("spl_learn_failed", error=exc.message)
        return choices

    def learning(self, settings: TenantSettings, store: Store, *, may_learn: bool = True) -> bool:
        """Whether this request learns; refuses what the client may not ask for. A client's
        `learn: true` needs the server's permission only where it changes anything (the
        tenant does not learn anyway). A key whose learning is off never learns."""
        asked = self.config.learn
        if not may_learn:
            if asked or self.config.answer is not None:
                raise PermissionDenied(
                    "this key may not change the tenant's strategies (its learning is off)",
                    param="ponder.spl.answer"
                    if self.config.answer is not None
                    else "ponder.spl.learn",
                )
            return False
        if asked is None:
            learning = settings.learning
        elif asked and not settings.learning:
            if not store.policy.client_learning:
                raise PermissionDenied(
                    "this server does not let clients turn on SPL learning; an operator can "
                    "turn it on for the tenant with `ponder spl learn`",
                    param="ponder.spl.learn",
                )
            learning = True
        else:
            learning = asked
        if self.config.answer is not None and not learning:
            raise PermissionDenied(
                "ponder.spl.answer is only accepted in learning mode", param="ponder.spl.answer"
            )
        return learning

    async def learn(
        self,
        ctx: RequestContext,
        store: Store,
        problem_type: str,
        query: str,
        answer: str,
        ids: tuple[int, ...],
        control: bool = False,
    ) -> None:
        """Record the request, apply its outcome, and evolve the strategies (still inside the
        request, so every call counts in its usage)."""
        if not query.strip() or not answer.strip():
            ctx.step("spl_learn", skipped="no question or no answer text")
            return
        request_id = learn_id(ctx)
        if await asyncio.to_thread(_recorded, store, ctx.tenant, request_id):
            # A client retrying with the same x-request-id: the first attempt was learned from.
            ctx.step("spl_learn", skipped="this request id was already learned from")
            return
        await asyncio.to_thread(
            store.record_request, ctx.tenant, request_id, problem_type, query, answer, ids, control
        )
        lesson = Lesson(request_id, problem_type, query, answer, self.config.answer, ids)
        correct, source = await outcome(ctx, lesson, self.config.judge)
        if correct is None:
            ctx.step("spl_outcome", correct=None, source=source)
        else:
            result = await asyncio.to_thread(
                store.record_outcome, ctx.tenant, request_id, correct, source
            )
            ctx.step(
                "spl_outcome",
                correct=correct,
                source=source,
                promoted=list(result.promoted),
                retired=list(result.retired),
            )
        await evolve(ctx, store, lesson, correct, PROBLEM_TYPES[problem_type])


def learn_id(ctx: RequestContext) -> str:
    """The id a learning request is recorded under: the request id, with the choice index
    where runs of a compound route share it (each records its own)."""
    return f"{ctx.request_id}.{ctx.choice_index}" if ctx.choice_index else ctx.request_id


def in_control(request_id: str, explore: float) -> bool:
    """Whether a learning request is in the control arm: a uniform draw from its id's hash,
    below `explore`. The same id always draws the same arm, so a retry is not counted in both;
    distinct ids land in the arm at the rate `explore`."""
    digest = hashlib.sha256(request_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < explore


def _recorded(store: Store, tenant: str, request_id: str) -> bool:
    try:
        store.request_outcome(tenant, request_id)
    except NotFound:
        return False
    return True
