"""The strategies that ship with Ponder. Add a built-in here: one import, one list entry."""

from __future__ import annotations

from ponder.strategies.base import StrategyFactory


def builtin() -> list[StrategyFactory]:
    from ponder.strategies.none import PassThrough
    from ponder.strategies.re2 import ReRead

    return [
        PassThrough,
        ReRead,
    ]
