"""Which upstream of a pool takes the next call: the three ways of choosing.

- `weighted`: smooth weighted round-robin. Each pick adds every usable member's weight to its
  score, takes the highest score (the first on a tie) and lowers it by the usable weights'
  sum: deterministic, and evenly interleaved (weights 3 and 1 give a, a, b, a, ...).
- `round_robin`: each member in turn, from the one after the last picked.
- `failover`: always the first usable member, in the configured order.

Members are positions in the pool's list; "usable" are those the pool may give a call now
(up, not yet tried by this call, under their concurrency cap).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Choice = Literal["weighted", "round_robin", "failover"]


class Balancer:
    def __init__(self, weights: Sequence[int]) -> None:
        if any(w < 1 for w in weights):
            raise ValueError("weights must be at least 1")
        self.weights = tuple(weights)
        self._scores = [0] * len(weights)
        self._next = 0

    def pick(self, usable: Sequence[int], choice: Choice) -> int:
        """The position of the member that takes the next call, among `usable` (not empty,
        in ascending order)."""
        if not usable:
            raise ValueError("nothing to pick from")
        if choice == "failover":
            return usable[0]
        if choice == "round_robin":
            count = len(self.weights)
            picked = min(usable, key=lambda i: (i - self._next) % count)
            self._next = picked + 1
            return picked
        for i in usable:
            self._scores[i] += self.weights[i]
        picked = max(usable, key=lambda i: self._scores[i])
        self._scores[picked] -= sum(self.weights[i] for i in usable)
        return picked
