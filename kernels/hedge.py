"""Fused learner update: loss rows (given, or built from a γ window) → T rounds of Hedge / NormalHedge /
AdaNormalHedge on device-resident state → weights → next choice, in one single-program launch.

Design
------
The learner is tiny (N drafters ≲ 32) and strictly sequential over rounds, so a torch loop is launch bound
(~10 ops per round, 5 ms for a NormalHedge update measured on an H100). Here one program holds the whole state in
registers (``BLOCK_N`` lanes), loops over the ``T`` rounds and writes the state back once: one launch, no host sync,
CUDA-graph capturable (``T`` is a runtime argument, not specialised). NormalHedge's scale c_t is found in-kernel
exactly as in ``reference._normalhedge_scale``: ``NORMALHEDGE_GRID_PASSES`` passes that evaluate
mean_i exp(a_i e^{-g}) on a ``[NORMALHEDGE_GRID_POINTS, BLOCK_N]`` tile of the closed-form bracket of log c (a
64-way bisection: three dependent steps instead of thirty). The loss rows can be read from ``[T, N]`` or built on the
fly from a γ window ``[N, S]`` (expected-length or acceptance loss, token or chunk level), which fuses
``expected_length_losses`` + update + choice into one launch. ``_learner_step`` is also the epilogue of
``acceptance.acceptance_and_update`` (the whole selection step in one launch).
"""
from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

from . import reference

ALGO_IDS = {"hedge": 0, "normalhedge": 1, "adanormalhedge": 2}
LOSS_ROWS, LOSS_ACCEPTANCE, LOSS_EXPECTED_LENGTH = 0, 1, 2
MAX_DRAFTERS = 256  # one program holds [GRID_POINTS, BLOCK_N] values: keep that tile in registers
_E = tl.constexpr(math.e)
_GRID = tl.constexpr(reference.NORMALHEDGE_GRID_POINTS)
_PASSES = tl.constexpr(reference.NORMALHEDGE_GRID_PASSES)


@triton.jit
def _expm1(x):
    # 1 − e^{lo−hi} loses all digits when hi ≈ lo (AdaNormalHedge with R ≪ C): Taylor below |x| < 0.05.
    taylor = x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0))))
    return tl.where(tl.abs(x) < 0.05, taylor, tl.exp(x) - 1.0)


@triton.jit
def _next_weights(regret, abs_regret, cum_loss, prior, step, mask, n, inv_n, eta, hedge_rate_num, log_bracket,
                  ALGO: tl.constexpr, HAS_ETA: tl.constexpr, HAS_PRIOR: tl.constexpr):
    uniform = tl.where(mask, inv_n, 0.0)
    if ALGO == 0:  # Hedge: w ∝ exp(−η (L − min L)), η fixed or anytime sqrt(8 ln N / t)
        if HAS_ETA:
            rate = eta
        else:
            rate = tl.sqrt(hedge_rate_num / tl.maximum(step, 1).to(tl.float32))
        shifted = cum_loss - tl.min(tl.where(mask, cum_loss, float("inf")), axis=0)
        logits = tl.where(mask, -rate * shifted, float("-inf"))
        e = tl.exp(logits - tl.max(logits, axis=0))
        w = e / tl.sum(e, axis=0)
    elif ALGO == 1:  # NormalHedge
        r_pos = tl.where(mask, tl.maximum(regret, 0.0), 0.0)
        a = r_pos * r_pos * 0.5
        a_max = tl.max(a, axis=0)
        log_hi = tl.log(tl.maximum(a_max, 1e-30))
        log_lo = log_hi - log_bracket
        k = tl.arange(0, _GRID)
        frac = k.to(tl.float32) / _GRID
        for _ in tl.static_range(_PASSES):
            width = log_hi - log_lo
            grid = log_lo + width * frac  # grid points 0..G-1; point G is log_hi, where f ≤ e
            terms = tl.exp(a[None, :] * tl.exp(-grid)[:, None])
            f = tl.sum(tl.where(mask[None, :], terms, 0.0), axis=1) / n
            cell = 1 + tl.sum(((f > _E) & (k >= 1)).to(tl.int32), axis=0)  # f(g[cell-1]) > e ≥ f(g[cell])
            new_lo = log_lo + width * ((cell - 1).to(tl.float32) / _GRID)
            log_hi = log_lo + width * (cell.to(tl.float32) / _GRID)
            log_lo = new_lo
        c = tl.where(a_max > 0, tl.exp(log_hi), 0.0)
        safe_c = tl.where(c > 0, c, 1.0)
        w = tl.where(mask, (r_pos / safe_c) * tl.exp(r_pos * r_pos / (2 * safe_c)), 0.0)
        total = tl.sum(w, axis=0)
        w = tl.where((c > 0) & (total > 0), w / tl.maximum(total, 1e-30), uniform)
    else:  # AdaNormalHedge: w ∝ π · ½(Φ(R+1, C+1) − Φ(R−1, C+1)), in log space
        denom = 3.0 * (abs_regret + 1.0)
        up = tl.maximum(regret + 1.0, 0.0)
        down = tl.maximum(regret - 1.0, 0.0)
        hi = up * up / denom
        lo = down * down / denom
        top = tl.max(tl.where(mask, hi, float("-inf")), axis=0)
        w = tl.exp(hi - top) * tl.maximum(-_expm1(lo - hi), 0.0)
        fallback = uniform
        if HAS_PRIOR:
            w = w * prior
            fallback = prior / tl.sum(prior, axis=0)
        w = tl.where(mask, w, 0.0)
        total = tl.sum(w, axis=0)
        w = tl.where(total > 0, w / tl.maximum(total, 1e-30), fallback)
    return w


@triton.jit
def _loss_row(loss_ptr, stride_lt, stride_ln, gamma_ptr, stride_gn, stride_gs, t, draft_len, offs, mask,
              LOSS: tl.constexpr):
    if LOSS == 0:  # rows given
        row = tl.load(loss_ptr + t * stride_lt + offs * stride_ln, mask=mask, other=0.0).to(tl.float32)
    elif LOSS == 1:  # acceptance: 1 − γ_t (.cg: γ may have been written by other programs of this launch)
        row = 1.0 - tl.load(gamma_ptr + offs * stride_gn + t * stride_gs, mask=mask, other=1.0, cache_modifier=".cg")
    else:  # expected length of the window starting at t: 1 − (1 + Σ_k Π_{j<k} γ_{t+j}) / (K + 1)
        prod = tl.full(offs.shape, 1.0, tl.float32)
        acc = tl.zeros(offs.shape, tl.float32)
        for k in range(draft_len):
            prod = prod * tl.load(gamma_ptr + offs * stride_gn + (t + k) * stride_gs, mask=mask, other=0.0,
                                  cache_modifier=".cg")
            acc += prod
        row = 1.0 - (1.0 + acc) / (draft_len + 1)
    return tl.where(mask, row, 0.0)


@triton.jit
def _learner_step(loss_ptr, stride_lt, stride_ln, gamma_ptr, stride_gn, stride_gs, n_rounds, draft_len,
                  regret_ptr, abs_regret_ptr, cum_loss_ptr, weights_ptr, step_ptr, prior_ptr, u_ptr, choice_ptr,
                  n, inv_n, eta, hedge_rate_num, log_bracket,
                  LOSS: tl.constexpr, CHUNK: tl.constexpr, ALGO: tl.constexpr, HAS_ETA: tl.constexpr,
                  HAS_PRIOR: tl.constexpr, SAMPLE: tl.constexpr, BLOCK_N: tl.constexpr):
    """T rounds on the state in registers, then the state and the choice back to memory (one program)."""
    offs = tl.arange(0, BLOCK_N)
    mask = offs < n
    regret = tl.load(regret_ptr + offs, mask=mask, other=0.0)
    abs_regret = tl.load(abs_regret_ptr + offs, mask=mask, other=0.0)
    cum_loss = tl.load(cum_loss_ptr + offs, mask=mask, other=0.0)
    w = tl.load(weights_ptr + offs, mask=mask, other=0.0)
    step = tl.load(step_ptr)
    prior = w
    if HAS_PRIOR:
        prior = tl.load(prior_ptr + offs, mask=mask, other=0.0)
    if CHUNK:  # one round with the mean row
        rounds = tl.minimum(n_rounds, 1)
        mean_row = tl.zeros([BLOCK_N], tl.float32)
        for t in range(n_rounds):
            mean_row += _loss_row(loss_ptr, stride_lt, stride_ln, gamma_ptr, stride_gn, stride_gs, t, draft_len,
                                  offs, mask, LOSS)
        mean_row = mean_row / tl.maximum(n_rounds, 1)
    else:
        rounds = n_rounds
    for t in range(rounds):
        if CHUNK:
            row = mean_row
        else:
            row = _loss_row(loss_ptr, stride_lt, stride_ln, gamma_ptr, stride_gn, stride_gs, t, draft_len, offs,
                            mask, LOSS)
        instant = tl.where(mask, tl.sum(w * row, axis=0) - row, 0.0)  # ℓ̂ − ℓ with ℓ̂ = w_played · ℓ
        regret += instant
        abs_regret += tl.abs(instant)
        cum_loss += row
        step += 1
        w = _next_weights(regret, abs_regret, cum_loss, prior, step, mask, n, inv_n, eta, hedge_rate_num,
                          log_bracket, ALGO, HAS_ETA, HAS_PRIOR)
    tl.store(regret_ptr + offs, regret, mask=mask)
    tl.store(abs_regret_ptr + offs, abs_regret, mask=mask)
    tl.store(cum_loss_ptr + offs, cum_loss, mask=mask)
    tl.store(weights_ptr + offs, w, mask=mask)
    tl.store(step_ptr, step)
    if SAMPLE:  # inverse CDF: the number of cdf entries ≤ u · total
        u = tl.load(u_ptr).to(tl.float32)
        cdf = tl.cumsum(w, axis=0)
        total = tl.sum(tl.where(offs == n - 1, cdf, 0.0), axis=0)
        choice = tl.minimum(tl.sum((mask & (cdf <= u * total)).to(tl.int32), axis=0), n - 1)
    else:
        _, choice = tl.max(tl.where(mask, w, -1.0), axis=0, return_indices=True, return_indices_tie_break_left=True)
    tl.store(choice_ptr, choice.to(tl.int64))


@triton.jit(do_not_specialize=["stride_gn", "n_rounds"])
def _hedge_kernel(loss_ptr, stride_lt, stride_ln, gamma_ptr, stride_gn, stride_gs, n_rounds, draft_len,
                  regret_ptr, abs_regret_ptr, cum_loss_ptr, weights_ptr, step_ptr, prior_ptr, u_ptr, choice_ptr,
                  n, inv_n, eta, hedge_rate_num, log_bracket,
                  LOSS: tl.constexpr, CHUNK: tl.constexpr, ALGO: tl.constexpr, HAS_ETA: tl.constexpr,
                  HAS_PRIOR: tl.constexpr, SAMPLE: tl.constexpr, BLOCK_N: tl.constexpr):
    _learner_step(loss_ptr, stride_lt, stride_ln, gamma_ptr, stride_gn, stride_gs, n_rounds, draft_len,
                  regret_ptr, abs_regret_ptr, cum_loss_ptr, weights_ptr, step_ptr, prior_ptr, u_ptr, choice_ptr,
                  n, inv_n, eta, hedge_rate_num, log_bracket, LOSS, CHUNK, ALGO, HAS_ETA, HAS_PRIOR, SAMPLE, BLOCK_N)


def learner_arguments(regret, abs_regret, cum_loss, weights, step, algo, eta, prior, u, out):
    """Validate the learner state and return (runtime args from ``regret_ptr`` on, constexprs, choice tensor)."""
    if algo not in ALGO_IDS:
        raise ValueError(f"unknown learner {algo!r}; expected one of {reference.ALGOS}")
    n = weights.numel()
    if not 1 <= n <= MAX_DRAFTERS:
        raise ValueError(f"the Triton learner handles 1..{MAX_DRAFTERS} drafters, got {n}")
    for name, t in (("regret", regret), ("abs_regret", abs_regret), ("cum_loss", cum_loss), ("weights", weights),
                    ("prior", prior)):
        if t is not None and (t.dtype != torch.float32 or t.numel() != n or not t.is_contiguous()
                              or t.device != weights.device):
            raise ValueError(f"{name} must be a contiguous fp32 tensor [{n}] on {weights.device}")
    if step.dtype != torch.int64 or step.numel() != 1:
        raise ValueError("step must be an int64 tensor [1]")
    choice = torch.empty(1, dtype=torch.int64, device=weights.device) if out is None else out
    args = (regret, abs_regret, cum_loss, weights, step, weights if prior is None else prior,
            weights if u is None else u, choice, n, 1.0 / n, 0.0 if eta is None else float(eta),
            8.0 * math.log(max(n, 2)), math.log(1.0 + math.log(n)))
    constexprs = dict(ALGO=ALGO_IDS[algo], HAS_ETA=eta is not None, HAS_PRIOR=prior is not None,
                      SAMPLE=u is not None, BLOCK_N=max(triton.next_power_of_2(n), 2))
    return args, constexprs, choice


def _launch(losses, gamma, n_rounds, draft_len, loss_kind, chunk, state, **learner):
    args, constexprs, choice = learner_arguments(*state, **learner)
    rows = losses if losses is not None else args[3]
    window = gamma if gamma is not None else args[3].view(-1, 1)
    device = choice.device
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():  # launch where the data is
        _hedge_kernel[(1,)](rows, rows.stride(0) if rows.dim() == 2 else 0, rows.stride(-1), window,
                            window.stride(0), window.stride(1), n_rounds, draft_len, *args, LOSS=loss_kind,
                            CHUNK=chunk, num_warps=1 if constexprs["BLOCK_N"] <= 32 else 4, **constexprs)
    return choice


def hedge_update(losses, regret, abs_regret, cum_loss, weights, step, *, algo="normalhedge", eta=None, prior=None,
                 u=None, out=None):
    """Triton twin of :func:`reference.hedge_update`: ``T`` rounds from loss rows ``[T, N]`` in one launch."""
    if losses.dim() != 2 or losses.shape[1] != weights.numel():
        raise ValueError(f"losses must be [T, {weights.numel()}], got {tuple(losses.shape)}")
    return _launch(losses, None, losses.shape[0], 1, LOSS_ROWS, False, (regret, abs_regret, cum_loss, weights, step),
                   algo=algo, eta=eta, prior=prior, u=u, out=out)


def hedge_update_from_gamma(gamma, regret, abs_regret, cum_loss, weights, step, *, draft_len=1,
                            loss="expected_length", level="token", algo="normalhedge", eta=None, prior=None, u=None,
                            out=None):
    """Triton twin of :func:`reference.hedge_update_from_gamma`: losses of a γ window ``[N, S]`` + update + choice."""
    n_rounds, loss_kind, chunk = gamma_rounds(gamma, weights.numel(), draft_len, loss, level)
    return _launch(None, gamma, n_rounds, draft_len, loss_kind, chunk, (regret, abs_regret, cum_loss, weights, step),
                   algo=algo, eta=eta, prior=prior, u=u, out=out)


def gamma_rounds(gamma, n, draft_len, loss, level):
    """(T, LOSS id, chunk?) for a γ window ``[N, S]``, validated."""
    if loss not in reference.LOSSES or level not in reference.LEVELS:
        raise ValueError(f"loss must be one of {reference.LOSSES} and level one of {reference.LEVELS}")
    if gamma.dim() != 2 or gamma.shape[0] != n or gamma.dtype != torch.float32:
        raise ValueError(f"gamma must be an fp32 tensor [{n}, S], got {tuple(gamma.shape)} {gamma.dtype}")
    if draft_len < 1:
        raise ValueError(f"draft_len must be ≥ 1, got {draft_len}")
    width = gamma.shape[1]
    if loss == "acceptance":
        return width, LOSS_ACCEPTANCE, level == "chunk"
    return max(width - draft_len + 1, 0), LOSS_EXPECTED_LENGTH, level == "chunk"
