"""The learner update for state that lives on the CPU, in float64 NumPy.

The same math as ``reference.hedge_update`` (the twin of the Triton kernel), for the CPU decode loop: a learner round
is a few dozen operations on vectors of a few dozen experts, where each torch call costs microseconds of dispatch
and NumPy's a fraction of one. NormalHedge's scale is solved by safeguarded Newton steps on log c inside the same
closed-form bracket as the reference (to ~1e-12 relative, where the reference's grid stops near 1e-6), so the two
agree to fp32 rounding of that scale.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .reference import ALGOS

_NEWTON_STEPS = 40


def normalhedge_scale(regret: np.ndarray, guess: float = 0.0) -> float:
    """c > 0 with mean_i exp([R_i]₊² / (2c)) = e (0 when no regret is positive).

    On x = log c the left side minus e, f(x) = (1/N) Σ_i exp(a_i e^{−x}) − e with a_i = [R_i]₊² / 2, is decreasing
    and convex, so Newton's method started at the bracket's lower end x = log(max a / (1 + ln N)), where f ≥ 0,
    climbs monotonically to the root without overshooting (each tangent meets zero left of it). ``guess`` (the
    previous round's c: regrets move little per round) is a better start when it lies inside the bracket: left of
    the root (f ≥ 0) Newton climbs from it as from the bracket's end; right of it, one tangent step lands left of the
    root (convexity), clamped to the bracket, and the climb proceeds from there.
    """
    positive = regret[regret > 0.0]
    if positive.size == 0:
        return 0.0
    a = np.square(positive) * 0.5
    zeros, n = regret.size - positive.size, regret.size
    target = math.e * n - zeros  # Σ_{a > 0} exp(a / c) must equal this
    x = math.log(float(a.max())) - math.log(1.0 + math.log(n))
    if guess > 0.0 and x < math.log(guess) <= math.log(float(a.max())):
        g = math.log(guess)
        t = a * math.exp(-g)
        e_t = np.exp(t)
        f = float(e_t.sum()) - target
        x = g if f >= 0.0 else max(x, g + f / float(t @ e_t))
    for _ in range(_NEWTON_STEPS):
        t = a * math.exp(-x)
        e_t = np.exp(t)
        f = float(e_t.sum()) - target
        if f <= 0.0:
            break
        step = f / float(t @ e_t)  # f' = −Σ t e^t
        x += step
        if step < 1e-12 * max(1.0, abs(x)):
            break
    return math.exp(x)


def _weights(algo, R, C, L, t, eta, prior, scale=None):
    """The weights after a round; ``scale``: a one-element list holding NormalHedge's last c (read as the Newton
    start, updated)."""
    n = R.size
    if algo == "hedge":
        rate = eta if eta is not None else math.sqrt(8.0 * math.log(max(n, 2)) / max(t, 1))
        e = np.exp(-rate * (L - L.min()))
        return e / e.sum()
    if algo == "normalhedge":
        c = normalhedge_scale(R, scale[0] if scale else 0.0)
        if scale is not None:
            scale[0] = c
        if c > 0:
            rp = np.maximum(R, 0.0)
            w = (rp / c) * np.exp(np.square(rp) / (2.0 * c))
            total = w.sum()
            if total > 0 and np.isfinite(total):
                return w / total
        return np.full(n, 1.0 / n)
    denom = 3.0 * (C + 1.0)
    hi = np.square(np.maximum(R + 1.0, 0.0)) / denom
    lo = np.square(np.maximum(R - 1.0, 0.0)) / denom
    w = np.exp(hi - hi.max()) * np.maximum(-np.expm1(lo - hi), 0.0)
    if prior is not None:
        w = w * prior
    total = w.sum()
    if total > 0:
        return w / total
    return prior / prior.sum() if prior is not None else np.full(n, 1.0 / n)


def _choose(w: np.ndarray, u: float | None) -> int:
    if u is None:
        return int(np.argmax(w))
    cdf = np.cumsum(w)
    return min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), w.size - 1)


class HostState:
    """A learner's state (R, C, L, w, t) as float64 NumPy arrays mirroring its CPU buffers, plus NormalHedge's last
    scale c (the next solve's start).

    The CPU decode loop updates the learner every round, and converting five tensors to NumPy and back each time cost
    more than the math. :meth:`sync` reads the buffers only when they changed behind the mirror's back (torch's version
    counter or the storage moved: ``load_state_dict``, ``.to()``, an update by another backend); :meth:`store` writes
    the mirror back through NumPy views of the buffers' memory, which torch does not count as a change.
    """

    def __init__(self):
        self._key = None
        self.scale = 0.0

    def sync(self, regret, abs_regret, cum_loss, weights, step) -> "HostState":
        tensors = (regret, abs_regret, cum_loss, weights, step)
        if any(x.device.type != "cpu" for x in tensors):
            raise ValueError("the host learner update takes CPU tensors; use the torch or triton backend on a device")
        key = tuple((id(x), x._version) for x in tensors)
        if key != self._key:
            self._views = [x.detach().numpy() for x in tensors]
            self.R, self.C, self.L, self.w = (v.astype(np.float64) for v in self._views[:4])
            self.t = int(self._views[4][0])
            self.scale, self._key = 0.0, key
        return self

    def store(self) -> None:
        for view, value in zip(self._views, (self.R, self.C, self.L, self.w)):
            view[...] = value
        self._views[4][...] = self.t

    def rounds(self, rows: np.ndarray, masks: np.ndarray | None, algo: str, eta: float | None,
               prior: np.ndarray | None = None) -> None:
        """Apply the learner rounds ``rows [T, N]`` (losses in [0, 1]; ``masks [T, N]`` bool: awake experts)."""
        scale = [self.scale]
        for t_row, row in enumerate(rows):
            if masks is not None and not masks[t_row].all():
                mask = masks[t_row]
                awake = np.flatnonzero(mask)
                total = float(self.w[awake].sum())
                mean = float(self.w[awake] @ row[awake]) / total if total > 0 else \
                    float(row[awake].mean()) if awake.size else 0.0
                if awake.size <= 1 and algo != "hedge":
                    # one expert awake: it is what the learner played, so nobody gains or loses regret and R, C and
                    # the weights stay as they are (Hedge's depend on t too); the common case of a round in which
                    # only the plain step could be scored
                    self.L += mean
                    self.t += 1
                    continue
                row = np.where(mask, row, mean)
            instant = float(self.w @ row) - row
            self.R += instant
            self.C += np.abs(instant)
            self.L += row
            self.t += 1
            self.w = _weights(algo, self.R, self.C, self.L, self.t, eta, prior, scale)
        self.scale = scale[0]

    def choose(self, u: float | None, among: np.ndarray | None = None) -> tuple[int, float]:
        """The next expert (argmax, or the inverse-CDF sample at ``u``) among the indices ``among`` (None: all), and
        their total weight (0: no awake expert has weight, the caller decides)."""
        if among is None:
            return _choose(self.w, u), float(self.w.sum())
        if among.size == 0:
            return 0, 0.0
        w = self.w[among]
        return int(among[_choose(w, u)]), float(w.sum())


def hedge_update(losses: torch.Tensor, regret: torch.Tensor, abs_regret: torch.Tensor, cum_loss: torch.Tensor,
                 weights: torch.Tensor, step: torch.Tensor, *, algo: str = "normalhedge", eta: float | None = None,
                 prior: torch.Tensor | None = None, u: torch.Tensor | None = None,
                 out: torch.Tensor | None = None, awake: torch.Tensor | None = None) -> torch.Tensor:
    """``reference.hedge_update`` for CPU tensors: ``T`` learner rounds in place, then the next choice ``[1]``."""
    if algo not in ALGOS:
        raise ValueError(f"unknown learner {algo!r}; expected one of {ALGOS}")
    state = HostState().sync(regret, abs_regret, cum_loss, weights, step)
    if losses.device.type != "cpu":
        raise ValueError("the host learner update takes CPU tensors; use the torch or triton backend on a device")
    rows = losses.detach().numpy().astype(np.float64)
    masks = None if awake is None else awake.detach().numpy().astype(bool)
    pi = None if prior is None else prior.detach().cpu().numpy().astype(np.float64)
    return _finish(state, rows, masks, algo, eta, pi, u, out)


def _finish(state: HostState, rows, masks, algo, eta, prior, u, out):
    state.rounds(rows, masks, algo, eta, prior)
    state.store()
    choice = torch.tensor([state.choose(None if u is None else float(u.item()))[0]], dtype=torch.long)
    return out.copy_(choice) if out is not None else choice


def throughput_rows(gamma: np.ndarray, awake: np.ndarray, draft_lens, arm_seconds: np.ndarray,
                    position_seconds: float = 0.0, specialists=None, level: str = "token", observed=()):
    """The throughput learner's loss rows ``[T, E]`` and awake masks ``[T, E]`` (None: all awake) from a γ window
    ``[N, S]`` (NaN where not evaluated) and where each drafter had a proposal ``[N, S]``: ``reference
    .throughput_losses`` + ``reference.throughput_awake`` (+ ``reference.contextual_arms`` for ``specialists =
    (arm_index, arm_context, sleepers)``), chunk level averaged, in NumPy. ``observed``: ``(t, arm, tokens)`` of played
    arms, as in ``reference.throughput_losses``. Written for few NumPy calls: this runs every round."""
    lens = tuple(draft_lens)
    k_max = max(lens)
    n, s = gamma.shape
    steps = s - k_max + 1
    if steps <= 0:
        return np.zeros((0, len(specialists[0]) if specialists is not None else 1 + n * len(lens))), None
    windows = gamma[:, _window_index(steps, k_max)]  # [N, T, K_max]
    reach = np.cumprod(windows, axis=-1)
    reach[np.cumsum(windows == 0, axis=-1) > 0] = 0.0  # past a γ of 0 the chain has ended: a NaN there is moot
    reached = reach.cumsum(axis=-1)[..., _length_index(lens)]  # ÂL − 1, [N, T, L]
    arms = 1 + n * len(lens)
    tokens = np.empty((steps, arms))
    tokens[:, 0] = 1.0
    tokens[:, 1:] = reached.transpose(1, 0, 2).reshape(steps, -1)
    tokens[:, 1:] += 1.0
    for t, arm, value in observed:
        if tokens[t, arm] != tokens[t, arm]:  # NaN: γ left it unknown
            tokens[t, arm] = value
    masks = np.empty((steps, arms), dtype=bool)
    masks[:, 0] = True
    masks[:, 1:] = np.repeat(awake[:, :steps].T, len(lens), axis=1)
    masks &= tokens == tokens  # not NaN
    scale = arm_seconds.min() / (k_max + 1) + position_seconds
    with np.errstate(invalid="ignore"):
        losses = 1.0 - scale * tokens / (arm_seconds + position_seconds * tokens)
    np.clip(losses, 0.0, 1.0, out=losses)
    if specialists is not None:
        index, context, sleepers = specialists
        some = awake[list(sleepers), :steps].any(axis=0) if len(sleepers) else np.ones(steps, dtype=bool)
        in_context = np.where(some[:, None], context != 0, context != 1)  # context −1: every position
        losses, masks = losses[:, index], masks[:, index] & in_context
    losses = np.where(masks, losses, 0.0)  # NaN (not evaluated) only where asleep
    if level == "chunk" and steps > 1:
        counts = masks.sum(axis=0)
        losses = ((losses * masks).sum(axis=0) / np.maximum(counts, 1))[None]
        masks = (counts > 0)[None]
    return losses, (None if masks.all() else masks)


@functools.lru_cache(maxsize=256)
def _window_index(steps: int, width: int) -> np.ndarray:
    """``[steps, width]`` column indices of the sliding windows."""
    return np.arange(steps)[:, None] + np.arange(width)[None, :]


@functools.lru_cache(maxsize=64)
def _length_index(lens: tuple) -> np.ndarray:
    return np.asarray(lens) - 1


def throughput_update(gamma: torch.Tensor, awake: torch.Tensor, draft_lens, arm_seconds: torch.Tensor,
                      regret: torch.Tensor, abs_regret: torch.Tensor, cum_loss: torch.Tensor, weights: torch.Tensor,
                      step: torch.Tensor, *, level: str = "token", algo: str = "normalhedge", eta: float | None = None,
                      u: torch.Tensor | None = None, out: torch.Tensor | None = None,
                      position_seconds: float = 0.0, specialists=None, observed=()) -> torch.Tensor:
    """:func:`throughput_rows` + the learner rounds, for CPU state: the throughput learner's whole update (a window of
    γ ``[N, S]``, NaN where not evaluated; awake ``[N, S]``)."""
    state = HostState().sync(regret, abs_regret, cum_loss, weights, step)
    if specialists is not None:
        index, context, sleepers = specialists
        specialists = (np.asarray(index), np.asarray(context), tuple(sleepers))
    rows, masks = throughput_rows(gamma.detach().numpy().astype(np.float64), awake.detach().numpy().astype(bool),
                                  draft_lens, arm_seconds.detach().cpu().numpy().astype(np.float64),
                                  position_seconds, specialists, level, observed)
    return _finish(state, rows, masks, algo, eta, None, u, out)
