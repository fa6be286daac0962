"""`ponder serve` and `ponder ask`. Flags map onto `Settings`; unset flags keep PONDER_* values."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from ponder import cli_keys, cli_log, cli_models, cli_store
from ponder.bench import cli as bench_cli
from ponder.config import Settings
from ponder.errors import PonderError
from ponder.logs import configure as configure_logging
from ponder.types import Delta

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


def _backend_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["embedded", "openai", "vllm"], help="default: embedded")
    p.add_argument("--base-url", help="openai backend: upstream base URL, e.g. http://host/v1")
    p.add_argument("--log-level", help="default: INFO")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="ponder", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the OpenAI-compatible server")
    serve.add_argument("--host", help="default: 127.0.0.1 (other addresses need PONDER_API_KEYS)")
    serve.add_argument("--port", type=int, help="default: 8000")
    serve.add_argument(
        "--workers",
        type=int,
        help="server processes (default: 1); more only on the openai and vllm backends",
    )
    _backend_flags(serve)
    serve.add_argument(
        "--model",
        help="embedded: a catalog id (`ponder models`) or a GGUF file (default: the best "
        "installed); vllm: model path",
    )

    ask = sub.add_parser("ask", help="answer one question in the terminal")
    ask.add_argument("question")
    ask.add_argument(
        "--model",
        dest="ask_model",
        help="model name with an optional strategy prefix (default: the backend's first model)",
    )
    ask.add_argument("--system", default=DEFAULT_SYSTEM_PROMPT, help="system prompt")
    ask.add_argument("--max-tokens", type=int, default=512)
    ask.add_argument("--temperature", type=float, help="default: the backend's")
    _backend_flags(ask)
    ask.add_argument(
        "--model-path", dest="model", help="embedded: catalog id or GGUF file; vllm: model path"
    )
    cli_store.add_parsers(sub)
    cli_keys.add_parser(sub)
    cli_log.add_parser(sub)
    cli_models.add_parser(sub)
    bench_cli.add_parser(sub)
    return root


def settings_from(args: argparse.Namespace) -> Settings:
    fields = ("host", "port", "backend", "base_url", "model", "log_level", "workers")
    overrides: dict[str, Any] = {
        f: getattr(args, f) for f in fields if getattr(args, f, None) is not None
    }
    return Settings(**overrides)


def serve(settings: Settings) -> None:
    import uvicorn

    from ponder.keys import Keyring
    from ponder.proxy import create_app
    from ponder.serving import frozen

    settings.check_exposure(len(Keyring.from_settings(settings)))
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "log_config": None,  # uvicorn's records go through Ponder's handler (format, masking)
    }
    if settings.workers == 1:
        uvicorn.run(frozen(create_app(settings)), **common)
        return
    if settings.backend == "embedded":
        raise ValueError(
            "the embedded engine runs in one process (its batch is the parallelism): "
            "--workers needs the openai or vllm backend"
        )
    # each worker process builds its app from the environment: the flags go there first
    os.environ.update(settings_environment(settings))
    uvicorn.run(
        "ponder.serving:app_from_environment", factory=True, workers=settings.workers, **common
    )


def settings_environment(settings: Settings) -> dict[str, str]:
    """The settings the command line gave, as the `PONDER_*` variables a worker reads."""
    fields = ("host", "port", "backend", "base_url", "model", "log_level", "workers")
    return {
        f"PONDER_{name.upper()}": str(value)
        for name in fields
        if (value := getattr(settings, name)) is not None
    }


async def ask(
    settings: Settings,
    question: str,
    model: str | None,
    system: str,
    max_tokens: int,
    temperature: float | None = None,
) -> int:
    from ponder.backends import build_backend
    from ponder.protocol import ChatCompletionRequest
    from ponder.proxy.chat import ChatService
    from ponder.proxy.chat_api import chat_request
    from ponder.proxy.middleware import new_request_id
    from ponder.strategies.engine import Engine
    from ponder.strategies.registry import default_registry

    backend = build_backend(settings)
    try:
        model = model or (await backend.models())[0]
        request = ChatCompletionRequest.model_validate(
            {
                "model": model,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": question},
                ],
                "max_tokens": max_tokens,
                **({"temperature": temperature} if temperature is not None else {}),
            }
        )
        service = ChatService.for_settings(settings, backend, Engine(default_registry()))
        job = service.prepare(chat_request(request), new_request_id())
        streamed = False

        def show(delta: Delta) -> None:
            """The answer goes to stdout as it streams; the strategy's working to stderr."""
            nonlocal streamed
            if delta.reasoning:
                sys.stderr.write(delta.reasoning)
                sys.stderr.flush()
            if delta.content:
                streamed = True
                sys.stdout.write(delta.content)
                sys.stdout.flush()

        choices = await job.run(show)
        if not streamed:  # the strategy's answer was not a single streamed generation
            sys.stdout.write(choices[0].content or "")
        sys.stdout.write("\n")
        return 0
    finally:
        await backend.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        print(f"ponder: invalid setting: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings)
    try:
        if args.command in ("spl", "memory"):
            return cli_store.run(args, settings)
        if args.command == "keys":
            return cli_keys.run(args, settings)
        if args.command == "log":
            return cli_log.run(args, settings)
        if args.command == "models":
            return cli_models.run(args, settings)
        if args.command == "bench":
            return bench_cli.run(args)
        if args.command == "serve":
            serve(settings)
            return 0
        return asyncio.run(
            ask(
                settings,
                args.question,
                args.ask_model,
                args.system,
                args.max_tokens,
                args.temperature,
            )
        )
    except (ValueError, PonderError) as exc:
        print(f"ponder: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
