"""From token bytes to the text a client may see: whole UTF-8 characters only, and never a
stop string (nor the start of one that may still complete)."""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    """Turns a sequence's token bytes into text to stream.

    `push` returns the text that is safe to send now. Text that could be the beginning of a
    stop string is held back until it is decided; once a stop string appears, `stopped` is
    set and nothing from it on is ever returned. Bytes of a character cut in half (a token
    boundary inside an emoji) wait for the rest; `flush` drops them if the rest never comes.
    """

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._stop = tuple(s for s in stop if s)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self.stopped = False
        self.matched: str | None = None
        """The stop string that ended the text (the one that appeared first)."""

    def push(self, data: bytes) -> str:
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(data)
        if not self._stop:
            self._held = ""
            return text
        found = [(i, s) for s in self._stop if (i := text.find(s)) >= 0]
        if found:
            cut, self.matched = min(found, key=lambda f: f[0])
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = _longest_stop_prefix_suffix(text, self._stop)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held-back text once the sequence has ended without a stop string."""
        if self.stopped:
            return ""
        text, self._held = self._held, ""
        self._decoder.reset()  # an incomplete character at the very end is dropped
        return text


def _longest_stop_prefix_suffix(text: str, stops: Sequence[str]) -> int:
    """The length of the longest end of `text` that begins some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
