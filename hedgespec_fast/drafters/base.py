"""The drafter protocol: what the pool asks of every drafter, and what a drafter hands back."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import torch


@dataclass
class Proposal:
    """A chain draft.

    Attributes
    ----------
    tokens : LongTensor ``[k]`` on the target's device (``k`` may be 0).
    probs : Tensor ``[k, V]`` fp32, the warped distribution each token was sampled from, or ``None`` when the
        proposal is deterministic (one-hot q: n-gram lookup, or greedy drafting).
    logits : Tensor ``[k, V]``, the drafter's raw logits at the drafted positions (model drafters; ``None`` otherwise).
    """

    tokens: torch.Tensor
    probs: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # [k, V] raw drafter logits of the drafted positions (model drafters)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


@dataclass
class Beliefs:
    """What a drafter would have proposed at each of ``m`` verified positions, on the true prefix.

    Exactly one of the two is set: ``logits [m, V]`` (raw, unwarped) for model drafters, ``tokens [m]`` (``-1`` = no
    proposal) for deterministic drafters.
    """

    logits: torch.Tensor | None = None
    tokens: torch.Tensor | None = None


@dataclass
class DraftContext:
    """Everything a drafter needs to draft: the sequence buffer, sampling rule and an optional stopping rule.

    ``ids[:, :length]`` is the committed sequence; a drafter may write its draft into ``ids[:, length:length + k]``
    (scratch space that the decoder overwrites when it commits).
    """

    ids: torch.Tensor
    length: int
    warp: Callable
    do_sample: bool
    generator: torch.Generator | None
    stop: Callable | None = None  # stop(probs_row [V]) -> bool: end the draft after this token
    min_confidence: float | None = None  # end a model drafter's chain before a position whose top probability is lower


@runtime_checkable
class Drafter(Protocol):
    """A drafter keeps its own view of the committed sequence (a KV cache, an n-gram index).

    Lifecycle per ``generate`` call: ``prefill(prompt)`` once; then each round at most one ``propose`` and one
    ``commit`` with the tokens the target emitted. ``want_beliefs`` (full information): True → return the drafter's
    beliefs at every position committed since it last returned beliefs (this round's and any deferred ones, in
    order); False → defer them (report them at a later True); None → nobody will ask (keep nothing). Deferring lets a
    model drafter evaluate several rounds in one forward.

    Draft trees (optional): a drafter that can grow trees also has ``propose_tree(shape, depth, ctx) -> TokenTree``
    (instead of ``propose``) and ``settle_tree(slots) -> int``, called with the accepted path before ``commit``
    (see :class:`~.hf.HFDrafter`). A drafter without them contributes its ``propose`` chain to a tree.
    """

    name: str

    def prefill(self, ids: torch.Tensor) -> None: ...

    def propose(self, k: int, ctx: DraftContext) -> Proposal: ...

    def commit(self, emitted: torch.Tensor, emitted_list: list[int], n_accepted: int,
               want_beliefs: bool | None) -> Beliefs | None: ...
