"""`executecode`, a plugin: Python code in the conversation is run in the server's sandbox (the
`python` tool, `ponder.sandbox.code`) and the model is shown what it printed.

- Code in the request: when the last user message holds ```python (or untagged) code blocks,
  the first `max_blocks` are run and their outputs appended to that message, each between
  lines that mark it as the sandbox's output (cut to `max_output_chars`); the rest of the route
  (`none` in `executecode-model`, `sc` in `executecode&sc-model`) then answers. No call of its
  own.
- Code in the answer: otherwise the rest of the route answers first, its answer held back (its
  reasoning still streams). A choice whose answer holds code blocks has them run, and one more
  call shows the model its answer and the outputs and asks for the final answer, which streams
  (the held-back answer streams as reasoning). A choice without code is the answer as it is,
  sent whole: no extra call.

Every block runs on its own, in a fresh interpreter. A run that fails (an exception, a timeout,
the memory limit) is its "Error: ..." output, shown to the model: it does not fail the request.
The server must turn code execution on (PONDER_ENABLE_CODE_EXECUTION); otherwise the request is
refused (403) before any backend call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import ClassVar, Literal

from pydantic import Field

from ponder.errors import PermissionDenied
from ponder.plugins.base import Inner, reasoning_only
from ponder.plugins.untrusted import defused
from ponder.sandbox.code import MAX_OUTPUT_CHARS
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import followup, last_user_text, preview, rewrite_last_user
from ponder.strategies.context import RequestContext, gather
from ponder.strategies.programs import PYTHON, python_blocks
from ponder.strategies.tools import OPTIONAL_TOOLS, Tool
from ponder.types import Completion, Message

REQUEST_HEADER = (
    "Ponder ran the Python code blocks above in a sandbox, each on its own in a fresh "
    "interpreter. What each printed:"
)
ANSWER_HEADER = (
    "Ponder ran the Python code blocks of your answer in a sandbox, each on its own in a fresh "
    "interpreter. What each printed:"
)
FINAL_PROMPT = (
    "Check your answer against these outputs and give your final answer to my request, "
    "correcting whatever the outputs show to be wrong. Do not mention the sandbox unless my "
    "request asks about it."
)
BEGIN = "<<<BEGIN SANDBOX OUTPUT {number}>>>"
END = "<<<END SANDBOX OUTPUT {number}>>>"
CUT = "\n[cut: {total} characters in all, the first {shown} shown]"


class ExecuteCodeConfig(StrategyConfig):
    max_blocks: int = Field(3, ge=1, le=10, description="Most code blocks run (the first ones)")
    max_output_chars: int = Field(
        2000,
        ge=100,
        le=MAX_OUTPUT_CHARS,
        description="Most characters of each block's output shown to the model",
    )


class ExecuteCode:
    slug: ClassVar[str] = "executecode"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = ExecuteCodeConfig
    wraps: ClassVar[Literal[True]] = True

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, ExecuteCodeConfig)
        self.config = config

    async def run(
        self, ctx: RequestContext, messages: Sequence[Message], inner: Inner
    ) -> list[Completion]:
        tool = ctx.tools.get(PYTHON)
        if tool is None:
            raise PermissionDenied(
                "the executecode plugin runs code, which this server does not do (an operator "
                f"turns it on with {OPTIONAL_TOOLS[PYTHON]}=true)",
                param="model",
            )
        blocks = python_blocks(last_user_text(messages))[: self.config.max_blocks]
        if blocks:
            outputs = await self._run(ctx, tool, blocks, messages, "request")
            shown = self.outputs_block(REQUEST_HEADER, outputs)
            return await inner(ctx, rewrite_last_user(messages, lambda t: f"{t}\n\n{shown}"))

        held = reasoning_only(ctx.sink) if ctx.sink is not None else None
        choices = await inner(replace(ctx, sink=held), messages)
        checks = [
            self._checked(ctx.for_choice(ctx.choice_index + i), tool, messages, choice)
            for i, choice in enumerate(choices)
        ]
        return await gather(checks) if checks else []

    async def _checked(
        self, ctx: RequestContext, tool: Tool, messages: Sequence[Message], choice: Completion
    ) -> Completion:
        """The choice as it is when its answer holds no code; else the final answer written
        from the answer and its code's outputs (one call, streamed)."""
        blocks = [] if choice.tool_calls else python_blocks(choice.content)
        if not blocks:
            ctx.step("executecode", source="answer", choice=ctx.choice_index, blocks=0)
            return choice
        answer = choice.content or ""
        ctx.reason(f"Answer with code, to check:\n{answer}\n")
        outputs = await self._run(ctx, tool, blocks[: self.config.max_blocks], messages, "answer")
        request = f"{self.outputs_block(ANSWER_HEADER, outputs)}\n\n{FINAL_PROMPT}"
        (final,) = await ctx.final(followup(messages, answer, request))
        return final

    async def _run(
        self,
        ctx: RequestContext,
        tool: Tool,
        blocks: Sequence[str],
        messages: Sequence[Message],
        source: str,
    ) -> list[str]:
        """Each block's output (concurrently, as the sandbox's slots allow), streamed as
        reasoning and traced."""
        outputs = await gather([tool.run(code, messages) for code in blocks])
        for number, output in enumerate(outputs, start=1):
            ctx.reason(f"Ran code block {number}: {preview(output, 200)}\n")
        ctx.step(
            "executecode",
            source=source,
            choice=ctx.choice_index,
            blocks=len(blocks),
            outputs=[preview(output, 200) for output in outputs],
        )
        return outputs

    def outputs_block(self, header: str, outputs: Sequence[str]) -> str:
        """The outputs, each (cut to `max_output_chars`) between lines that mark it as the
        sandbox's; an output cannot forge those lines."""
        limit = self.config.max_output_chars
        parts = [header]
        for number, output in enumerate(outputs, start=1):
            text = defused(output)
            if len(text) > limit:
                text = text[:limit] + CUT.format(total=len(text), shown=limit)
            parts.append(f"{BEGIN.format(number=number)}\n{text}\n{END.format(number=number)}")
        return "\n\n".join(parts)
