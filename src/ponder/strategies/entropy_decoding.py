"""`entropy_decoding`: entropix-style adaptive sampling. At every generated token the entropy
and varentropy of the model's next-token distribution (in nats) choose how that token is drawn:

- low entropy, low varentropy (sure): the most likely token;
- high entropy, low varentropy (many equal candidates): sampled at `explore_temperature`;
- low entropy, high varentropy (a few candidates above a tail): sampled among the
  `branch_top_k` most likely at `branch_temperature`;
- high entropy, high varentropy (lost): sampled at `resample_temperature` within a
  `resample_top_p` cut.

"High" is at or above `entropy_threshold` / `varentropy_threshold`. The rule needs the logits
of each step, so it runs inside the backend's decoding loop: only a backend that declares
`Capabilities.adaptive_sampling` (the embedded engine) can serve it; elsewhere a 400. The
request's logit bias, penalties and `response_format` grammar still shape the logits the rule
reads; its temperature and top-p are replaced by the rule's.

Calls: one, which draws the request's `n` choices (each with its own seed) and streams the
answer token by token to a streaming client. The trace has the rule's settings and, per
choice, how many tokens each action chose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from ponder.backends.base import ADAPTIVE_SAMPLING, AdaptiveSettings
from ponder.strategies.base import StrategyConfig
from ponder.strategies.context import RequestContext
from ponder.types import Completion, Message


class EntropyDecodingConfig(AdaptiveSettings, StrategyConfig):
    """The rule's settings, as the backend takes them (`AdaptiveSettings`)."""


class EntropyDecoding:
    slug: ClassVar[str] = "entropy_decoding"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = EntropyDecodingConfig
    draws_n: ClassVar[bool] = True

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, EntropyDecodingConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        ctx.require("adaptive_sampling")
        settings = self.config.model_dump()
        ctx.step("adaptive_sampling", **settings)
        sampling = ctx.sampling.with_(extra={**ctx.sampling.extra, ADAPTIVE_SAMPLING: settings})
        answers = await ctx.final(messages, sampling, n=ctx.n)
        for index, answer in enumerate(answers):
            if answer.sampling_actions is not None:
                ctx.step("actions", choice=index, **answer.sampling_actions)
        return answers
