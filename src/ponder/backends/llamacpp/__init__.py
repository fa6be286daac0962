"""The embedded backend: GGUF models run in-process by llama.cpp on a batched engine.

`native` wraps llama.cpp's C API, `engine` schedules many sequences into one decode per step,
`text` turns tokens into streamable text, `backend` is the Backend protocol on top. Importing
the package loads nothing heavy; `EmbeddedBackend` loads llama.cpp's bindings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ponder.backends.llamacpp.backend import EmbeddedBackend

__all__ = ["EmbeddedBackend"]


def __getattr__(name: str) -> Any:
    if name == "EmbeddedBackend":
        from ponder.backends.llamacpp.backend import EmbeddedBackend

        return EmbeddedBackend
    raise AttributeError(name)
