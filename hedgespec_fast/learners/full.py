"""Full-information learners: Hedge, NormalHedge, AdaNormalHedge over drafters — or over (drafter, draft length)
arms under the throughput objective — fed through QPM-D's FIFO."""
from __future__ import annotations

import torch

from .. import kernels
from ..config import DEFAULT_OBJECTIVE
from ..feedback import LossStream
from .base import Policy, RoundOutcome

OBJECTIVES = ("throughput", "mat")
# Draft lengths the throughput objective weighs (those ≤ K_max, and K_max itself): every K up to 6, then a
# geometric grid, so a long K_max adds a few arms, not dozens.
LENGTH_GRID = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64)


def draft_lengths(k_max: int) -> tuple[int, ...]:
    """The draft lengths the throughput learner chooses among for an upper bound ``k_max``."""
    return tuple(sorted({k for k in LENGTH_GRID if k < k_max} | {k_max})) if k_max > 0 else ()


class ExpertPolicy(Policy):
    """An experts learner (ALGORITHMS.md §4) that sees every drafter's loss every round.

    Objectives
    ----------
    ``"mat"`` (the paper's): one expert per drafter, loss from ``loss`` (expected accepted length or acceptance
    rate) at the configured draft length K.

    ``"throughput"``: one expert per arm — ``no draft`` (a plain target step) and every (drafter i, K) with K in
    :func:`draft_lengths`\\ (K_max) — and the loss of each arm is a bounded transform of its expected tokens per
    second, ÂL_s[i; K] / C(i, K), with C from the measured costs (:class:`~hedgespec_fast.cost.CostModel`; see
    ``kernels.throughput_losses`` for the transform and the bound). The learner and QPM-D are unchanged, so its
    regret against the best fixed (drafter, K) in throughput is NormalHedge's, scaled by (K_max + 1) / C_min.
    Feedback is delayed by K_max positions (the longest window).

    State (buffers): ``regret`` R, ``abs_regret`` C, ``cum_loss`` L, ``weights_`` w (over experts) and ``step`` t;
    the update runs in ``hedgespec_fast.kernels`` (Triton on CUDA, torch otherwise), so moving the module with
    ``.to()`` moves the learner onto the device. The same module passed to several ``generate`` calls keeps learning
    across prompts (warm start; under the throughput objective also its cost estimates), as long as the pool size
    and K_max stay the same; the delay queue is per prompt.

    Parameters
    ----------
    n_drafters : N.
    algo : ``"normalhedge"`` (parameter-free, HedgeSpec's default), ``"hedge"`` or ``"adanormalhedge"``.
    loss : ``"expected_length"`` (delayed by up to K positions) or ``"acceptance"`` (objective ``"mat"``).
    level : ``"token"`` or ``"chunk"``.
    choice : ``"sample"`` from w or ``"argmax"``.
    eta : Hedge's learning rate (None = anytime sqrt(8 ln N / t)).
    backend : kernel backend.
    objective : ``"throughput"`` (the default) or ``"mat"``. A selector passed as ``policy=`` keeps its own objective
        whatever the generation's ``objective`` says.
    """

    full_information = True

    @property
    def partial_information(self) -> bool:  # the throughput objective treats unevaluated drafters as asleep
        return self.objective == "throughput"

    def __init__(self, n_drafters: int, algo: str = "normalhedge", loss: str = "expected_length",
                 level: str = "token", choice: str = "sample", eta: float | None = None, backend: str = "auto",
                 objective: str = DEFAULT_OBJECTIVE):
        super().__init__(n_drafters)
        if algo not in kernels.ALGOS:
            raise ValueError(f"unknown learner {algo!r}; expected one of {kernels.ALGOS}")
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
        self.algo, self.loss, self.level, self.choice, self.eta, self.backend = algo, loss, level, choice, eta, backend
        self.objective = objective
        self.draft_lens: tuple[int, ...] = ()
        self.arms: list[tuple[int, int]] = [(i, -1) for i in range(n_drafters)]  # (drafter, K); K = -1: the config's
        self._reset_state(n_drafters)
        self.stream = LossStream(loss, level, 1)
        self.cost_model = None
        self._drafter, self._length = 0, None

    def _reset_state(self, experts: int) -> None:
        for name in ("regret", "abs_regret", "cum_loss"):
            self.register_buffer(name, torch.zeros(experts, device=self._device()))
        self.register_buffer("weights_", torch.full((experts,), 1.0 / experts, device=self._device()))
        self.register_buffer("step", torch.zeros(1, dtype=torch.long, device=self._device()))

    def _device(self):
        buf = getattr(self, "weights_", None)
        return buf.device if isinstance(buf, torch.Tensor) else None

    def begin(self, n_drafters: int, draft_len: int, seed: int | None = None, costs=None) -> None:
        super().begin(n_drafters, draft_len, seed)
        if self.objective == "throughput":
            lens = draft_lengths(draft_len)
            if lens != self.draft_lens:  # a new K_max: a new set of arms, learned from scratch
                self.draft_lens = lens
                self.arms = [(0, 0)] + [(i, k) for i in range(n_drafters) for k in lens]
                self._reset_state(len(self.arms))
            if costs is None:
                raise ValueError("the throughput objective needs the round's cost model (costs=)")
            self.cost_model = costs
            self.stream = LossStream("expected_length", self.level, max(lens, default=1))
        else:
            self.stream = LossStream(self.loss, self.level, draft_len)

    def _u(self) -> torch.Tensor | None:
        return self.uniform().to(self.weights_.device) if self.choice == "sample" else None

    def choose(self, awake=None) -> int:
        weights = self.weights_
        if self.objective == "throughput" and awake is not None and not all(awake):
            # sleeping experts: a drafter without a proposal now (n-gram lookup without a match) is not played
            mask = torch.tensor([True] + [awake[i] for i, _ in self.arms[1:]], device=weights.device)
            weights = weights * mask
        arm = int(kernels.choose(weights, self._u()).item())
        drafter, length = self.arms[arm]
        if length == 0:  # no draft: keep the last drafter's label, it drafts nothing
            drafter = self._drafter
        self._drafter, self._length = drafter, (None if length < 0 else length)
        return drafter

    def draft_length(self) -> int:
        return self.draft_len if self._length is None else self._length

    def update(self, outcome: RoundOutcome) -> None:
        if outcome.skipped:  # windows cannot span positions nobody evaluated
            self.stream.reset()
        if outcome.gamma is None:
            return
        window, released = self.stream.extend(outcome.gamma, outcome.awake)
        if not released:
            return
        state = (self.regret, self.abs_regret, self.cum_loss, self.weights_, self.step)
        common = dict(algo=self.algo, eta=self.eta, backend=self.backend)
        if self.objective == "mat":  # losses of the released windows + the learner rounds: one launch on a GPU
            kernels.hedge_update_from_gamma(window.to(self.weights_.device), *state, draft_len=self.stream.window,
                                            loss=self.loss, level=self.level, **common)
            return
        seconds = self.cost_model.arm_seconds(self.arms)
        awake = self.stream.window_awake
        if seconds is None:  # no round has been timed yet (CUDA events complete a little later): score it later
            self.stream.hold(window, awake)
            return
        device = self.weights_.device
        losses = kernels.throughput_losses(window.to(device), self.draft_lens, seconds)  # NaN: a window not evaluated
        arm_awake = kernels.throughput_awake(awake.to(device), self.draft_lens) & losses.isfinite()
        losses = losses.nan_to_num(0.0)
        if self.level == "chunk" and losses.shape[0] > 1:  # the mean over the rounds each arm was awake
            counts = arm_awake.sum(dim=0, keepdim=True)
            losses = (losses * arm_awake).sum(dim=0, keepdim=True) / counts.clamp(min=1)
            arm_awake = counts > 0
        kernels.hedge_update(losses, *state, awake=None if bool(arm_awake.all()) else arm_awake, **common)

    def observe_prompt(self, gamma: torch.Tensor, awake: torch.Tensor | None = None) -> None:
        """The prompt's positions are positions like the generated ones: the same loss stream, so windows run on from
        the prompt into the answer."""
        self.update(RoundOutcome(self._drafter, 0, 0, int(gamma.shape[1]), self.draft_len, gamma, None, awake))

    def weights(self) -> torch.Tensor:
        """The distribution over drafters (under the throughput objective: each drafter's arms summed, the no-draft
        arm left out)."""
        if self.objective == "mat":
            return self.weights_
        per_drafter = self.weights_[1:].view(self.n_drafters, -1).sum(dim=1)
        total = per_drafter.sum()
        return torch.where(total > 0, per_drafter / total.clamp(min=1e-30),
                           torch.full_like(per_drafter, 1.0 / self.n_drafters))

    def arm_weights(self) -> torch.Tensor:
        """The learner's distribution over its experts (drafters, or arms under the throughput objective)."""
        return self.weights_


class HedgeSpecSelector(ExpertPolicy):
    """HedgeSpec: NormalHedge + QPM-D delayed feedback + expected-accepted-length loss, token level; with
    ``objective="throughput"`` over (drafter, draft length) arms and tokens per second."""

    def __init__(self, n_drafters: int, loss: str = "expected_length", level: str = "token", choice: str = "sample",
                 backend: str = "auto", objective: str = DEFAULT_OBJECTIVE):
        super().__init__(n_drafters, algo="normalhedge", loss=loss, level=level, choice=choice, backend=backend,
                         objective=objective)
