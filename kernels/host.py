"""The learner update for state that lives on the CPU, in float64 NumPy.

The same math as ``reference.hedge_update`` (the twin of the Triton kernel), for the CPU decode loop: a learner round
is a few dozen operations on vectors of a few dozen experts, where each torch call costs microseconds of dispatch
and NumPy's a fraction of one. NormalHedge's scale is solved by safeguarded Newton steps on log c inside the same
closed-form bracket as the reference (to ~1e-12 relative, where the reference's grid stops near 1e-6), so the two
agree to fp32 rounding of that scale.
"""
from __future__ import annotations

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
    return min(int((cdf <= u * cdf[-1]).sum()), w.size - 1)


def hedge_update(losses: torch.Tensor, regret: torch.Tensor, abs_regret: torch.Tensor, cum_loss: torch.Tensor,
                 weights: torch.Tensor, step: torch.Tensor, *, algo: str = "normalhedge", eta: float | None = None,
                 prior: torch.Tensor | None = None, u: torch.Tensor | None = None,
                 out: torch.Tensor | None = None, awake: torch.Tensor | None = None) -> torch.Tensor:
    """``reference.hedge_update`` for CPU tensors: ``T`` learner rounds in place, then the next choice ``[1]``."""
    if algo not in ALGOS:
        raise ValueError(f"unknown learner {algo!r}; expected one of {ALGOS}")
    state = (regret, abs_regret, cum_loss, weights, step)
    if any(x.device.type != "cpu" for x in (losses, *state)):
        raise ValueError("the host learner update takes CPU tensors; use the torch or triton backend on a device")
    rows = losses.detach().numpy().astype(np.float64)
    masks = None if awake is None else awake.detach().numpy().astype(bool)
    return _update(rows, masks, regret, abs_regret, cum_loss, weights, step, algo, eta, prior, u, out)


def _update(rows, masks, regret, abs_regret, cum_loss, weights, step, algo, eta, prior, u, out):
    """The learner rounds on NumPy loss rows ``[T, N]`` (and awake masks), written back into the state tensors."""
    R, C, L, w = (x.detach().numpy().astype(np.float64) for x in (regret, abs_regret, cum_loss, weights))
    t = int(step.item())
    pi = None if prior is None else prior.detach().cpu().numpy().astype(np.float64)
    scale = [0.0]  # NormalHedge's c, carried from row to row as the next solve's start
    for t_row, row in enumerate(rows):
        if masks is not None and not masks[t_row].all():
            mask = masks[t_row]
            total = float(w[mask].sum())
            mean = float(w[mask] @ row[mask]) / total if total > 0 else float(row[mask].mean()) if mask.any() else 0.0
            row = np.where(mask, row, mean)
        instant = float(w @ row) - row
        R += instant
        C += np.abs(instant)
        L += row
        t += 1
        w = _weights(algo, R, C, L, t, eta, pi, scale)
    for tensor, value in zip((regret, abs_regret, cum_loss, weights), (R, C, L, w)):
        tensor.copy_(torch.from_numpy(value))
    step.fill_(t)
    choice = torch.tensor([_choose(w, None if u is None else float(u.item()))], dtype=torch.long)
    return out.copy_(choice) if out is not None else choice


def throughput_update(gamma: torch.Tensor, awake: torch.Tensor, draft_lens, arm_seconds: torch.Tensor,
                      regret: torch.Tensor, abs_regret: torch.Tensor, cum_loss: torch.Tensor, weights: torch.Tensor,
                      step: torch.Tensor, *, level: str = "token", algo: str = "normalhedge", eta: float | None = None,
                      u: torch.Tensor | None = None, out: torch.Tensor | None = None,
                      position_seconds: float = 0.0, specialists=None) -> torch.Tensor:
    """``reference.throughput_losses`` + ``reference.throughput_awake`` (+ ``reference.contextual_arms`` when
    ``specialists = (arm_index, arm_context, sleepers)``) + the learner rounds, in NumPy for CPU state: the throughput
    learner's whole update (a window of γ ``[N, S]``, NaN where not evaluated; awake ``[N, S]``)."""
    g = gamma.detach().numpy().astype(np.float64)
    lens = list(draft_lens)
    k_max = max(lens)
    n, s = g.shape
    steps = s - k_max + 1
    if steps <= 0:
        return _update(np.zeros((0, weights.numel())), None, regret, abs_regret, cum_loss, weights, step, algo,
                       eta, None, u, out)
    windows = np.lib.stride_tricks.sliding_window_view(g, k_max, axis=1)[:, :steps]  # [N, T, K_max]
    expected = 1.0 + np.cumsum(np.cumprod(windows, axis=-1), axis=-1)
    chosen = expected[..., np.asarray(lens) - 1]  # [N, T, L]
    tokens = np.concatenate([np.ones((steps, 1)), chosen.transpose(1, 0, 2).reshape(steps, -1)], axis=1)
    seconds = arm_seconds.detach().cpu().numpy().astype(np.float64)
    with np.errstate(invalid="ignore"):
        rate = tokens / (seconds + tokens * position_seconds)
        losses = np.clip(1.0 - rate * (seconds.min() / (k_max + 1) + position_seconds), 0.0, 1.0)
    awake_np = awake.detach().numpy().astype(bool)
    first = awake_np[:, :steps].T  # [T, N]
    masks = np.concatenate([np.ones((steps, 1), dtype=bool), np.repeat(first, len(lens), axis=1)], axis=1)
    masks &= np.isfinite(losses)
    if specialists is not None:
        arm_index, arm_context, sleepers = specialists
        index, context = np.asarray(arm_index), np.asarray(arm_context)
        some = awake_np[list(sleepers), :steps].any(axis=0) if len(sleepers) else np.ones(steps, dtype=bool)
        losses, masks = losses[:, index], masks[:, index] & ((context[None] < 0) | (context[None] == some[:, None]))
    losses = np.nan_to_num(losses, nan=0.0)
    if level == "chunk" and steps > 1:
        counts = masks.sum(axis=0)
        losses = ((losses * masks).sum(axis=0) / np.maximum(counts, 1))[None]
        masks = (counts > 0)[None]
    return _update(losses, None if masks.all() else masks, regret, abs_regret, cum_loss, weights, step, algo, eta,
                   None, u, out)
