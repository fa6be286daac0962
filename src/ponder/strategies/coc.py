"""`coc`: Chain of Code, after Li et al. 2023 ("Chain of Code: Reasoning with a Language
Model-Augmented Code Emulator"). The model writes a Python program for the request: a comment
for each step, Python for what can be computed, and, for a step that needs judgement rather than
computation, a call to a helper function that only a language model could answer. Ponder runs
the program in the server's sandbox (the `python` tool, `ponder.sandbox.code`):

1. the model writes the program (one call, at the strategy's `temperature`); the first
   ```python block of its reply is the program (else the first fenced block, else the whole
   reply);
2. the sandbox runs it. A run that prints a result without an error is done;
3. a run that fails (an "Error: ..." observation, or nothing printed) goes back to the model with
   the program and what the run gave, to be fixed; the fixed program is run in its turn, up to
   `fix_attempts` times;
4. when the last program still fails, the model simulates it (the "LMulator"): shown the program
   and the error, it traces the program line by line, keeping the variables' values and working
   out what the lines that cannot run would return, and ends with the program's output;
5. the model answers the request from the program and its output (or its simulated run): the
   answer streams, with the client's sampling.

The program and the run's results go to the model inside the client's last user turn, after its
request; the rest of the conversation is kept as it is. Each program, each run's result and the
simulation stream as reasoning, and each is a step of the trace.

The server must turn code execution on (PONDER_ENABLE_CODE_EXECUTION); otherwise the request is
refused (403) before any backend call.

Calls at the defaults (`fix_attempts` 1): 2 when the first program runs (the program, the
answer); 3 when its fix runs; 4 when the fix fails too (the program, the fix, the simulation,
the answer). In general 2 to `fix_attempts` + 3. One fix by default: a fix mends a slip (a typo,
a missing import, a helper left undefined), and what one fix cannot mend, the simulation is
Chain of Code's own way past; each further fix is one more call on the slow path. A failed call
fails the request. The request's `n` choices are drawn by the answer call, from the one
program's result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import helper_sampling
from ponder.strategies.context import RequestContext
from ponder.strategies.programs import Attempt, code_runner, extract_code, fenced
from ponder.strategies.showing import REQUESTED_FORM, after_request
from ponder.strategies.tools import Tool
from ponder.types import Completion, Message

CODE_PROMPT = (
    "Do not answer yet. Write a Python program that works out the answer to my request, in one "
    "```python code block. Break the work into steps, with a comment for each step. Write "
    "Python for what can be computed; for a step that needs judgement rather than computation "
    "(the meaning of a text, common sense, a fact), you may call a helper function that is not "
    "defined, named for what it returns, such as `is_fruit(word)`. The program must print its "
    "result with print(). Use the standard library only, and no files, network or input()."
)
CODE_INTRO = "A Python program written for my request:"
RUN_INTRO = "Running it gave:"
FIX_PROMPT = (
    "Do not answer yet. Fix the program so that it runs and prints its result: correct the "
    "mistake that the run points to. Where a helper function cannot run, replace its call "
    "with the value you judge it returns, with a comment. Write the whole corrected program in "
    "one ```python code block."
)
SIMULATE_PROMPT = (
    "The program cannot run here. Do not answer yet: act as its Python interpreter. Go through "
    "the program line by line, in the order the lines run, and after each line write the "
    "values of the variables it changes. Where a line cannot run as Python (a helper function "
    "that is not defined, a missing module, the line that failed), work out what it would "
    "return and go on with that value. End with a line `Output:` followed by what the program "
    "prints."
)
OUTPUT_INTRO = "Running it printed:"
SIMULATION_INTRO = "The program could not run here, so its run was simulated line by line:"
ANSWER_PROMPT = (
    f"Using the program's result, answer my request now, {REQUESTED_FORM}. Do not mention "
    "the program unless my request asks about it."
)


class ChainOfCodeConfig(StrategyConfig):
    fix_attempts: int = Field(
        1,
        ge=0,
        le=5,
        description="How many times a program that fails is given back to the model to fix "
        "before its run is simulated (0: simulated at the first failure)",
    )
    code_tokens: int = Field(
        1024, ge=1, description="Token limit of the call that writes the program and of each fix"
    )
    simulate_tokens: int = Field(
        1024, ge=1, description="Token limit of the simulated run (the line-by-line trace)"
    )
    temperature: float = Field(
        0.0, ge=0, le=2, description="Temperature of the calls that write and fix the program"
    )


class ChainOfCode:
    slug: ClassVar[str] = "coc"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = ChainOfCodeConfig
    draws_n: ClassVar[bool] = True

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, ChainOfCodeConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        tool = code_runner(ctx, self.slug)
        cfg = self.config
        coding = helper_sampling(ctx.sampling, cfg.code_tokens, cfg.temperature)

        (written,) = await ctx.complete(after_request(messages, CODE_PROMPT), coding)
        attempt = await self._run(ctx, tool, messages, written, 0)
        for number in range(1, cfg.fix_attempts + 1):
            if not attempt.failed:
                break
            prompt = after_request(
                messages, *shown(attempt), RUN_INTRO, attempt.observation, FIX_PROMPT
            )
            (fixed,) = await ctx.complete(prompt, coding)
            attempt = await self._run(ctx, tool, messages, fixed, number)

        if attempt.failed:
            result = [SIMULATION_INTRO, await self._simulate(ctx, messages, attempt)]
        else:
            result = [OUTPUT_INTRO, attempt.observation]
        prompt = after_request(messages, *shown(attempt), *result, ANSWER_PROMPT)
        return await ctx.final(prompt, ctx.sampling, n=ctx.n)

    @staticmethod
    async def _run(
        ctx: RequestContext,
        tool: Tool,
        messages: Sequence[Message],
        reply: Completion,
        number: int,
    ) -> Attempt:
        """Runs the program of `reply` (attempt `number`: 0 the first, then the fixes)."""
        code = extract_code(reply.content)
        ctx.reason(f"{'Code' if number == 0 else f'Fix {number}'}:\n{fenced(code)}\n")
        observation = await tool.run(code, messages)
        attempt = Attempt(code, observation)
        ctx.reason(f"Output:\n{observation}\n")
        ctx.step("code", attempt=number, code=code, observation=observation, ran=not attempt.failed)
        return attempt

    async def _simulate(
        self, ctx: RequestContext, messages: Sequence[Message], attempt: Attempt
    ) -> str:
        """The model's line-by-line simulation of the program that failed."""
        ctx.reason("Simulating the program line by line:\n")
        prompt = after_request(
            messages, *shown(attempt), RUN_INTRO, attempt.observation, SIMULATE_PROMPT
        )
        (traced,) = await ctx.complete(
            prompt, helper_sampling(ctx.sampling, self.config.simulate_tokens, 0.0)
        )
        trace = (traced.content or "").strip()
        ctx.reason(f"{trace}\n")
        ctx.step("simulation", code=attempt.code, error=attempt.observation, trace=trace)
        return trace


def shown(attempt: Attempt) -> tuple[str, str]:
    """The program as the model is shown it: an introduction, then the code in a fence."""
    return CODE_INTRO, fenced(attempt.code)
