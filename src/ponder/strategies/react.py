"""`react`: ReAct. The model works in steps, "Thought: ..." then "Action: tool[input]", and
reads each tool's result as "Observation: ..." before its next step, until it writes
"Final Answer: ...".

It is text only, so it works with every backend, the embedded one included: the tools are
described in the system prompt and no backend call carries `tools` or `tool_choice`. The
scratchpad (the steps so far) goes to the model as turns: each step ("Thought: ... Action: ...")
an assistant turn, each tool result ("Observation: ...") a user turn, the last of which also
asks it to continue. (Given every step in one assistant turn, the 1.5B model often started
over or redid a calculation it had just made, on GSM8K.) The stop sequence "\\nObservation:"
keeps it from inventing results.

Tools:

- the built-in ones (`ponder.strategies.tools`) run inside Ponder; by default `calculator`, and
  `search_context` where the conversation is worth searching (`worth_searching`);
- the client's function tools (the request's `tools`): when the model calls one, the response
  is that tool call (finish_reason "tool_calls"). The client runs it and sends the
  conversation back with the tool results; the tool exchange after the last user message is
  turned back into the scratchpad ("Action: ..." / "Observation: ...") and the loop goes on.
  Tool exchanges of earlier turns are turned into assistant text, so the backend never
  receives `tool` messages or `tool_calls`. A call the client already answered in this turn
  is not sent again: the model gets the same result as its observation, as it does for a
  built-in tool called again with the same input in one loop (REPEATED_CALL).

A step cut off at `step_tokens` before its Action or Final Answer goes into the scratchpad as
it is, and the next step goes on from it (asked to continue), rather than its unfinished
Thought being taken for the answer. (The model is asked to reason in full in each Thought: on
GSM8K the 1.5B otherwise wrote one-line Thoughts that set up the calculator's input without
working out what the problem asks, and lost 44 points to its own answer without tools.)

A step that stops with neither an Action nor a Final Answer is the answer when it states one
("the answer is ...", `\\boxed{}`: `answers.states_answer`); when it states none, it goes on
in the next step too, once a loop (on GSM8K the 1.5B sometimes stopped on a plan, "Step 1:
Calculate the monthly cost of car washes.", which was taken for its answer). The step after
that nudge is the answer however it is written, so a model that answers in plain text costs
one more call, not `max_steps`.

A built-in call made a third time with the same input ends the steps (the loop is going round
in circles: at temperature 0 the 1.5B repeated one step until `max_steps`), and the answer is
asked for; so does an unfinished step that repeats the one before it word for word (the 1.5B,
asked to go on from a cut-off step, wrote the same 256 tokens four times on GSM8K item 112).

Backend calls: one per step, at most `max_steps`; when no step gave a final answer, one more
call (streamed to a streaming client) asks for it. When the client asked for a
`response_format` or `logprobs`, which a step cannot honour (the strategy parses its text),
the final answer of a step is rewritten by that one more call, with the client's sampling.
For the request's `n`, the engine runs `n` independent loops.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import Field, field_validator

from ponder.answers import states_answer
from ponder.errors import PermissionDenied
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import cut_off, text_sampling, with_system
from ponder.strategies.context import RequestContext
from ponder.strategies.react_steps import parse_step, render_action, render_final
from ponder.strategies.tool_exchange import (
    action_line,
    answered_calls,
    observation_line,
    split_scratchpad,
    tool_arguments,
)
from ponder.strategies.tools import BUILTIN_TOOLS, OPTIONAL_TOOLS, SearchContext, Tool
from ponder.types import Completion, FinishReason, Message, Sampling, ToolCall

REACT_INSTRUCTIONS = (
    "Work on the user's request in steps. Each step starts with a Thought that reasons in "
    "full, over as many lines as it takes: what the request tells you that matters now, what "
    "this step must find, and how, with its arithmetic written out. Then comes either an "
    "Action line that uses one tool:\n"
    "Thought: <what the request tells you that matters for this step>\n"
    "<what this step must find, and how, worked out>\n"
    "Action: tool_name[tool input]\n"
    "or, once you know the answer, your Final Answer:\n"
    "Thought: <why this is the answer>\n"
    "Final Answer: your answer to the user\n"
    'After an Action line, stop: the tool\'s result is given back to you as "Observation: ...". '
    "Never write an Observation yourself."
)
TOOLS_HEADER = "Tools:"
NO_TOOLS = "No tools are available now: think, then write your Final Answer."
CLIENT_TOOL_INPUT = "Its input is a JSON object with these parameters (JSON schema): "
CONTINUE = "Continue: write your next Thought, then an Action or your Final Answer."
FORCE_FINAL = (
    "You have no steps left. Using what you found above, write only your final answer to my "
    "request now, without Thought or Action lines."
)
SHAPE_FINAL = "Now write only your final answer to my request, without Thought or Action lines."
OBSERVATION_STOP = "\nObservation:"
UNFORMATTED_STEP = "No Action and no Final Answer in this step: it is taken as the answer.\n"
CUT_STEP = "(This step was cut off at the token limit: it goes on in the next.)\n"
SHORT_STEP = "(No Action, no Final Answer and no answer stated: it goes on in the next step.)\n"
GOING_ROUND = "(The same call a third time: the steps end here.)\n"
SAME_STEP = "(The same unfinished step again: the steps end here.)\n"
NO_STEPS_LEFT = "No final answer after the last step: asking for it.\n"
REPEATED_CALL = "(you already called this tool with these arguments) "
KNOWN_TOOLS = (*BUILTIN_TOOLS, *OPTIONAL_TOOLS)
SEARCH_MIN_CHARS = 2000
"""A one-request conversation at least this long (about 400 words) is worth searching."""
SHAPING_NOTE = "Writing it in the requested format.\n"


class ReActConfig(StrategyConfig):
    max_steps: int = Field(
        5, ge=1, le=20, description="Most Thought/Action steps before the answer is asked for"
    )
    step_tokens: int = Field(
        256, ge=16, le=8192, description="Token limit of one Thought/Action step"
    )
    tools: tuple[str, ...] = Field(
        ("calculator", "search_context"),
        description=f"The built-in tools the model may use, of: {', '.join(KNOWN_TOOLS)} "
        f"({', '.join(OPTIONAL_TOOLS)} only where the server turns them on)",
        json_schema_extra={"items": {"enum": list(KNOWN_TOOLS)}},
    )

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, tools: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [t for t in tools if t not in KNOWN_TOOLS]
        if unknown:
            known = ", ".join(KNOWN_TOOLS)
            raise ValueError(f"unknown tool(s) {', '.join(unknown)}; the built-in ones: {known}")
        return tuple(dict.fromkeys(tools))


class ReAct:
    slug: ClassVar[str] = "react"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = ReActConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, ReActConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        client_tools = offered_tools(ctx.sampling)
        conversation, scratchpad = split_scratchpad(messages)
        names = [name for name in self.config.tools if name not in client_tools]
        if "tools" not in self.config.model_fields_set and not worth_searching(conversation):
            names = [name for name in names if name != SearchContext.name]
        builtins = {name: enabled(ctx, name) for name in names}
        answered = answered_calls(messages)
        if scratchpad:
            ctx.step("react_resume", scratchpad="\n".join(turn.text for turn in scratchpad))
        prompt = with_system(conversation, instructions(builtins, client_tools))
        sampling = step_sampling(ctx.sampling, self.config.step_tokens)
        shaped = ctx.sampling.response_format is not None or ctx.sampling.logprobs
        observed: dict[tuple[str, str], str] = {}  # this loop's built-in calls and results
        repeated: set[tuple[str, str]] = set()  # those called again already
        nudged = False  # a step that stopped short of an answer was asked to go on

        for number in range(1, self.config.max_steps + 1):
            turns = asking(prompt, scratchpad, CONTINUE) if scratchpad else prompt
            (reply,) = await ctx.complete(turns, sampling)
            step = parse_step(reply.content or "")

            if step.action is None and step.final is None:
                # a Thought cut off at `step_tokens`, or one that stopped short of an answer:
                # it goes on in the next step, not as the answer
                cut = cut_off(reply)
                if cut or not (nudged or states_answer(step.thought)):
                    thought = Message("assistant", f"Thought: {step.thought}")
                    if scratchpad and scratchpad[-1] == thought:  # the same step again
                        ctx.reason(SAME_STEP)
                        ctx.step("react_step", number=number, thought=step.thought, repeated=True)
                        break
                    nudged = nudged or not cut
                    ctx.reason(f"Thought: {step.thought}\n{CUT_STEP if cut else SHORT_STEP}")
                    ctx.step(
                        "react_step",
                        number=number,
                        thought=step.thought,
                        **({"cut_off": True} if cut else {"stated_no_answer": True}),
                    )
                    scratchpad = [*scratchpad, thought]
                    continue

            if step.action is None:
                if step.final is None:
                    answer = step.thought
                    ctx.reason(UNFORMATTED_STEP)
                else:
                    answer = step.final
                    if step.thought:
                        ctx.reason(f"Thought: {step.thought}\n")
                ctx.step("react_step", number=number, thought=step.thought, final_answer=answer)
                if shaped:  # the answer must come from a call with the client's sampling
                    scratchpad = [*scratchpad, Message("assistant", render_final(step, answer))]
                    ctx.reason(f"Final Answer: {answer}\n{SHAPING_NOTE}")
                    return await self._final(ctx, conversation, scratchpad, SHAPE_FINAL)
                finish: FinishReason = "length" if reply.finish_reason == "length" else "stop"
                # the call that produced the answer is the answer's cost (usage's reasoning
                # tokens count the steps before it)
                return [Completion(content=answer, finish_reason=finish, usage=reply.usage)]

            if step.thought:
                ctx.reason(f"Thought: {step.thought}\n")
            ctx.reason(action_line(step.action, step.input) + "\n")

            arguments = tool_arguments(step.input) if step.action in client_tools else ""
            if step.action in client_tools and (step.action, arguments) not in answered:
                call = ToolCall(
                    id=f"call_{secrets.token_hex(12)}", name=step.action, arguments=arguments
                )
                ctx.step(
                    "react_step",
                    number=number,
                    thought=step.thought,
                    action=call.name,
                    input=call.arguments,
                    tool_call_id=call.id,
                )
                return [
                    Completion(
                        content=None,
                        finish_reason="tool_calls",
                        tool_calls=(call,),
                        usage=reply.usage,
                    )
                ]

            tool = builtins.get(step.action)
            if step.action in client_tools:  # a call the client already answered this turn
                observation = REPEATED_CALL + answered[step.action, arguments]
            elif tool is None:
                observation = unknown_tool(step.action, [*builtins, *client_tools])
            elif (step.action, step.input) in observed:
                if (step.action, step.input) in repeated:  # the loop goes round in circles
                    ctx.reason(GOING_ROUND)
                    ctx.step("react_step", number=number, thought=step.thought, repeated=True)
                    break
                repeated.add((step.action, step.input))
                observation = REPEATED_CALL + observed[step.action, step.input]
            else:
                observation = await tool.run(step.input, messages)
                observed[step.action, step.input] = observation
            ctx.reason(observation_line(observation) + "\n")
            ctx.step(
                "react_step",
                number=number,
                thought=step.thought,
                action=step.action,
                input=step.input,
                observation=observation,
            )
            scratchpad = [
                *scratchpad,
                Message("assistant", render_action(step, step.action)),
                Message("user", observation_line(observation)),
            ]

        ctx.reason(NO_STEPS_LEFT)
        return await self._final(ctx, conversation, scratchpad, FORCE_FINAL)

    async def _final(
        self,
        ctx: RequestContext,
        conversation: list[Message],
        scratchpad: Sequence[Message],
        request: str,
    ) -> list[Completion]:
        """The answer from one more call, with the client's sampling (its response format and
        logprobs included), streamed to a streaming client."""
        ctx.step("react_final", request=request)
        sampling = ctx.sampling.with_(tools=(), tool_choice=None)
        return await ctx.final(asking(conversation, scratchpad, request), sampling)


# ---- prompts --------------------------------------------------------------------------------


def offered_tools(sampling: Sampling) -> dict[str, Mapping[str, Any]]:
    """The client's function tools the model may call (name -> function definition), as
    `tool_choice` allows: none for "none", only the named one for a named choice."""
    choice = sampling.tool_choice
    if choice == "none":
        return {}
    only = None
    if isinstance(choice, Mapping):
        function = choice.get("function")
        only = function.get("name") if isinstance(function, Mapping) else None
    tools: dict[str, Mapping[str, Any]] = {}
    for tool in sampling.tools:
        function = tool.get("function")
        if tool.get("type", "function") != "function" or not isinstance(function, Mapping):
            continue
        name = function.get("name")
        if isinstance(name, str) and (only is None or name == only):
            tools[name] = function
    return tools


def instructions(
    builtins: Mapping[str, Tool], client_tools: Mapping[str, Mapping[str, Any]]
) -> str:
    """REACT_INSTRUCTIONS and the list of tools, for the system prompt."""
    lines = [f"- {tool.name}: {tool.description}" for tool in builtins.values()]
    for name, function in client_tools.items():
        description = str(function.get("description") or "").strip()
        schema = json.dumps(function.get("parameters") or {"type": "object", "properties": {}})
        text = f"{description} " if description else ""
        lines.append(f"- {name}: {text}{CLIENT_TOOL_INPUT}{schema}, e.g. {name}[{{...}}]")
    tools = f"{TOOLS_HEADER}\n" + "\n".join(lines) if lines else NO_TOOLS
    return f"{REACT_INSTRUCTIONS}\n\n{tools}"


def step_sampling(sampling: Sampling, step_tokens: int) -> Sampling:
    """The client's sampling for one step, as `text_sampling` makes it (the tools are described
    in the prompt instead), with OBSERVATION_STOP before the client's stop sequences."""
    # OpenAI-compatible servers take at most 4 stop sequences: ours goes first
    stop = tuple(dict.fromkeys((OBSERVATION_STOP, *sampling.stop)))[:4]
    return text_sampling(sampling, step_tokens).with_(stop=stop)


def worth_searching(conversation: Sequence[Message]) -> bool:
    """Whether `search_context` may find what the model does not plainly see: a conversation
    with earlier turns, or a long one (a pasted document). One short request is in front of
    the model already, and searching it only repeats it: on GSM8K the 1.5B spent its first
    step so in 25 of 50 problems. Without the client's own `tools` option, the default tools
    leave it out then."""
    turns = [m for m in conversation if m.role not in ("system", "developer")]
    return len(turns) > 1 or sum(len(m.text) for m in conversation) >= SEARCH_MIN_CHARS


def enabled(ctx: RequestContext, name: str) -> Tool:
    """The server's tool `name`; a tool the server has not turned on is refused (403)."""
    tool = ctx.tools.get(name)
    if tool is None:
        setting = OPTIONAL_TOOLS.get(name, "")
        if setting and not setting.endswith("_URL"):  # a URL setting is set to the URL
            setting += "=true"
        raise PermissionDenied(
            f"the tool '{name}' is turned off on this server"
            + (f" (an operator turns it on with {setting})" if setting else ""),
            param="ponder.react.tools",
        )
    return tool


def unknown_tool(name: str, available: Sequence[str]) -> str:
    if not available:
        return f"Error: there is no tool {name!r}; no tools are available. Write your Final Answer."
    return f"Error: there is no tool {name!r}. The tools are: {', '.join(available)}."


def asking(prompt: Sequence[Message], scratchpad: Sequence[Message], request: str) -> list[Message]:
    """The prompt, the scratchpad's turns, then `request` from the user: after the last
    observation (a user turn), in the same turn."""
    if scratchpad and scratchpad[-1].role == "user":
        last = scratchpad[-1]
        return [*prompt, *scratchpad[:-1], Message("user", f"{last.text}\n\n{request}")]
    return [*prompt, *scratchpad, Message("user", request)]
