"""Logits warping applied identically to target and drafters, at the right positions.

transformers' logits processors act row by row on ``(input_ids [B, L], scores [B, V])``. Speculation scores many
positions at once, each with its own prefix. Processors that never read ``input_ids`` (temperature, top-k, top-p, …)
are applied to all rows in one call; the others (min-new-tokens, repetition penalty, …) are applied once per
position with that position's exact prefix, so every distribution equals the one plain ``generate()`` would see.
"""
from __future__ import annotations

import torch
import transformers.generation.logits_process as lp

# Processors whose output depends on the scores only (never on input_ids or its length).
_POSITION_FREE_NAMES = (
    "TemperatureLogitsWarper",
    "TopKLogitsWarper",
    "TopPLogitsWarper",
    "TopHLogitsWarper",
    "MinPLogitsWarper",
    "TypicalLogitsWarper",
    "EpsilonLogitsWarper",
    "EtaLogitsWarper",
    "InfNanRemoveLogitsProcessor",
    "SuppressTokensLogitsProcessor",
    "LogitNormalization",
)
POSITION_FREE = tuple(getattr(lp, name) for name in _POSITION_FREE_NAMES if hasattr(lp, name))


class LogitsWarp:
    """Apply a ``LogitsProcessorList`` to rows of logits that belong to consecutive positions.

    Parameters
    ----------
    processors : the list ``generate()`` prepared (or any sequence of processors); empty / None = identity.
    """

    def __init__(self, processors=None):
        self.processors = list(processors or [])
        self.position_free = all(isinstance(p, POSITION_FREE) for p in self.processors)
        # Temperature-only lists let the acceptance kernel read raw logits and divide in-kernel.
        self.temperature_only = None
        if not self.processors:
            self.temperature_only = 1.0
        elif len(self.processors) == 1 and isinstance(self.processors[0], lp.TemperatureLogitsWarper):
            self.temperature_only = float(self.processors[0].temperature)

    @property
    def is_identity(self) -> bool:
        return not self.processors

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor, start: int) -> torch.Tensor:
        """Warp ``logits`` whose row ``j`` is the next-token distribution after ``ids[:, :start + j]``.

        Parameters
        ----------
        ids : LongTensor ``[1, L]`` with ``L ≥ start + m − 1``: the sequence the rows condition on.
        logits : Tensor ``[m, V]`` or ``[n, m, V]`` (``n`` models scored on the same positions).
        start : length of the prefix that row 0 conditions on.

        Returns
        -------
        Tensor of the same shape, fp32.
        """
        scores = logits.float()
        if not self.processors:
            return scores
        squeeze = scores.dim() == 2
        if squeeze:
            scores = scores.unsqueeze(0)
        n, m, vocab = scores.shape
        for proc in self.processors:
            if isinstance(proc, POSITION_FREE):
                flat = scores.reshape(n * m, vocab)
                scores = proc(ids[:, :start].expand(n * m, -1), flat).reshape(n, m, vocab)
            else:
                rows = [proc(ids[:, : start + j].expand(n, -1), scores[:, j]) for j in range(m)]
                scores = torch.stack(rows, dim=1)
        return scores[0] if squeeze else scores
