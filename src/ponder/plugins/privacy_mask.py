"""Masking and restoring personal data, for the `privacy` plugin.

- `Vault`: the request's placeholders and the values they stand for. The same value gets the
  same placeholder throughout the request (`<PERSON_1>`, `<EMAIL_ADDRESS_2>`: numbered by type
  in order of discovery). It lives as long as the request, and its repr shows no value.
- `Masker`: masks texts with a `Detector` into a vault; each distinct text is analysed once.
- `StreamRestorer`: restores streamed text piece by piece, holding back only a tail that may
  be the start of a placeholder split across pieces.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace

from ponder.plugins.privacy_detect import Detector, Finding
from ponder.types import Completion, ContentPart, Message

PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]*_\d+>")

StreamKey = tuple[int, str, int]
"""A stream of text: (choice index, "content" | "reasoning" | "tool", tool call index)."""
_POSSESSIVE = ("'s", "\u2019s")


class Vault:
    """Placeholders and the values they stand for. Never logged, stored or traced."""

    __slots__ = ("_counts", "_originals", "_placeholders")

    def __init__(self) -> None:
        self._placeholders: dict[str, str] = {}  # value -> placeholder
        self._originals: dict[str, str] = {}  # placeholder -> value
        self._counts: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"Vault({len(self._originals)} placeholders)"

    def counts(self) -> dict[str, int]:
        """How many distinct values of each type are masked (safe to trace)."""
        return dict(sorted(self._counts.items()))

    def placeholder(self, entity: str, value: str) -> str:
        found = self._placeholders.get(value)
        if found is None:
            self._counts[entity] += 1
            found = f"<{entity}_{self._counts[entity]}>"
            self._placeholders[value] = found
            self._originals[found] = value
        return found

    def mask(self, text: str, findings: Sequence[Finding]) -> str:
        """`text` with each finding replaced by its placeholder. Overlapping findings keep the
        longest (then the surest); a finding inside an existing placeholder is ignored."""
        taken = [(m.start(), m.end()) for m in PLACEHOLDER.finditer(text)]
        chosen: list[tuple[int, int, str]] = []
        for f in sorted(findings, key=lambda f: (f.start - f.end, -f.score, f.start)):
            start, end = _trimmed(text, f)
            if start >= end or any(start < e and s < end for s, e in taken):
                continue
            taken.append((start, end))
            chosen.append((start, end, f.entity))
        for start, end, entity in sorted(chosen, reverse=True):
            text = text[:start] + self.placeholder(entity, text[start:end]) + text[end:]
        return text

    def restore(self, text: str) -> str:
        """`text` with every placeholder of this vault replaced by its value (others stay)."""
        if "<" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self._originals.get(m.group(), m.group()), text)

    def partial_start(self, text: str) -> int:
        """Where a tail of `text` that may be the start of one of this vault's placeholders
        begins (`len(text)` when there is none)."""
        start = text.rfind("<")
        if start < 0:
            return len(text)
        tail = text[start:]
        if any(p.startswith(tail) and p != tail for p in self._originals):
            return start
        return len(text)


def _trimmed(text: str, finding: Finding) -> tuple[int, int]:
    """The finding's span without surrounding white space or a possessive "'s"."""
    start, end = finding.start, finding.end
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if finding.entity == "PERSON" and text[start:end].endswith(_POSSESSIVE):
        end -= 2
    return start, end


class Masker:
    """Masks a request's texts into its vault. Each distinct text is analysed once; a masked
    text is known as masked, so strategies resending the conversation cost no analysis."""

    def __init__(self, detector: Detector, entities: Sequence[str], threshold: float) -> None:
        self.vault = Vault()
        self._detector = detector
        self._entities = tuple(entities)
        self._threshold = threshold
        self._done: dict[str, str] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Masker({self.vault!r})"

    async def messages(self, messages: Sequence[Message]) -> list[Message]:
        """The messages with every text masked: contents of every role, text parts, and the
        arguments of tool calls."""
        texts: list[str] = []

        def collect(text: str) -> str:
            texts.append(text)
            return text

        for m in messages:
            _map_texts(m, collect)
        if any(t not in self._done for t in texts):
            await asyncio.to_thread(self.mask_texts, texts)
        return [_map_texts(m, self._done.__getitem__) for m in messages]

    def known(self, text: str) -> None:
        """Take `text` as masked already (Ponder's own text around masked text)."""
        self._done[text] = text

    def mask_texts(self, texts: Sequence[str]) -> list[str]:
        with self._lock:
            return [self._mask(t) for t in texts]

    def _mask(self, text: str) -> str:
        masked = self._done.get(text)
        if masked is None:
            masked = text
            if text.strip():
                findings = self._detector.find(text, self._entities, self._threshold)
                masked = self.vault.mask(text, findings)
            self._done[text] = masked
            self._done[masked] = masked
        return masked


def _map_texts(message: Message, f: Callable[[str], str]) -> Message:
    """`message` with `f` applied to each of its texts."""
    content = message.content
    if isinstance(content, str):
        content = f(content)
    elif content is not None:
        content = tuple(_map_part(part, f) for part in content)
    calls = tuple(replace(c, arguments=f(c.arguments)) for c in message.tool_calls)
    return replace(message, content=content, tool_calls=calls)


def _map_part(part: ContentPart, f: Callable[[str], str]) -> ContentPart:
    if part.get("type") == "text" and isinstance(part.get("text"), str):
        return {**part, "text": f(part["text"])}
    return part


def restore_completion(completion: Completion, vault: Vault) -> Completion:
    """The choice with the original values in its answer, reasoning and tool calls."""
    return replace(
        completion,
        content=None if completion.content is None else vault.restore(completion.content),
        reasoning=None if completion.reasoning is None else vault.restore(completion.reasoning),
        tool_calls=tuple(
            replace(c, arguments=vault.restore(c.arguments)) for c in completion.tool_calls
        ),
    )


class StreamRestorer:
    """Restores streams of text, one per key, piece by piece."""

    def __init__(self, vault: Vault) -> None:
        self._vault = vault
        self._held: dict[StreamKey, str] = {}

    def feed(self, key: StreamKey, piece: str) -> str:
        """The restored text that can be sent now; a possible placeholder start is held."""
        text = self._held.pop(key, "") + piece
        cut = self._vault.partial_start(text)
        if cut < len(text):
            self._held[key] = text[cut:]
        return self._vault.restore(text[:cut])

    def flush(self, key: StreamKey) -> str:
        """What was held for `key` (it was not a placeholder after all)."""
        return self._vault.restore(self._held.pop(key, ""))

    def held(self) -> list[StreamKey]:
        return list(self._held)
