"""SpecConfig: every knob of a speculative generation that is not a model or a sampling parameter."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from .trees import parse_tree

LOSSES = ("expected_length", "acceptance")
LEVELS = ("token", "chunk")
CHOICES = ("sample", "argmax")
STOPPING = ("static", "tapout")


@dataclass
class SpecConfig:
    """How to speculate.

    Parameters
    ----------
    draft_len : K, tokens drafted per round (the most; stopping rules may draft fewer).
    policy : a name from ``hs.POLICIES`` (``"hedgespec"``, ``"fixed:1"``, ``"ucbspec+tapout"``, …) or a policy object
        (e.g. a ``HedgeSpecSelector`` reused across calls for a warm start).
    tree : ``None`` (a chain of ``draft_len`` tokens), a draft-tree spec string (``"depth=5,topk=4,total=32"``,
        ``"static:depth=3,topk=2"``, ``"paths:[[0],[1],[0,0]]"``, ``"chains:k=4,depth=5"``, ``"drafters:k=3,depth=5"``,
        ``"shared:depth=5,topk=4,total=32"``) or a shape object from :mod:`hedgespec_fast.trees`; see that module.
        A tree without ``depth=`` takes ``draft_len`` as its depth.
    loss : full-information loss, ``"expected_length"`` (HedgeSpec's default, delayed by up to K positions) or
        ``"acceptance"`` (1 − γ, no delay).
    level : ``"token"`` (one learner round per verified position, the paper's default) or ``"chunk"`` (one per
        draft–verify cycle, with the chunk's mean loss).
    choice : ``"sample"`` from the weights (the no-regret guarantee) or ``"argmax"``.
    eval_every : evaluate all drafters every this many rounds (1 = always). Rounds in between feed no learner round
        and other drafters catch up lazily (HedgeSpec App. B.5's system-efficient variant, **[reconstructed]**).
    skip_eval_above : skip the evaluation while the learner's top weight is above this (1.0 = never skip).
    seed : seeds the sampling generator and the policy's own randomness; ``None`` uses torch's global RNG.
    backend : kernel backend for γ and the learner update (``"auto" | "triton" | "torch"``).
    record_gamma : evaluate every drafter every round even when the policy does not learn from it (bandits, fixed),
        so the records hold γ for analysis (costs the evaluation forwards).
    timings : ``"auto"`` (CUDA events on GPU, ``perf_counter`` on CPU), ``"sync"`` (synchronise at every phase
        boundary: exact per-phase wall time, extra host syncs) or ``"off"``.
    """

    draft_len: int = 5
    policy: Any = "hedgespec"
    tree: Any = None
    loss: str = "expected_length"
    level: str = "token"
    choice: str = "sample"
    eval_every: int = 1
    skip_eval_above: float = 1.0
    seed: int | None = None
    backend: str = "auto"
    record_gamma: bool = False
    timings: str = "auto"
    policy_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.draft_len, int) or self.draft_len < 0:
            raise ValueError(f"draft_len must be an int >= 0, got {self.draft_len!r}")
        for name, allowed in (("loss", LOSSES), ("level", LEVELS), ("choice", CHOICES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")
        parse_tree(self.tree)  # a bad tree spec fails here, with the reason
        if self.timings not in ("auto", "sync", "off"):
            raise ValueError(f"timings must be 'auto', 'sync' or 'off', got {self.timings!r}")

    @classmethod
    def from_kwargs(cls, base: "SpecConfig | None" = None, **kwargs) -> "SpecConfig":
        """A config from ``base`` (or the defaults) with the given fields replaced; unknown names are an error."""
        names = {f.name for f in fields(cls)}
        unknown = set(kwargs) - names
        if unknown:
            raise TypeError(f"unknown speculative option(s) {sorted(unknown)}; known: {sorted(names)}")
        return replace(base, **kwargs) if base is not None else cls(**kwargs)
