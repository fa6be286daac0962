"""`z3`: solver-aided reasoning. The model writes a Python program that states the client's
problem as constraints for the z3 solver (the z3-solver package) and prints what the answer
needs; Ponder runs it in the code sandbox (`ponder.sandbox`: its own process, no network, files
only in its own folder, z3 loaded before the code and the kernel's Landlock holding the files);
the program and what it printed then go back to the model, which writes the answer, streamed
to a streaming client.

A program that fails (an error, a timeout, nothing printed, or only the prompt's `no solution`
line, the constraints being unsatisfiable) goes back to the model with the
sandbox's report, for a whole new program, up to `fix_attempts` times. When none runs, the
model answers the client's conversation as it is, without the solver.

Running model-written code is off by default: a request for `z3` on a server without
PONDER_ENABLE_CODE_EXECUTION=true is refused (403) before any backend call; on a server where
z3-solver is missing or the kernel has no Landlock, it is a 400 saying so.

The program is written at the strategy's temperature (0 by default) and token limit, with the
request and the instructions in the client's last user turn (the rest of the conversation kept);
a fix is a follow-up turn. The answer uses the client's sampling.

Calls, one after another: the program, then one fix per failed run (at most `fix_attempts`),
then the answer: 2 when the first program runs, 3 at most at the defaults. A failed call fails
the request. For the request's `n`, the engine runs `n` independent programs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from ponder.errors import Unsupported
from ponder.sandbox.code import NO_OUTPUT
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import followup, helper_sampling
from ponder.strategies.context import RequestContext
from ponder.strategies.programs import Attempt, code_runner, extract_code, fenced
from ponder.strategies.showing import REQUESTED_FORM, after_request
from ponder.strategies.tools import Tool
from ponder.types import Completion, Message

PROGRAM_PROMPT = (
    "Do not answer my request directly. Write a Python program that solves it with the z3 "
    "solver: one z3 variable for each unknown quantity (Real where it may be a fraction, else "
    "Int), one constraint for each fact and condition of my request, then check and print the "
    "values the answer needs, each with a short label. Its shape, with the parts in angle "
    "brackets written for my request:\n\n"
    "```python\n"
    "from z3 import *\n\n"
    "<name> = Real('<name>')  # one line for each unknown quantity\n"
    "s = Solver()\n"
    "s.add(<constraint>)  # one line for each fact of my request\n"
    "if s.check() == sat:\n"
    "    m = s.model()\n"
    "    print('<name> =', m.eval(<name>))  # for each value the answer needs\n"
    "else:\n"
    "    print('no solution')\n"
    "```\n\n"
    "Use only z3 and Python's standard library. Reply with the program alone, in one "
    "```python block."
)
PLACEHOLDERS = ("<name>", "<constraint>")
"""The shape's parts to be written for the request: a program that still has them was copied
from the prompt (with a runnable example instead, the 1.5B returned the example, unchanged, in
4 of 4 GSM8K probes)."""
FIX_PROMPT = (
    "The program did not work. This is what running it gave:\n\n{report}\n\n"
    "Write the whole program again with that fixed, in one ```python block."
)
ANSWER_PROMPT = (
    "Using the solver's result, answer my request above. Check that the result makes sense "
    f"for the request, and give the answer {REQUESTED_FORM}."
)
NO_OUTPUT_REPORT = "Error: the program printed nothing (print() the values the answer needs)"
NO_PROGRAM = "Error: no program in the reply"
COPIED_SHAPE = (
    "Error: the program is the shape from my instructions, with its <name> and <constraint> "
    "parts not written for my request"
)
NO_SOLUTION = "no solution"
NO_SOLUTION_REPORT = (
    "Error: the solver found no solution: a constraint contradicts the others, or does not say "
    "what my request says"
)


class Z3Config(StrategyConfig):
    fix_attempts: int = Field(
        1, ge=0, le=5, description="How many times a failed program goes back to be fixed"
    )
    code_tokens: int = Field(1024, ge=1, description="Token limit of each program")
    code_temperature: float = Field(0.0, ge=0, le=2, description="Temperature of the programs")


def solver_tool(ctx: RequestContext) -> Tool:
    """The server's z3 runner; refused where the server does not run model-written code."""
    code_runner(ctx, SolverAided.slug)
    tool = ctx.tools.get("z3")
    if tool is None:
        raise Unsupported(
            "the z3 strategy needs the z3-solver package and a kernel with Landlock to confine "
            "it; this server lacks one of them",
            param="model",
        )
    return tool


class SolverAided:
    slug: ClassVar[str] = "z3"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = Z3Config
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, Z3Config)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        cfg = self.config
        tool = solver_tool(ctx)
        writing = helper_sampling(ctx.sampling, cfg.code_tokens, cfg.code_temperature)
        prompt = after_request(messages, PROGRAM_PROMPT)
        for number in range(1, cfg.fix_attempts + 2):
            (reply,) = await ctx.complete(prompt, writing)
            code = extract_code(reply.content)
            if not code:
                observation = NO_PROGRAM
            elif any(part in code for part in PLACEHOLDERS):
                observation = COPIED_SHAPE
            else:
                observation = await tool.run(code, prompt)
            if observation.strip().lower() == NO_SOLUTION:  # the shape's own unsat line
                observation = NO_SOLUTION_REPORT
            attempt = Attempt(code, observation)
            ctx.reason(f"Program {number}:\n{fenced(code)}\nOutput:\n{attempt.observation}\n")
            ok = not attempt.failed
            ctx.step("program", attempt=number, code=code, output=attempt.observation, ok=ok)
            if ok:
                answering = after_request(
                    messages,
                    f"A z3 program written for my request:\n\n{fenced(code)}",
                    f"Running it printed:\n\n```\n{attempt.observation}\n```",
                    ANSWER_PROMPT,
                )
                return await ctx.final(answering, ctx.sampling)
            report = NO_OUTPUT_REPORT if attempt.observation == NO_OUTPUT else attempt.observation
            prompt = followup(prompt, reply.content or "", FIX_PROMPT.format(report=report))
        ctx.reason("No program ran: answering without the solver\n")
        ctx.step("fallback", reason="no program ran")
        return await ctx.final(messages, ctx.sampling)
