"""Policies that do not learn: a fixed drafter, uniform random, and the oracle marker (resolved by ``generate``)."""
from __future__ import annotations

import torch

from .base import Policy, RoundOutcome


class Fixed(Policy):
    """Always drafter ``index``."""

    def __init__(self, n_drafters: int, index: int):
        super().__init__(n_drafters)
        if not 0 <= index < n_drafters:
            raise ValueError(f"fixed:{index} names no drafter: the pool has {n_drafters} (indices 0..{n_drafters - 1})")
        self.index = index

    def choose(self, awake=None) -> int:
        return self.index

    def drafters_used(self) -> list[int]:
        return [self.index]

    def update(self, outcome: RoundOutcome) -> None:
        return None


class Random(Policy):
    """A uniformly random drafter every round."""

    def choose(self, awake=None) -> int:
        return int(torch.randint(self.n_drafters, (1,), generator=self.generator).item())

    def update(self, outcome: RoundOutcome) -> None:
        return None


class Oracle(Policy):
    """The best fixed drafter in hindsight, per prompt (benchmarks only).

    Not a learner: ``generate`` runs the prompt once with every fixed drafter and returns the run with the highest
    mean accepted tokens per target call (ties: fewer target calls, then the lower index).
    """

    def choose(self, awake=None) -> int:  # pragma: no cover - generate() never runs the oracle as a round policy
        raise RuntimeError("the oracle is resolved by generate(), which runs every fixed drafter")

    def update(self, outcome: RoundOutcome) -> None:  # pragma: no cover
        return None
