"""Full-information learners: Hedge, NormalHedge, AdaNormalHedge over drafters — or over (drafter, draft length)
arms under the throughput objective — fed through QPM-D's FIFO."""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import torch

from .. import kernels
from ..kernels.host import HostState, throughput_rows
from ..config import DEFAULT_OBJECTIVE
from ..feedback import LossStream
from .base import Policy, RoundOutcome

OBJECTIVES = ("throughput", "mat")
# Draft lengths the throughput objective weighs (those ≤ K_max, and K_max itself): every K up to 6, then a
# geometric grid, so a long K_max adds a few arms, not dozens.
LENGTH_GRID = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64)
COLD_STARTS = ("chains", "uniform")  # the prior the throughput learner plays before its first loss (_cold_start_arm)
LIVE_WEIGHT = 1e-3  # a drafter whose arms carry less is left out of evaluations but in turn (evaluation_targets)
MAX_PLAYED = 256  # played chains kept until their first position's window is released (a few rounds)
QUEUED_POSITIONS = 4  # plain steps' γ is scored in batches of this many positions (see ExpertPolicy._batched)


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
    NormalHedge's, scaled by (K_max + 1) / C_min. Feedback is delayed by at most K_max positions (the longest window):
    a window whose every drafter has met a miss (γ = 0) or an unevaluated position is released at once
    (``LossStream(early=True)``: the same losses, sooner).

    With drafters that can have no proposal (``sleepers``: n-gram lookup without a match), each arm is split into
    two specialists (``contexts``, default on): one awake where some sleeper has a proposal, one where none has
    (``kernels.contextual_arms``). A model drafter's acceptance differs between the two (text that repeats is easy
    for every drafter), and it is chosen precisely where the lookup is asleep, so one estimate for both contexts
    overrates it there. The specialists make the comparator the best arm *per context* ("lookup where it matches,
    else drafter j at K, or a plain step"), which includes every fixed arm; the bound grows by ln 2 in ln E.

    Partial information (evaluation skips positions to stay within its budget): a drafter not evaluated at a window
    is asleep there, except that a chain round is itself an observation of the arm it played — drafter i drafted k
    tokens and n were accepted, so every arm (i, K ≤ k) would have emitted 1 + min(n, K) tokens from that position
    (the K-draft is the k-draft's prefix); which K are observed is fixed before the outcome, so the sample is
    unbiased, and it is used only where γ is unknown. Under greedy decoding a chain shows more: its drafter's γ itself
    at every position of the round (1 where accepted, 0 where rejected: ``feedback.chain_gamma``, filled in by the
    decoder where γ is unknown), so the windows starting inside the round are scored too, exactly, not only the
    first; the played drafter's draft length then follows its chains round by round, between evaluations. An
    evaluation scores only the drafters whose arms carry weight
    and one other in turn (:meth:`evaluation_targets`). The guarantee is the sleeping experts': against each arm,
    over the windows where it was scored.

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
    contexts : split each arm into the two specialists above (throughput objective, with sleepers in the pool).
    cold_start : the belief the throughput learner plays by before its first loss: ``"chains"`` (the default: each
        drafter's acceptance updated by the chains it drafted in this generation) or ``"uniform"`` (the same prior
        for all, kept until the first loss); see :meth:`_cold_start_arm`.
    """

    full_information = True

    @property
    def partial_information(self) -> bool:  # the throughput objective treats unevaluated drafters as asleep
        return self.objective == "throughput"

    def __init__(self, n_drafters: int, algo: str = "normalhedge", loss: str = "expected_length",
                 level: str = "token", choice: str = "sample", eta: float | None = None, backend: str = "auto",
                 objective: str = DEFAULT_OBJECTIVE, contexts: bool = True, cold_start: str = "chains"):
        super().__init__(n_drafters)
        if cold_start not in COLD_STARTS:
            raise ValueError(f"unknown cold_start {cold_start!r}; expected one of {COLD_STARTS}")
        if algo not in kernels.ALGOS:
            raise ValueError(f"unknown learner {algo!r}; expected one of {kernels.ALGOS}")
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
        self.algo, self.loss, self.level, self.choice, self.eta, self.backend = algo, loss, level, choice, eta, backend
        self.objective, self.contexts, self.cold_start = objective, contexts, cold_start
        self.draft_lens: tuple[int, ...] = ()
        self.arms: list[tuple[int, int]] = [(i, -1) for i in range(n_drafters)]  # (drafter, K); K = -1: the config's
        self.base_arms: list[tuple[int, int]] = []  # the throughput layout: no draft, then (i, K) for i, for K
        self.arm_index: list[int] = []  # each arm's base arm, and its context (−1 any, 1 some sleeper awake, 0 none)
        self.arm_context: list[int] = []
        self.sleepers: tuple[int, ...] = ()
        self._layout = None
        self._masks: dict = {}  # awake pattern → the arms playable under it (built once per layout)
        self._awake_index: dict = {}  # … and their indices
        self._reset_state(n_drafters)
        self.stream = LossStream(loss, level, 1)
        self.cost_model = None
        self._drafter, self._length = 0, None
        self.defer_choice: bool | None = None  # None: when the state lives on a CUDA device (see choose)
        self._pending: torch.Tensor | None = None  # the next arm, computed on the device by the last update
        self._received: int | None = None  # …and read back with the last round's packed read
        self._read_weights = True
        self._host_state = HostState()
        self._host_where, self._on_host = None, False
        self._uniforms: list[float] = []  # the policy generator's draws, taken in batches (one torch call per 64)
        self._queued: list = []  # (γ, awake, γ start) of plain steps not scored yet
        self._revive = 0  # which weightless drafter the next evaluation takes (evaluation_targets)
        self._played: list[tuple[int, int, int, int]] = []  # (first position, drafter, drafted, accepted) of chains
        self._chain_counts = np.zeros((n_drafters, 2))  # this generation's accepted tokens and rejections per drafter
        self._lengths = None  # E[ÂL(K)] per arm under the cold start's belief; None: to recompute from the counts

    def _host(self) -> HostState | None:
        """The state's float64 NumPy mirror when the update runs on the host (CPU state, backend "host" or "auto"),
        synced with the buffers; None on a device."""
        weights = self.weights_
        where = (weights.device, self.backend, os.environ.get(kernels.ENV_BACKEND))
        if where != self._host_where:  # the backend is resolved once per device and setting, not every round
            self._host_where = where
            self._on_host = kernels.resolve_backend(self.backend, weights.device, learner=True) == "host"
        if not self._on_host:
            return None
        return self._host_state.sync(self.regret, self.abs_regret, self.cum_loss, weights, self.step)

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
        self._played, self._uniforms, self._queued = [], [], []
        self._chain_counts, self._lengths = np.zeros((n_drafters, 2)), None
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
                self._masks, self._awake_index = {}, {}
                # the specialists' layout as tensors, moving with the module (no list → tensor copy per update)
                for name, values in (("_arm_index", self.arm_index), ("_arm_context", self.arm_context)):
                    self.register_buffer(name, torch.tensor(values, dtype=torch.long, device=self._device()),
                                         persistent=False)
                self._host_layout = (np.asarray(self.arm_index), np.asarray(self.arm_context), self.sleepers)
            if costs is None:
                raise ValueError("the throughput objective needs the round's cost model (costs=)")
            self.cost_model = costs
            self.stream = LossStream("expected_length", self.level, max(lens, default=1), early=True)
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
            mask = self._awake_arms(awake) if self.objective == "throughput" else None
            host = self._host()
            if host is not None:  # the NumPy mirror: no torch call in the choice
                u = self._host_uniform() if self.choice == "sample" else None
                arm, total = host.choose(u, None if mask is None else
                                         self._awake_index[None if awake is None else tuple(awake)])
            else:
                weights = self.weights_
                if mask is not None:
                    # sleeping experts: a drafter without a proposal now (n-gram lookup without a match) is not played
                    weights = weights * torch.from_numpy(mask).to(weights.device)
                picked = kernels.choose(weights, self._u())
                total = 1.0
                if mask is None:
                    arm = int(picked.item())
                else:  # the choice and the awake arms' total weight in one read
                    arm, total = torch.cat([picked.to(weights.dtype), weights.sum().view(1)]).tolist()
            # no awake arm has positive regret (NormalHedge's weights say nothing here, e.g. a context whose drafters
            # were barely evaluated): the prior's choice, as before the first loss
            prior = self._cold_start_arm(awake) if mask is not None and not total > 0 else None
            arm = int(arm) if prior is None else prior
        drafter, length = self.arms[arm]
        if length == 0:  # no draft: keep the last drafter's label, it drafts nothing
            drafter = self._drafter
        self._drafter, self._length = drafter, (None if length < 0 else length)
        return drafter

    def _host_uniform(self) -> float:
        if not self._uniforms:
            self._uniforms = torch.rand(64, generator=self.generator, dtype=torch.float64).tolist()[::-1]
        return self._uniforms.pop()

    def draft_length(self) -> int:
        return self.draft_len if self._length is None else self._length

    def evaluation_need(self, free) -> float:
        """Weight on the arms of drafters that are not free (throughput objective, CPU state: on a device reading the
        weights would cost a host sync, so there 1.0)."""
        if self.objective != "throughput" or self.weights_.device.type != "cpu":
            return 1.0
        paid = [e for e, (i, k) in enumerate(self.arms) if k > 0 and not free[i]]
        host = self._host()
        weights = host.w if host is not None else self.weights_.numpy()
        return float(weights[paid].sum()) if paid else 0.0

    def evaluation_targets(self, free) -> list[bool] | None:
        """Under the throughput objective on CPU state: the free drafters, those whose arms carry weight (> 1e-3), and
        one of the others in turn; None (all) otherwise.

        An evaluation is worth what it can change (selective sampling's rule). A drafter whose every arm has weight 0
        (NormalHedge: no positive regret) is outside the learner's mixture, so scoring it changes neither the
        learner's loss nor any other arm's regret, only possibly its own; leaving it out skips its catch-up forward,
        the evaluation's cost. Its arms are asleep in the windows it missed (the bound is the sleeping experts'), and
        taking one such drafter per evaluation in turn keeps every drafter scored now and then, so one that turns
        good is still noticed."""
        if self.objective != "throughput" or self.weights_.device.type != "cpu" or not self.informed:
            return None
        host = self._host()
        weights = host.w if host is not None else self.weights_.numpy()
        live = np.zeros(self.n_drafters)
        owners = self._arm_owner()
        np.add.at(live, owners[owners >= 0], weights[owners >= 0])
        targets = [bool(f) or bool(live[i] > LIVE_WEIGHT) for i, f in enumerate(free)]
        idle = [i for i, t in enumerate(targets) if not t]
        if idle:
            self._revive = (self._revive + 1) % len(idle)
            targets[idle[self._revive]] = True
        return targets

    def _arm_owner(self) -> np.ndarray:
        """``[E]`` the drafter of each arm, −1 for the plain step (cached per layout)."""
        if getattr(self, "_owners_for", None) is not self.arms:
            self._owners_for = self.arms
            self._owners = np.array([i if k != 0 else -1 for i, k in self.arms])
        return self._owners

    @property
    def informed(self) -> bool:
        """Whether the learner has seen a loss (on a CPU state also after ``load_state_dict``)."""
        return self._informed or (self.step.device.type == "cpu" and int(self.step) > 0)

    def _awake_arms(self, awake) -> np.ndarray | None:
        """``[E]`` bool (NumPy): the arms that can be played now (their drafter has a proposal, their context holds),
        or None when all can. One mask per awake pattern, built once (a round only looks it up)."""
        key = None if awake is None else tuple(awake)
        if key not in self._masks:
            some = True if awake is None or not self.sleepers else any(awake[i] for i in self.sleepers)
            mask = None
            if not ((awake is None or all(awake)) and all(c < 0 or c == some for c in self.arm_context)):
                mask = np.array([(k == 0 or awake is None or awake[i]) and (c < 0 or c == some)
                                 for (i, k), c in zip(self.arms, self.arm_context)], dtype=bool)
            self._masks[key] = mask
            self._awake_index[key] = None if mask is None else np.flatnonzero(mask)
        return self._masks[key]

    def _cold_start_arm(self, awake) -> int | None:
        """The arm to play before any loss has arrived: the best expected rate at the measured costs, E[ÂL(K)] /
        (C(i, K) + e·E[ÂL(K)]), under a Beta(1 + a_i, 1 + r_i) belief in each drafter's acceptance γ, where a_i and
        r_i are the tokens accepted and the chains rejected among the chains drafter i drafted in this generation
        (``cold_start="chains"``; the Bernoulli likelihood of a chain that accepted n of k: n successes, then a
        failure if n < k). With no chain yet that is γ uniform on [0, 1], the same for every drafter, so
        E[ÂL(K)] = Σ_{k ≤ K} E[γ^k] = H_{K+1} (the harmonic number): cheap arms first (a free drafter at K_max, or a
        plain step) instead of a uniform draw over arms that are mostly expensive model drafts; then
        E[γ^k] = Π_{j<k} (α + j) / (α + β + j) follows what the played chains showed, so a lookup whose 16-token
        chains are rejected at once gives way to a model drafter within a round or two, where the uniform prior
        (``cold_start="uniform"``) kept playing it until the first evaluated window (6–10 rounds of a 64-token
        answer). A constant number of rounds either way (until the first released window), so the regret bound is
        unchanged. None while no cost has been measured."""
        seconds = self.cost_model.arm_seconds(self.base_arms) if self.cost_model is not None else None
        if seconds is None:
            return None
        expected = self._expected_lengths()
        rate = expected / (seconds.numpy()[self._host_layout[0]] + expected * self.cost_model.position_seconds())
        mask = self._awake_arms(awake)
        if mask is not None:
            rate = np.where(mask, rate, -1.0)
        return int(np.argmax(rate))

    def _expected_lengths(self) -> np.ndarray:
        """``[E]`` E[ÂL(K)] of each arm under the cold start's belief (see :meth:`_cold_start_arm`); 1 for no draft.
        Recomputed only when a chain has been counted since (or a generation began)."""
        if self._lengths is None:
            counts = self._chain_counts
            alpha, beta = 1.0 + counts[:, :1], 1.0 + counts[:, 1:]
            j = np.arange(max(self.draft_lens, default=0))
            moments = np.cumprod((alpha + j) / (alpha + beta + j), axis=1)  # [N, K_max]: E[γ^k], k = 1 … K_max
            lengths = 1.0 + np.concatenate([np.zeros((len(counts), 1)), np.cumsum(moments, axis=1)], axis=1)
            self._lengths = np.array([1.0 if k <= 0 else lengths[i, k] for i, k in self.arms])
        return self._lengths

    def update(self, outcome: RoundOutcome) -> None:
        self._learn(outcome)
        if self.deferring:  # the next arm, on the device; the decoder reads it with the next packed read
            self._pending = kernels.choose(self.weights_, self._u())

    def _learn(self, outcome: RoundOutcome) -> None:
        gamma, awake = outcome.gamma, outcome.awake
        throughput = self.objective == "throughput"
        if throughput and not self.draft_lens:  # K_max = 0: the no-draft arm alone, nothing to learn
            return
        asked = outcome.drafted if outcome.asked is None else max(outcome.asked, outcome.drafted)
        if throughput and outcome.start is not None and asked > 0:
            self._played.append((outcome.start, outcome.chosen, asked, outcome.accepted))
            del self._played[:-MAX_PLAYED]
            if self.cold_start == "chains":
                self._chain_counts[outcome.chosen] += (outcome.accepted, outcome.accepted < asked)
                self._lengths = None
        if outcome.skipped:
            if throughput and not self.sleepers and outcome.gamma_start is not None:
                # nobody was evaluated, but the plain step's loss needs no γ and the played arm has its own outcome:
                # the positions stay in the stream, unknown (NaN) for every drafter
                gamma = torch.full((self.n_drafters, outcome.emitted), float("nan"), device=self.weights_.device)
            else:  # windows cannot span positions nobody evaluated
                self.stream.reset()
                self._queued = []
        if gamma is None:
            return
        if throughput:
            gamma, awake, outcome = self._batched(gamma, awake, outcome)
            if gamma is None:
                return
        window, released = self.stream.extend(gamma, awake)
        if not released:
            return
        state = (self.regret, self.abs_regret, self.cum_loss, self.weights_, self.step)
        common = dict(algo=self.algo, eta=self.eta, backend=self.backend)
        host = self._host()
        if self.objective == "mat" and host is not None:
            losses = kernels.gamma_losses(window, self.loss, self.stream.window)
            if self.level == "chunk" and losses.shape[0] > 1:
                losses = losses.mean(dim=0, keepdim=True)
            host.rounds(losses.numpy().astype(np.float64), None, self.algo, self.eta)
            host.store()
            return
        if self.objective == "mat":  # losses of the released windows + the learner rounds: one launch on a GPU
            kernels.hedge_update_from_gamma(window.to(self.weights_.device), *state, draft_len=self.stream.window,
                                            loss=self.loss, level=self.level, **common)
            return
        seconds = self.cost_model.arm_seconds(self.base_arms)
        awake = self.stream.window_awake
        if seconds is None:  # no round has been timed yet (CUDA events complete a little later): score it later
            self.stream.hold(window, awake)
            return
        first = None if outcome.gamma_start is None else \
            outcome.gamma_start + gamma.shape[1] - (window.shape[1] - self.stream.padding)
        observed = self._observed(first, released)
        if host is not None:  # NumPy end to end on the mirror
            rows, masks = throughput_rows(window.numpy().astype(np.float64), awake.numpy(), self.draft_lens,
                                          seconds.numpy().astype(np.float64), self.cost_model.position_seconds(),
                                          self._host_layout if self.sleepers else None, self.level, observed)
            host.rounds(rows, masks, self.algo, self.eta)
            host.store()
        else:
            specialists = (self._arm_index, self._arm_context, self.sleepers) if self.sleepers else None
            kernels.throughput_update(window, awake, self.draft_lens, seconds, *state, level=self.level,
                                      position_seconds=self.cost_model.position_seconds(), specialists=specialists,
                                      observed=observed, **common)
        self._informed = True
        if first is not None:
            self._played = [p for p in self._played if p[0] >= first + released]

    def _batched(self, gamma, awake, outcome):
        """Plain steps queue their γ until ``QUEUED_POSITIONS`` positions wait (or a drafting round comes): a plain step
        emits one position, and scoring it alone cost a whole update (most of a round's overhead on a CPU) to learn
        from one window, often one in which only the plain step could be scored. The learner sees those windows up
        to ``QUEUED_POSITIONS`` − 1 positions later: QPM-D's delay term grows by as much. Returns the γ, awake and
        outcome to score now (γ None: wait)."""
        self._queued.append((gamma, awake, outcome.gamma_start))
        if outcome.drafted == 0 and sum(int(g.shape[1]) for g, _, _ in self._queued) < QUEUED_POSITIONS:
            return None, None, outcome
        queued, self._queued = self._queued, []
        if len(queued) == 1:
            return gamma, awake, outcome
        if any(a is not None for _, a, _ in queued):
            awake = torch.cat([torch.ones_like(g, dtype=torch.bool) if a is None else a for g, a, _ in queued], dim=1)
        starts = [start for _, _, start in queued]
        return (torch.cat([g for g, _, _ in queued], dim=1), awake,
                replace(outcome, gamma_start=None if None in starts else starts[0]))

    def _observed(self, first: int | None, released: int) -> list[tuple[int, int, int]]:
        """``(window, base arm, tokens)`` for the played chains whose first position is among the released windows:
        a chain of drafter i asked for k tokens that had n accepted is an outcome of every arm (i, K ≤ k) at its first
        position, 1 + min(n, K) tokens (the K-draft is the k-draft's prefix; a chain that ended early by a rule of its
        prefix, a lookup without a match or a confidence stop, ends there for every K too). That sample is unbiased
        (which K are observed is fixed before the outcome), so where evaluation skipped drafter i the learner still
        scores the arm it played, at no cost; a window it did evaluate keeps γ's expectation (NaN-only fill)."""
        if first is None or not self._played:
            return []
        lens = self.draft_lens
        return [(p - first, 1 + i * len(lens) + j, 1 + min(n, k)) for p, i, d, n in self._played
                if first <= p < first + released for j, k in enumerate(lens) if k <= d]

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
        # (draft_len = 0 leaves no drafting arm: an empty index must still be an integer one)
        owner = torch.tensor([self.arms[e][0] for e in drafted], dtype=torch.long, device=self.weights_.device)
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
                 backend: str = "auto", objective: str = DEFAULT_OBJECTIVE, contexts: bool = True,
                 cold_start: str = "chains"):
        super().__init__(n_drafters, algo="normalhedge", loss=loss, level=level, choice=choice, backend=backend,
                         objective=objective, contexts=contexts, cold_start=cold_start)
