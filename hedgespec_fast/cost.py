"""Measured costs of a round → the expected seconds of every (drafter, draft length) arm.

The cost model sees timings, never models. Per round the decoder reports how long each phase took (CPU clocks, or
CUDA events read once they have completed, so no host sync is added) and what the round did (which drafter, how
many tokens drafted, how many the target verified, how many positions were evaluated). From those it keeps:

- ``verify[n]``: seconds of a target verification forward over ``n`` tokens (K + 1 for a chain of K), one running
  mean per ``n`` seen. Verification cost is not linear in ``n`` on every machine (on a memory-bound GPU it is flat up
  to dozens of tokens; on a CPU whose GEMM is slow for small batches it jumps from n = 1 to n = 2 and is flat again
  after), so each ``n`` is measured, and an unseen ``n`` is interpolated between its measured neighbours and taken
  equal to the largest measured one beyond them (optimistic: an arm is tried before it is ruled out).
- ``draft[i]``: seconds per drafted token of drafter ``i`` (a model drafter runs one forward per token).
- ``evaluate`` and ``update``: seconds the full-information evaluation and the learner's update cost per round
  (long-run means: evaluation comes in batches), and ``positions``, the positions a round emits (long-run mean).
  Both scale with the positions scored, not with the rounds (the update runs one learner round per position), so
  they are charged per emitted position: ``position_seconds`` = (evaluate + update) / positions.
- ``overhead``: the rest of a round outside the forwards (the choice).
- ``prefill[i]``: seconds per prompt token of model drafter i's prompt forward on this generation's prompt (CPU
  clocks), so that what bringing a drafter into a generation costs is known before it is paid
  (:meth:`CostModel.catch_up_seconds`). A prompt forward's seconds per token are not a constant: fixed costs make a
  short prompt dear per token (a 30-token prompt cost a 1.5B model 1.7× the per-token seconds of a 500-token one on
  a 2-core CPU, bench/prefill_ratio.py), so a rate measured on one prompt misprices another. What is stable is the
  drafter's price against the target's on the same prompt (``prefill_ratio[i]``: 0.28–0.36 for a 0.5B int8 drafter
  of a 1.5B bf16 target from 30 to 500 tokens, 0.88–0.98 for the target's int8 copy), and the target's own prompt
  forward is timed in every generation before any drafter is priced: ``prefill[i]`` = ratio × the target's seconds
  per token on this prompt.
  Readings are noisy upwards (the first forward of a model runs cold, a neighbour's load): a lower ratio replaces the
  estimate at once, a higher one moves it by ``decay``.
- ``excess[i]``: what a round drafted by drafter i costs beyond that sum, as the learner plays it (long-run mean over
  every round i drafted, lagging ones included): a drafter chosen after rounds it sat out first catches up on the
  text it missed, and the target's weights, evicted from the CPU's caches by a model drafter's forwards, make the
  verification after it slower than after a plain step or an n-gram lookup. Neither shows in ``draft[i]`` (clean
  rounds) or ``verify[n]`` (shared by every drafter).

- ``runs[τ][i]``: with a confidence stop τ (``SpecConfig.draft_stop``), how far drafter i's chains get before it:
  Kaplan–Meier counts of its runs of confident positions (top probability ≥ τ) on the evaluated text, so that a
  chain asked for K tokens is expected to draft D(i, K) = Σ_{r ≤ K} S_i(r) of them, S_i(r) the share of runs that
  reach r (runs cut by the end of an evaluated stretch count as censored, not as ended). Kept per τ: a generation
  without the stop drafts K.

Expected cost of an arm (i, K) emitting ÂL tokens: C(i, K) + e·ÂL with C(i, K) = verify[D + 1] + D·draft[i] +
excess[i] + overhead, D = K (or D(i, K) under a stop) and e = ``position_seconds`` (ALGORITHMS.md §3). A per-round
charge would be wrong here: it would make every arm that emits few tokens a round (the no-draft arm above all) look
dearer than it is. All running means are exponential (``decay``), so costs follow a machine whose speed drifts.
"""
from __future__ import annotations

import math
import time
import weakref

import numpy as np
import torch

MAX_RUN = 64  # the longest run of confident positions the stop statistics tell apart


class CostModel:
    """Running estimates of a round's costs.

    Parameters
    ----------
    n_drafters : N.
    decay : weight of the newest measurement in every running mean.
    """

    def __init__(self, n_drafters: int, decay: float = 0.2):
        self.n_drafters, self.decay = n_drafters, decay
        self.verify: dict[int, float] = {}
        self.draft: list[float | None] = [None] * n_drafters
        self.excess = [0.0] * n_drafters
        self.prefill: list[float | None] = [None] * n_drafters
        self.prefill_ratio: list[float | None] = [None] * n_drafters  # drafter's prompt forward / the target's
        self.target_prefill: tuple[int, float] | None = None  # (tokens, seconds) of the running generation's
        self.evaluate = 0.0
        self.update = 0.0
        self.positions = 1.0
        self.overhead = 0.0
        self.work = 0.0  # a round's seconds outside evaluation (drafting, verifying, overhead)
        self.rounds = 0
        self.eval_forward: float | None = None  # seconds of one evaluation forward (all drafters), when it ran
        self.runs: dict[float, list] = {}  # confidence stop τ → per drafter [continued[r], at_risk[r]] (r = 1…R)
        self.draft_stop: float | None = None  # the running generation's stop (set by the decoder)

    # -- measurements ------------------------------------------------------------------------------------------------
    def _mean(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.decay * (new - old)

    def observe_verify(self, tokens: int, seconds: float) -> None:
        self.verify[tokens] = self._mean(self.verify.get(tokens), seconds)

    def observe_draft(self, drafter: int, tokens: int, seconds: float) -> None:
        if tokens > 0:
            self.draft[drafter] = self._mean(self.draft[drafter], seconds / tokens)

    def _low(self, old: float | None, new: float) -> float:
        """A running estimate of a timing whose noise is upwards: a lower reading is taken at once."""
        return new if old is None or new < old else self._mean(old, new)

    def observe_target_prefill(self, tokens: int, seconds: float | None) -> None:
        """The target took ``seconds`` over this generation's prompt of ``tokens`` tokens (None: not timed): every
        drafter whose ratio is known is priced for this prompt (``prefill[i]``)."""
        self.target_prefill = None  # (a previous generation's says nothing about this prompt)
        if tokens <= 0 or not seconds:
            return
        self.target_prefill = (tokens, seconds)
        for i, ratio in enumerate(self.prefill_ratio):
            if ratio is not None:
                self.prefill[i] = ratio * seconds / tokens

    def observe_prefill(self, drafter: int, tokens: int, seconds: float) -> None:
        """Drafter ``drafter`` took ``seconds`` to take in a prompt of ``tokens`` tokens (after the target's, when
        :meth:`observe_target_prefill` timed it, which gives the ratio)."""
        if tokens <= 0:
            return
        if self.target_prefill is None:
            self.prefill[drafter] = self._low(self.prefill[drafter], seconds / tokens)
            return
        target_tokens, target_seconds = self.target_prefill
        ratio = (seconds / tokens) / (target_seconds / target_tokens)
        self.prefill_ratio[drafter] = self._low(self.prefill_ratio[drafter], ratio)
        self.prefill[drafter] = self.prefill_ratio[drafter] * target_seconds / target_tokens

    def observe_round(self, chosen: int, drafted: int, verified: int, times: dict, evaluated: bool,
                      clean_draft: bool = True, positions: int | None = None) -> None:
        """One round's phase seconds (``select, draft, verify, evaluate, update``) and the positions it emitted
        (default: ``verified``, all of them accepted)."""
        self.rounds += 1
        if drafted > 0 and self.draft[chosen] is not None and self.verify:
            expected = self.played_seconds(verified, chosen, drafted)
            actual = times["draft"] + times["verify"] + times["select"]
            self.excess[chosen] += self.decay / 2 * (actual - expected - self.excess[chosen])
        if clean_draft:
            self.observe_draft(chosen, drafted, times["draft"])
        self.observe_verify(verified, times["verify"])
        first = self.rounds == 1
        # evaluation comes in bursts (a batch, then skipped rounds): its per-round cost is a long-run mean
        slow = self.decay / 10
        emitted = float(verified if positions is None else positions)
        for name, value in (("evaluate", times["evaluate"]), ("update", times["update"]), ("positions", emitted)):
            setattr(self, name, value if first else getattr(self, name) + slow * (value - getattr(self, name)))
        if evaluated:
            self.eval_forward = self._mean(self.eval_forward, times["evaluate"])
        self.overhead = self._mean(None if first else self.overhead, times["select"])
        self.work = self._mean(None if first else self.work, sum(times.values()) - times["evaluate"])

    def observe_confident(self, drafter: int, confident) -> None:
        """Drafter ``drafter``'s confidence (top probability ≥ the running stop) at consecutive evaluated positions,
        a bool sequence: the runs of confident positions starting at each one, for :meth:`drafted_tokens`."""
        if self.draft_stop is None or len(confident) == 0:
            return
        counts = self.runs.setdefault(self.draft_stop, [None] * self.n_drafters)
        if counts[drafter] is None:
            counts[drafter] = np.zeros((2, MAX_RUN + 2))
        c = np.asarray(confident, dtype=bool)
        m = c.shape[0]
        run = np.zeros(m + 1, dtype=np.int64)  # run[t]: confident positions in a row from t
        for t in range(m - 1, -1, -1):
            run[t] = run[t + 1] + 1 if c[t] else 0
        run = run[:m]
        censored = run == m - np.arange(m)  # the run reached the stretch's end: how it goes on is unknown
        reached = np.bincount(np.minimum(run, MAX_RUN + 1), minlength=MAX_RUN + 2)
        reached = reached[::-1].cumsum()[::-1]  # [r]: runs of length ≥ r
        ended = np.bincount(np.minimum(run[~censored] + 1, MAX_RUN + 1), minlength=MAX_RUN + 2)
        table = counts[drafter]
        table *= 1.0 - self.decay / 4  # drift, slowly
        table[0, 1:] += reached[1:]  # continued at r (position r of the run confident)
        table[1, 1:] += reached[1:] + ended[1:]  # at risk at r: reached it, or ended right there

    def drafted_tokens(self, drafter: int, k: int) -> float:
        """Expected tokens a chain of drafter ``drafter`` asked for ``k`` drafts under the running stop (k without
        one, or before its runs were seen)."""
        counts = self.runs.get(self.draft_stop) if self.draft_stop is not None else None
        table = None if counts is None else counts[drafter]
        if table is None or k <= 0:
            return float(k)
        r = min(k, MAX_RUN)
        hazard_free = np.where(table[1, 1 : r + 1] > 0, table[0, 1 : r + 1] / np.maximum(table[1, 1 : r + 1], 1e-12),
                               1.0)
        survival = np.cumprod(hazard_free)
        return float(survival.sum()) + max(0, k - MAX_RUN) * float(survival[-1])

    # -- estimates ---------------------------------------------------------------------------------------------------
    def verify_seconds(self, tokens: float) -> float | None:
        """Seconds of a verification forward over ``tokens`` tokens (None before any was measured)."""
        if not self.verify:
            return None
        if tokens in self.verify:
            return self.verify[tokens]
        if tokens != int(tokens):  # a fractional count (an expected chain length): between its neighbours
            low, high = self.verify_seconds(math.floor(tokens)), self.verify_seconds(math.ceil(tokens))
            return low + (tokens - math.floor(tokens)) * (high - low)
        seen = sorted(self.verify)
        lower = [n for n in seen if n < tokens]
        upper = [n for n in seen if n > tokens]
        if lower and upper:
            a, b = lower[-1], upper[0]
            t = (tokens - a) / (b - a)
            return self.verify[a] + t * (self.verify[b] - self.verify[a])
        return self.verify[lower[-1]] if lower else self.verify[upper[0]]

    def catch_up_seconds(self, drafter: int, tokens: int) -> float | None:
        """Seconds drafter ``drafter`` needs to take in ``tokens`` tokens of text at once (None: never measured)."""
        rate = self.prefill[drafter]
        return None if rate is None else rate * tokens

    def uncalibrated(self) -> list[int]:
        """Drafters whose drafting cost was never measured."""
        return [i for i, d in enumerate(self.draft) if d is None]

    def draft_seconds(self, drafter: int) -> float:
        """Seconds per drafted token of ``drafter``; an unmeasured drafter is assumed free (optimistic)."""
        value = self.draft[drafter]
        return 0.0 if value is None else value

    def arm_seconds(self, arms: list[tuple[int, int]]) -> torch.Tensor | None:
        """Expected seconds of a round for each arm ``(drafter, K)`` ``[E]`` fp32, before the per-position charge
        (:meth:`position_seconds`), or None before any verification was measured."""
        if not self.verify:
            return None
        draft = [self.draft_seconds(i) for i in range(self.n_drafters)]
        drafted = {(i, k): self.drafted_tokens(i, k) for i, k in arms}  # K, or fewer under a confidence stop
        # a drafter's measured excess may be negative, a round's cost is not
        floor = 0.5 * self.verify_seconds(min(k for _, k in arms) + 1)
        seconds = [max(self.verify_seconds(d + 1) + d * draft[i] + self.excess[i], floor) if k else
                   self.verify_seconds(1) for (i, k), d in ((a, drafted[a]) for a in arms)]
        return torch.tensor(seconds, dtype=torch.float32) + self.overhead

    def played_seconds(self, verified: int, chosen: int | None = None, drafted: int = 0) -> float:
        """Seconds of a played round at the model's prices: a verification of ``verified`` tokens, ``drafted``
        tokens of drafter ``chosen`` and the overhead (an arm's C(i, K) for what it really drafted, without the
        drafter's measured excess; 0 for what was never measured)."""
        seconds = (self.verify_seconds(verified) or 0.0) + self.overhead
        return seconds + drafted * self.draft_seconds(chosen) if drafted and chosen is not None else seconds

    def position_seconds(self) -> float:
        """Seconds of evaluation and learner update per emitted position (long-run means)."""
        return (self.evaluate + self.update) / max(self.positions, 1.0)

    def round_seconds(self, drafter: int, k: int, tokens: float | None = None) -> float | None:
        """Expected seconds of a round of arm (drafter, k) that emits ``tokens`` positions (default k + 1)."""
        seconds = self.arm_seconds([(drafter, k)])
        tokens = k + 1 if tokens is None else tokens
        return None if seconds is None else float(seconds[0]) + tokens * self.position_seconds()

    def summary(self) -> dict:
        """The estimates, JSON-ready (milliseconds)."""
        def ms(x):
            return None if x is None or (isinstance(x, float) and math.isnan(x)) else 1e3 * x

        return {"verify_ms": {n: ms(v) for n, v in sorted(self.verify.items())},
                "draft_ms_per_token": [ms(d) for d in self.draft],
                "prefill_ms_per_token": [ms(p) for p in self.prefill],
                "prefill_vs_target": list(self.prefill_ratio),
                "excess_ms_per_round": [ms(x) for x in self.excess],
                "evaluate_ms_per_round": ms(self.evaluate),
                "update_ms_per_round": ms(self.update), "positions_per_round": self.positions,
                "selection_ms_per_position": ms(self.position_seconds()), "overhead_ms_per_round": ms(self.overhead),
                "work_ms_per_round": ms(self.work),
                "evaluation_ms": ms(self.eval_forward), "rounds": self.rounds}


_SHARED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
SHARED_POOLS_PER_TARGET = 8  # a server that builds new drafter objects per request must not grow this forever


def shared_cost_model(target, pool_key: tuple, n_drafters: int) -> CostModel:
    """The cost model of this target and pool, kept across ``generate`` calls while the target lives: costs belong to
    the models and the machine, not to a prompt, so a second call starts calibrated. Keyed by the target's device
    and dtype and the pool's drafter identities; the last ``SHARED_POOLS_PER_TARGET`` pools are kept."""
    first = next(target.parameters())
    key = (str(first.device), first.dtype, pool_key)
    models = _SHARED.setdefault(target, {})
    if key not in models or models[key].n_drafters != n_drafters:
        models[key] = CostModel(n_drafters)
    models[key] = models.pop(key)  # most recently used last
    while len(models) > SHARED_POOLS_PER_TARGET:
        models.pop(next(iter(models)))
    return models[key]


def timed(fn, device: torch.device):
    """``fn()`` and its wall seconds (synchronising a CUDA device before and after: use outside the round loop)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start
