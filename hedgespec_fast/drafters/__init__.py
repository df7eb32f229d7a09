"""Drafters: any HF causal LM (:class:`HFDrafter`) and prompt lookup (:class:`NGramDrafter`)."""
from __future__ import annotations

from .base import Beliefs, DraftContext, Drafter, Proposal
from .hf import HFDrafter
from .ngram import NGramDrafter

__all__ = ["Beliefs", "DraftContext", "Drafter", "Proposal", "HFDrafter", "NGramDrafter", "as_drafter"]


def as_drafter(obj, name: str | None = None):
    """Wrap a transformers model as an :class:`HFDrafter`; pass drafters through unchanged."""
    if isinstance(obj, (HFDrafter, NGramDrafter)) or (
        hasattr(obj, "propose") and hasattr(obj, "commit") and hasattr(obj, "prefill")
    ):
        return obj
    if hasattr(obj, "config") and callable(obj):
        return HFDrafter(obj, name=name)
    raise TypeError(
        f"cannot use {type(obj).__name__} as a drafter: pass a transformers causal LM, an NGramDrafter, "
        "or an object with prefill/propose/commit"
    )
