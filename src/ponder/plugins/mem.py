"""`mem`, a plugin: episodic memory. Earlier exchanges of the same tenant that are relevant to
the new question are recalled into the system prompt, the rest of the route answers (`none` in
`mem-model`: one call; `sc` in `mem&sc-model`), and the new exchange is remembered for later.

Why: a small model forgets everything between requests; giving it the answers it (or the
client) already settled lets a fact told once be used again, without a second backend call.

- Recall: the tenant's stored episodes (this conversation's, or with `scope: "tenant"` all of
  them) are ranked by TF-IDF cosine similarity to the new question; episodes marked wrong by
  feedback (`outcome` False) are never recalled. The `top_k` most relevant at or above
  `min_similarity` are added after the client's system prompt as a delimited reference block.
- Answer: the rest of the route, on the conversation with the reference block; its calls are
  the only backend calls (with `none`, exactly one, drawing the request's `n` choices).
- Remember: the question and choice 0's answer are stored with their vector; the store prunes
  the tenant's episodes past the server's size cap and age limit in the same transaction.

The conversation is the `conversation` option, else the request's `user` field, else
"default". Episodes are always read and written for the request's tenant only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from pydantic import Field
from sqlalchemy.exc import SQLAlchemyError

from ponder import vectors
from ponder.plugins.base import Inner
from ponder.spl_store import EpisodeRecord, Store
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import last_user_text, preview, with_system
from ponder.strategies.context import RequestContext
from ponder.types import Completion, Message

log = logging.getLogger(__name__)

DEFAULT_CONVERSATION = "default"
MAX_CONVERSATION = 128
"""The longest conversation key the store holds; a longer `user` field is hashed."""

QUESTION_CHARS = 400
ANSWER_CHARS = 600
"""Recalled questions and answers are put on one line and cut to these lengths, so that a few
long exchanges cannot crowd out the client's own prompt."""

REFERENCE_HEADER = (
    "### Reference: relevant past exchanges\n"
    "Earlier questions and the answers given; use them where they help, "
    "the instructions above take precedence."
)
REFERENCE_ENTRY = "Q: {question}\nA: {answer}"
REFERENCE_FOOTER = "### End of reference"


class MemoryConfig(StrategyConfig):
    conversation: Annotated[str, Field(min_length=1, max_length=MAX_CONVERSATION)] | None = Field(
        None,
        description="Which conversation the exchange belongs to (default: the request's "
        "`user` field, else 'default')",
    )
    scope: Literal["conversation", "tenant"] = Field(
        "conversation",
        description="Recall from this conversation only, or from all of the tenant's",
    )
    top_k: int = Field(3, ge=0, le=20, description="Most past exchanges recalled")
    min_similarity: float = Field(
        0.1, ge=0, le=1, description="Least similarity (cosine, 0..1) of a recalled exchange"
    )
    remember: bool = Field(True, description="Whether this exchange is stored for later")


@dataclass(frozen=True, slots=True)
class Recalled:
    episode: EpisodeRecord
    score: float


class EpisodicMemory:
    slug: ClassVar[str] = "mem"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = MemoryConfig
    wraps: ClassVar[Literal[True]] = True

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, MemoryConfig)
        self.config = config

    async def run(
        self, ctx: RequestContext, messages: Sequence[Message], inner: Inner
    ) -> list[Completion]:
        store = ctx.require_store()
        question = last_user_text(messages)
        conversation = conversation_of(self.config.conversation, ctx.sampling.extra.get("user"))

        recalled = await self._recall(store, ctx.tenant, conversation, question)
        count = len(recalled)
        ctx.reason(f"Recalled {count} past exchange{'' if count == 1 else 's'}.\n")
        ctx.step(
            "mem_recall",
            conversation=conversation,
            scope=self.config.scope,
            ids=[r.episode.id for r in recalled],
            scores=[round(r.score, 4) for r in recalled],
        )
        prompt = with_reference(messages, recalled)

        choices = await inner(ctx, prompt)

        answer = choices[0].content if choices else None
        if self.config.remember and question.strip() and answer:
            await self._remember(ctx, store, conversation, question, answer)
        return choices

    async def _recall(
        self, store: Store, tenant: str, conversation: str, question: str
    ) -> list[Recalled]:
        """The most relevant episodes not known to be wrong, most relevant first (the newer
        first among equals)."""
        if self.config.top_k == 0 or not question.strip():
            return []
        within = conversation if self.config.scope == "conversation" else None
        episodes = await asyncio.to_thread(store.episodes, tenant, within)
        candidates = [e for e in episodes if e.outcome is not False]
        if not candidates:
            return []
        scores = vectors.similarities(
            vectors.vector(question), [vectors.from_bytes(e.vector) for e in candidates]
        )
        ranked = sorted(
            (Recalled(e, float(s)) for e, s in zip(candidates, scores, strict=True)),
            key=lambda r: -r.score,
        )
        return [r for r in ranked if r.score >= self.config.min_similarity][: self.config.top_k]

    async def _remember(
        self, ctx: RequestContext, store: Store, conversation: str, question: str, answer: str
    ) -> None:
        """Store the exchange. The answer has already been produced (and maybe streamed), so a
        database failure here is logged and traced rather than failing the request. A key whose
        learning is off recalls but stores nothing."""
        if not ctx.may_learn:
            ctx.step("mem_remember", stored=False, reason="this key's learning is off")
            return
        try:
            episode_id = await asyncio.to_thread(
                store.add_episode,
                ctx.tenant,
                conversation,
                ctx.request_id,
                question,
                answer,
                vectors.to_bytes(vectors.vector(f"{question}\n{answer}")),
                max_episodes=store.policy.memory_max_episodes,
                max_age=store.policy.memory_max_age,
            )
        except SQLAlchemyError as exc:
            log.warning("mem: could not store the exchange of %s: %s", ctx.request_id, exc)
            ctx.step("mem_remember", stored=False, error=type(exc).__name__)
            return
        ctx.step("mem_remember", stored=True, id=episode_id)


def conversation_of(option: str | None, user: object) -> str:
    """The conversation key: the option, else the request's `user` field (hashed when longer
    than the store holds), else "default"."""
    if option is not None:
        return option
    if isinstance(user, str) and user:
        if len(user) <= MAX_CONVERSATION:
            return user
        return "user-sha256:" + hashlib.sha256(user.encode()).hexdigest()
    return DEFAULT_CONVERSATION


def clip(text: str, limit: int) -> str:
    """`text` on one line; cut to `limit` characters, marked with "...", when longer."""
    flat = preview(text, len(text))
    return flat if len(flat) <= limit else preview(flat, limit - 4).rstrip() + " ..."


def reference_block(recalled: Sequence[Recalled]) -> str:
    entries = [
        REFERENCE_ENTRY.format(
            question=clip(r.episode.question, QUESTION_CHARS),
            answer=clip(r.episode.answer, ANSWER_CHARS),
        )
        for r in recalled
    ]
    return "\n".join([REFERENCE_HEADER, *entries, REFERENCE_FOOTER])


def with_reference(messages: Sequence[Message], recalled: Sequence[Recalled]) -> list[Message]:
    """The conversation with the reference block after the client's system prompt (or as the
    system prompt); unchanged when nothing was recalled."""
    if not recalled:
        return list(messages)
    return with_system(messages, reference_block(recalled))
