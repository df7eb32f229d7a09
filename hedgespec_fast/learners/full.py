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
    second, ÂL_s[i; K] / (C(i, K) + e·ÂL_s), with C and e from the measured costs
    (:class:`~hedgespec_fast.cost.CostModel`; see ``kernels.throughput_losses`` for the transform and the bound).
    The learner and QPM-D are unchanged, so its regret against the best fixed (drafter, K) in throughput is
    NormalHedge's, scaled by (K_max + 1) / C_min. Feedback is delayed by K_max positions (the longest window).

    With drafters that can have no proposal (``sleepers``: n-gram lookup without a match), each arm is split into
    two specialists (``contexts``, default on): one awake where some sleeper has a proposal, one where none has
    (``kernels.contextual_arms``). A model drafter's acceptance differs between the two (text that repeats is easy
    for every drafter), and it is chosen precisely where the lookup is asleep, so one estimate for both contexts
    overrates it there. The specialists make the comparator the best arm *per context* ("lookup where it matches,
    else drafter j at K, or a plain step"), which includes every fixed arm; the bound grows by ln 2 in ln E.

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
                 objective: str = DEFAULT_OBJECTIVE, contexts: bool = True):
        super().__init__(n_drafters)
        if algo not in kernels.ALGOS:
            raise ValueError(f"unknown learner {algo!r}; expected one of {kernels.ALGOS}")
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
        self.algo, self.loss, self.level, self.choice, self.eta, self.backend = algo, loss, level, choice, eta, backend
        self.objective, self.contexts = objective, contexts
        self.draft_lens: tuple[int, ...] = ()
        self.arms: list[tuple[int, int]] = [(i, -1) for i in range(n_drafters)]  # (drafter, K); K = -1: the config's
        self.base_arms: list[tuple[int, int]] = []  # the throughput layout: no draft, then (i, K) for i, for K
        self.arm_index: list[int] = []  # each arm's base arm, and its context (−1 any, 1 some sleeper awake, 0 none)
        self.arm_context: list[int] = []
        self.sleepers: tuple[int, ...] = ()
        self._layout = None
        self._masks: dict = {}  # awake pattern → the arms playable under it (built once per layout)
        self._reset_state(n_drafters)
        self.stream = LossStream(loss, level, 1)
        self.cost_model = None
        self._drafter, self._length = 0, None
        self.defer_choice: bool | None = None  # None: when the state lives on a CUDA device (see choose)
        self._pending: torch.Tensor | None = None  # the next arm, computed on the device by the last update
        self._received: int | None = None  # …and read back with the last round's packed read
        self._read_weights = True

    def _reset_state(self, experts: int) -> None:
        self._informed = False  # no loss seen yet: the throughput learner's cold-start rule chooses (see choose)
        for name in ("regret", "abs_regret", "cum_loss"):
            self.register_buffer(name, torch.zeros(experts, device=self._device()))
        self.register_buffer("weights_", torch.full((experts,), 1.0 / experts, device=self._device()))
        self.register_buffer("step", torch.zeros(1, dtype=torch.long, device=self._device()))

    def _device(self):
        buf = getattr(self, "weights_", None)
        return buf.device if isinstance(buf, torch.Tensor) else None

    def begin(self, n_drafters: int, draft_len: int, seed: int | None = None, costs=None, sleepers=()) -> None:
        super().begin(n_drafters, draft_len, seed)
        if self.objective == "throughput":
            lens = draft_lengths(draft_len)
            sleepers = tuple(sleepers) if self.contexts else ()
            if (lens, sleepers) != self._layout:  # a new K_max or pool: a new set of arms, learned from scratch
                self._layout, self.draft_lens, self.sleepers = (lens, sleepers), lens, sleepers
                self.base_arms = [(0, 0)] + [(i, k) for i in range(n_drafters) for k in lens]
                # a sleeper's own arms exist only where some sleeper is awake
                keys = [(b, c) for c in ((1, 0) if sleepers else (-1,)) for b, (i, k) in enumerate(self.base_arms)
                        if not (c == 0 and k > 0 and i in sleepers)]
                self.arm_index, self.arm_context = [b for b, _ in keys], [c for _, c in keys]
                self.arms = [self.base_arms[b] for b in self.arm_index]
                self._reset_state(len(self.arms))
                self._masks = {}
                # the specialists' layout as tensors, moving with the module (no list → tensor copy per update)
                for name, values in (("_arm_index", self.arm_index), ("_arm_context", self.arm_context)):
                    self.register_buffer(name, torch.tensor(values, dtype=torch.long, device=self._device()),
                                         persistent=False)
            if costs is None:
                raise ValueError("the throughput objective needs the round's cost model (costs=)")
            self.cost_model = costs
            self.stream = LossStream("expected_length", self.level, max(lens, default=1))
        else:
            self.stream = LossStream(self.loss, self.level, draft_len)

    def _u(self) -> torch.Tensor | None:
        """The uniform draw of a sampled choice, made where the weights are (a host→device copy would wait for the
        queued GPU work: a sync in disguise)."""
        if self.choice != "sample":
            return None
        device = self.weights_.device
        if device.type == "cpu":
            return self.uniform()
        if getattr(self, "_device_generator", None) is None or self._device_generator.device != device:
            self._device_generator = torch.Generator(device=device)
            self._device_generator.manual_seed(int(torch.randint(2**31, (1,), generator=self.generator)))
        return torch.rand(1, device=device, generator=self._device_generator)

    @property
    def deferring(self) -> bool:
        """Choose from the arm the previous update computed on the device, read back with the round's one packed
        read (one more round of feedback delay), instead of reading the weights before each round: one host sync a
        round on CUDA. Automatic where the state is on a CUDA device; ``defer_choice`` forces it either way."""
        return self.defer_choice if self.defer_choice is not None else self.weights_.device.type == "cuda"

    @property
    def host_syncs_per_choice(self) -> int:
        """Syncs the last ``choose()`` cost: none when it took the arm read back with the previous packed read."""
        return int(self.weights_.device.type == "cuda" and self._read_weights)

    def pending_choice(self) -> torch.Tensor | None:
        """The device arm ``[1]`` the decoder should read back with this round's packed read (deferring only)."""
        return self._pending if self.deferring else None

    def receive_choice(self, arm: int) -> None:
        self._received, self._pending = int(arm), None

    def choose(self, awake=None) -> int:
        self._read_weights = not (self.deferring and self._received is not None)
        cold = self._cold_start_arm(awake) if self.objective == "throughput" and not self.informed else None
        if cold is not None:
            arm, self._received, self._read_weights = cold, None, False
        elif not self._read_weights:  # the sleeping-expert mask is not applied here
            arm, self._received = self._received, None
        else:
            weights = self.weights_
            mask = self._awake_arms(awake) if self.objective == "throughput" else None
            if mask is not None:
                # sleeping experts: a drafter without a proposal now (n-gram lookup without a match) is not played
                weights = weights * mask.to(weights.device)
            picked = kernels.choose(weights, self._u())
            if mask is None:
                arm = int(picked.item())
            else:  # the choice and the awake arms' total weight in one read
                arm, total = torch.cat([picked.to(weights.dtype), weights.sum().view(1)]).tolist()
                # no awake arm has positive regret (NormalHedge's weights say nothing here, e.g. a context whose
                # drafters were barely evaluated): the prior's choice, as before the first loss
                prior = self._cold_start_arm(awake) if not total > 0 else None
                arm = int(arm) if prior is None else prior
        drafter, length = self.arms[arm]
        if length == 0:  # no draft: keep the last drafter's label, it drafts nothing
            drafter = self._drafter
        self._drafter, self._length = drafter, (None if length < 0 else length)
        return drafter

    def draft_length(self) -> int:
        return self.draft_len if self._length is None else self._length

    def evaluation_need(self, free) -> float:
        """Weight on the arms of drafters that are not free (throughput objective, CPU state: on a device reading the
        weights would cost a host sync, so there 1.0)."""
        if self.objective != "throughput" or self.weights_.device.type != "cpu":
            return 1.0
        paid = [e for e, (i, k) in enumerate(self.arms) if k > 0 and not free[i]]
        return float(self.weights_[paid].sum()) if paid else 0.0

    @property
    def informed(self) -> bool:
        """Whether the learner has seen a loss (on a CPU state also after ``load_state_dict``)."""
        return self._informed or (self.step.device.type == "cpu" and int(self.step) > 0)

    def _awake_arms(self, awake) -> torch.Tensor | None:
        """``[E]`` bool: the arms that can be played now (their drafter has a proposal, their context holds), or None
        when all can. One mask per awake pattern, built once (a round only looks it up)."""
        key = None if awake is None else tuple(awake)
        if key not in self._masks:
            some = True if awake is None or not self.sleepers else any(awake[i] for i in self.sleepers)
            mask = None
            if not ((awake is None or all(awake)) and all(c < 0 or c == some for c in self.arm_context)):
                mask = torch.tensor([(k == 0 or awake is None or awake[i]) and (c < 0 or c == some)
                                     for (i, k), c in zip(self.arms, self.arm_context)])
            self._masks[key] = mask
        return self._masks[key]

    def _cold_start_arm(self, awake) -> int | None:
        """The arm to play before any loss has arrived: the best expected rate under a prior that is the same for
        every drafter, its acceptance γ uniform on [0, 1] (so E[ÂL(K)] = Σ_{k ≤ K} E[γ^k] = H_{K+1}, the harmonic
        number), from the measured costs — cheap arms first (a free drafter at K_max, or a plain step), instead of a
        uniform draw over arms that is mostly expensive model drafts. A constant number of rounds (until the first
        evaluated window), so the regret bound is unchanged. None while no cost has been measured."""
        seconds = self.cost_model.arm_seconds(self.arms) if self.cost_model is not None else None
        if seconds is None:
            return None
        harmonic = {k: sum(1.0 / j for j in range(1, k + 2)) for k in {0, *self.draft_lens}}
        prior = torch.tensor([harmonic[k] for _, k in self.arms], dtype=torch.float32)
        rate = prior / (seconds + prior * self.cost_model.position_seconds())
        mask = self._awake_arms(awake)
        if mask is not None:
            rate = rate.masked_fill(~mask, -1.0)
        return int(rate.argmax())

    def update(self, outcome: RoundOutcome) -> None:
        self._learn(outcome)
        if self.deferring:  # the next arm, on the device; the decoder reads it with the next packed read
            self._pending = kernels.choose(self.weights_, self._u())

    def _learn(self, outcome: RoundOutcome) -> None:
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
        seconds = self.cost_model.arm_seconds(self.base_arms)
        awake = self.stream.window_awake
        if seconds is None:  # no round has been timed yet (CUDA events complete a little later): score it later
            self.stream.hold(window, awake)
            return
        specialists = (self._arm_index, self._arm_context, self.sleepers) if self.sleepers else None
        kernels.throughput_update(window, awake, self.draft_lens, seconds, *state, level=self.level,
                                  position_seconds=self.cost_model.position_seconds(), specialists=specialists,
                                  **common)
        self._informed = True

    def observe_prompt(self, gamma: torch.Tensor, awake: torch.Tensor | None = None) -> None:
        """The prompt's positions are positions like the generated ones: the same loss stream, so windows run on from
        the prompt into the answer."""
        self.update(RoundOutcome(self._drafter, 0, 0, int(gamma.shape[1]), self.draft_len, gamma, None, awake))

    def weights(self) -> torch.Tensor:
        """The distribution over drafters (under the throughput objective: each drafter's arms summed, the no-draft
        arm left out)."""
        if self.objective == "mat":
            return self.weights_
        drafted = [e for e, (_, k) in enumerate(self.arms) if k > 0]
        owner = torch.tensor([self.arms[e][0] for e in drafted], device=self.weights_.device)
        per_drafter = torch.zeros(self.n_drafters, device=self.weights_.device, dtype=self.weights_.dtype)
        per_drafter.index_add_(0, owner, self.weights_[drafted])
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
                 backend: str = "auto", objective: str = DEFAULT_OBJECTIVE, contexts: bool = True):
        super().__init__(n_drafters, algo="normalhedge", loss=loss, level=level, choice=choice, backend=backend,
                         objective=objective, contexts=contexts)
