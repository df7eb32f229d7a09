"""Full-information learners: Hedge, NormalHedge, AdaNormalHedge over the drafters, fed through QPM-D's FIFO."""
from __future__ import annotations

import torch

from .. import kernels
from ..feedback import LossStream
from .base import Policy, RoundOutcome


class ExpertPolicy(Policy):
    """An experts learner (ALGORITHMS.md §4) that sees every drafter's loss every round.

    State (buffers): ``regret`` R, ``abs_regret`` C, ``cum_loss`` L, ``weights`` w and ``step`` t; the update runs in
    ``hedgespec_fast.kernels.hedge_update`` (Triton on CUDA, torch otherwise), so moving the module with ``.to()``
    moves the learner onto the device. The same module passed to several ``generate`` calls keeps learning across
    prompts (warm start); the delay queue is per prompt.

    Parameters
    ----------
    n_drafters : N.
    algo : ``"normalhedge"`` (parameter-free, HedgeSpec's default), ``"hedge"`` or ``"adanormalhedge"``.
    loss : ``"expected_length"`` (delayed by up to K positions) or ``"acceptance"``.
    level : ``"token"`` or ``"chunk"``.
    choice : ``"sample"`` from w or ``"argmax"``.
    eta : Hedge's learning rate (None = anytime sqrt(8 ln N / t)).
    backend : kernel backend.
    """

    full_information = True

    def __init__(self, n_drafters: int, algo: str = "normalhedge", loss: str = "expected_length",
                 level: str = "token", choice: str = "sample", eta: float | None = None, backend: str = "auto"):
        super().__init__(n_drafters)
        if algo not in kernels.ALGOS:
            raise ValueError(f"unknown learner {algo!r}; expected one of {kernels.ALGOS}")
        self.algo, self.loss, self.level, self.choice, self.eta, self.backend = algo, loss, level, choice, eta, backend
        n = n_drafters
        self.register_buffer("regret", torch.zeros(n))
        self.register_buffer("abs_regret", torch.zeros(n))
        self.register_buffer("cum_loss", torch.zeros(n))
        self.register_buffer("weights_", torch.full((n,), 1.0 / n))
        self.register_buffer("step", torch.zeros(1, dtype=torch.long))
        self.stream = LossStream(loss, level, 1)

    def begin(self, n_drafters: int, draft_len: int, seed: int | None = None) -> None:
        super().begin(n_drafters, draft_len, seed)
        self.stream = LossStream(self.loss, self.level, draft_len)

    def _u(self) -> torch.Tensor | None:
        return self.uniform().to(self.weights_.device) if self.choice == "sample" else None

    def choose(self) -> int:
        return int(kernels.choose(self.weights_, self._u()).item())

    def update(self, outcome: RoundOutcome) -> None:
        if outcome.gamma is None:
            return
        window, released = self.stream.extend(outcome.gamma)
        if released:  # losses of the released windows + the learner rounds: one launch on a GPU
            kernels.hedge_update_from_gamma(window.to(self.weights_.device), self.regret, self.abs_regret,
                                            self.cum_loss, self.weights_, self.step, draft_len=self.stream.window,
                                            loss=self.loss, level=self.level, algo=self.algo, eta=self.eta,
                                            backend=self.backend)

    def weights(self) -> torch.Tensor:
        return self.weights_


class HedgeSpecSelector(ExpertPolicy):
    """HedgeSpec: NormalHedge + QPM-D delayed feedback + expected-accepted-length loss, token level."""

    def __init__(self, n_drafters: int, loss: str = "expected_length", level: str = "token", choice: str = "sample",
                 backend: str = "auto"):
        super().__init__(n_drafters, algo="normalhedge", loss=loss, level=level, choice=choice, backend=backend)
