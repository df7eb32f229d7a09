"""Plain-torch twins of the Triton kernels: the CPU path and the tests' oracle.

Every function here has the signature of its kernel twin (``acceptance.py``, ``hedge.py``); the dispatcher in
``__init__.py`` picks one. Shapes: ``N`` drafters, ``m`` positions, ``V`` vocabulary, ``T`` learner rounds.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

MODES = ("tv", "greedy", "topl", "topl_greedy")
ALGOS = ("hedge", "normalhedge", "adanormalhedge")
LOSSES = ("expected_length", "acceptance")
LEVELS = ("token", "chunk")
MAX_TOP_L = 8

# NormalHedge's scale c_t is found on log c inside a bracket known in closed form (see _normalhedge_scale), by
# NORMALHEDGE_GRID_PASSES passes that each evaluate the equation on NORMALHEDGE_GRID_POINTS points at once and keep the
# sub-interval holding the root: the bracket (≤ ln(1 + ln N) wide) shrinks 64³ ≈ 2.6e5-fold, past fp32 precision in c,
# in three vectorised steps instead of thirty dependent bisection steps.
NORMALHEDGE_GRID_POINTS = 64
NORMALHEDGE_GRID_PASSES = 3


def warp_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The documented pre-pass for top-k / top-p: logits / T with the tokens outside the kept set set to -inf.

    Follows transformers' ``TemperatureLogitsWarper`` → ``TopKLogitsWarper`` → ``TopPLogitsWarper`` exactly
    (``min_tokens_to_keep=1``), so acceptance is computed on the very distributions that verification samples from.

    Parameters
    ----------
    logits : Tensor ``[..., V]``, any float dtype.
    temperature : float > 0.
    top_k : int, 0 disables.
    top_p : float in (0, 1], 1 disables.

    Returns
    -------
    Tensor ``[..., V]`` fp32.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for sampling modes, got {temperature}")
    out = logits.float() / temperature
    vocab = out.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(out, descending=False, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cum <= (1 - top_p)
        remove_sorted[..., -1:] = False  # keep at least one token
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        out = out.masked_fill(remove, float("-inf"))
    return out


def _stack_drafters(drafter_logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    if isinstance(drafter_logits, torch.Tensor):
        return drafter_logits
    return torch.stack(list(drafter_logits))


def _top_l_mask(q_logits: torch.Tensor, top_l: int) -> torch.Tensor:
    """Boolean mask ``[..., V]`` of the ``top_l`` largest logits, ties broken toward the lowest index.

    ``torch.topk`` leaves the order of ties unspecified (CPU and CUDA differ, and bf16 logits tie often), so the set is
    pinned down the way ``torch.argmax`` pins the maximum: all values above the L-th largest, then the first indices
    among those equal to it.
    """
    top_values = torch.topk(q_logits, top_l, dim=-1).values
    kth = top_values[..., -1:]
    room = top_l - (top_values > kth).sum(dim=-1, keepdim=True)  # every value above the L-th is among the top L
    at_kth = q_logits == kth
    return (q_logits > kth) | (at_kth & (torch.cumsum(at_kth, dim=-1, dtype=torch.int32) <= room))


def acceptance_probs(
    target_logits: torch.Tensor,
    drafter_logits: torch.Tensor | Sequence[torch.Tensor],
    temperature: float = 1.0,
    mode: str = "tv",
    top_k: int = 0,
    top_p: float = 1.0,
    top_l: int = 1,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-position acceptance probability of every drafter against the target.

    Parameters
    ----------
    target_logits : Tensor ``[m, V]`` (bf16 / fp16 / fp32), the target's logits at ``m`` verified positions.
    drafter_logits : Tensor ``[N, m, V]`` or a sequence of ``N`` tensors ``[m, V]``, each drafter's logits on the
        same (true) prefixes.
    temperature : float, applied to both sides as ``logits / T`` (ignored by the greedy modes).
    mode : ``"tv"``: Σ_v min(p(v), q_i(v)) = 1 − TV(p, q_i) (speculative sampling);
        ``"greedy"``: 1{argmax q_i = argmax p} (first index wins ties, as ``torch.argmax``);
        ``"topl"``: Σ_{v ∈ TopL(q_i)} p(v) (a tree with the drafter's top-L children, sampling);
        ``"topl_greedy"``: 1{argmax p ∈ TopL(q_i)}.
        TopL(q_i) is taken on the raw drafter logits, ties broken toward the lowest index (see ``_top_l_mask``).
    top_k, top_p : warping applied by the :func:`warp_logits` pre-pass (sampling modes only; ``tv`` warps both sides,
        ``topl`` the target's side).
    top_l : L of the top-L modes, 1 ≤ L ≤ 8; a vocabulary smaller than L keeps every token.
    out : optional Tensor ``[N, m]`` fp32 (any strides) to write γ into.

    Returns
    -------
    Tensor ``[N, m]`` fp32 (``out`` when given).
    """
    q_logits = _stack_drafters(drafter_logits)
    if mode not in MODES:
        raise ValueError(f"unknown acceptance mode {mode!r}; expected one of {MODES}")
    if not 1 <= top_l <= MAX_TOP_L:
        raise ValueError(f"top_l must be in [1, {MAX_TOP_L}], got {top_l}")
    top_l = min(top_l, target_logits.shape[-1])
    if mode in ("greedy", "topl_greedy"):
        target_arg = target_logits.float().argmax(dim=-1)  # [m]
        if mode == "greedy":
            gamma = (q_logits.float().argmax(dim=-1) == target_arg).float()
        else:
            in_top = _top_l_mask(q_logits.float(), top_l)  # [N, m, V]
            gamma = in_top.gather(-1, target_arg.expand(in_top.shape[0], -1).unsqueeze(-1)).squeeze(-1).float()
    else:
        p = warp_logits(target_logits, temperature, top_k, top_p).softmax(dim=-1)  # [m, V]
        if mode == "topl":
            in_top = _top_l_mask(q_logits.float(), top_l)  # [N, m, V]
            gamma = torch.where(in_top, p.unsqueeze(0), 0.0).sum(dim=-1)
        else:
            q = warp_logits(q_logits, temperature, top_k, top_p).softmax(dim=-1)  # [N, m, V]
            gamma = torch.minimum(p.unsqueeze(0), q).sum(dim=-1).nan_to_num(nan=0.0)  # NaN logits: no mass
    if out is not None:
        return out.copy_(gamma)
    return gamma


def expected_length_losses(gamma: torch.Tensor, draft_len: int) -> torch.Tensor:
    """Loss of the one-step counterfactual expected accepted length (HedgeSpec Thm 3), for every complete window.

    ÂL_s[i] = 1 + Σ_{k=1..K} Π_{j=0..k-1} γ_{s+j}[i] ∈ [1, K+1]; loss ℓ_s[i] = 1 − ÂL_s[i] / (K + 1).

    Parameters
    ----------
    gamma : Tensor ``[N, S]`` fp32, γ of consecutive verified positions.
    draft_len : K ≥ 1, the window length.

    Returns
    -------
    Tensor ``[max(S − K + 1, 0), N]`` fp32: one loss vector per position whose window is complete.
    """
    n, s = gamma.shape
    if s < draft_len:
        return gamma.new_zeros((0, n))
    windows = gamma.unfold(1, draft_len, 1)  # [N, S-K+1, K]
    expected = 1.0 + windows.cumprod(dim=-1).sum(dim=-1)  # [N, S-K+1]
    return (1.0 - expected / (draft_len + 1)).t().contiguous()


def throughput_losses(gamma: torch.Tensor, draft_lens: Sequence[int], arm_seconds: torch.Tensor,
                      position_seconds: float = 0.0, observed: Sequence[tuple[int, int, float]] = ()) -> torch.Tensor:
    """Loss of the expected tokens per second of every (drafter, K) arm, for every complete window.

    Arms are laid out as ``[no draft] + [(i, K) for i in drafters for K in draft_lens]``. For a round started at
    position s, arm (i, K) emits ÂL_s[i; K] = 1 + Σ_{k=1..K} Π_{j<k} γ_{s+j}[i] tokens in expectation (HedgeSpec
    Thm 3's one-step counterfactual, exact under greedy; the no-draft arm emits 1) and costs C(i, K) seconds a round
    plus e seconds per emitted position (the cost model: selection's own cost, evaluating and scoring every emitted
    position, grows with the positions, not the rounds), so its rate is r = ÂL / (C + e·ÂL). The loss is the
    bounded, decreasing affine transform

        ℓ_s(i, K) = 1 − r_s(i, K) · (C_min / (K_max + 1) + e)  ∈ [0, 1],

    with C_min the cheapest arm's round cost: r = 1 / (C / ÂL + e) ≤ (K_max + 1) / (C_min + (K_max + 1) e) because
    ÂL ≤ K + 1 and C ≥ C_min. Minimising these losses maximises Σ_s r_s, so a no-regret learner over them has regret
    O(sqrt(T ln E)) · (K_max + 1) / (C_min + (K_max + 1) e) in tokens per second against the best fixed arm, as long
    as the costs it was given are the arms' true costs.

    Parameters
    ----------
    gamma : Tensor ``[N, S]`` fp32, γ of consecutive verified positions (NaN where a drafter was not evaluated: the
        windows that need it come out NaN, to be treated as asleep; a window does not need a γ past one that is 0).
    draft_lens : the K of the arms (each in 1..K_max; K_max = max).
    arm_seconds : Tensor ``[1 + N·L]`` fp32 > 0, each arm's expected round seconds, in arm order.
    position_seconds : e ≥ 0, seconds per emitted position on top of the round (the evaluation tax).
    observed : ``(t, arm, tokens)`` triples: arm ``arm`` was played at window ``t`` and emitted ``tokens`` (the round's
        own outcome, an unbiased sample of its ÂL); used where γ leaves that arm's ÂL unknown (NaN).

    Returns
    -------
    Tensor ``[max(S − K_max + 1, 0), 1 + N·L]`` fp32.
    """
    n, s = gamma.shape
    lens = list(draft_lens)
    k_max = max(lens)
    arms = 1 + n * len(lens)
    if arm_seconds.numel() != arms:
        raise ValueError(f"arm_seconds has {arm_seconds.numel()} entries for {arms} arms")
    if s < k_max:
        return gamma.new_zeros((0, arms))
    windows = gamma.float().unfold(1, k_max, 1)  # [N, T, K_max]
    # past a γ of 0 the chain has ended: an unknown γ there (NaN) changes nothing, so ÂL stays known
    reach = windows.cumprod(dim=-1).masked_fill((windows == 0).cumsum(dim=-1) > 0, 0.0)
    expected = 1.0 + reach.cumsum(dim=-1)  # [N, T, K_max]: ÂL for K = 1..K_max
    index = torch.tensor(lens, device=gamma.device) - 1
    chosen = expected.index_select(-1, index)  # [N, T, L]
    steps = chosen.shape[1]
    tokens = torch.cat([chosen.new_ones((steps, 1)), chosen.permute(1, 0, 2).reshape(steps, -1)], dim=1)
    if observed:
        t, arm, value = (torch.tensor(x, device=gamma.device) for x in zip(*observed))
        tokens[t, arm] = torch.where(tokens[t, arm].isnan(), value.to(tokens.dtype), tokens[t, arm])
    seconds = arm_seconds.to(device=gamma.device, dtype=torch.float32)
    scale = seconds.min() / (k_max + 1) + position_seconds
    rate = tokens / (seconds + tokens * position_seconds)
    return (1.0 - rate * scale).clamp(0.0, 1.0)  # NaN stays NaN: a window with an unknown γ


def throughput_awake(awake: torch.Tensor, draft_lens: Sequence[int]) -> torch.Tensor:
    """Which arms were awake at each released window's first position: ``[T, 1 + N·L]`` bool (the arm layout of
    :func:`throughput_losses`). An arm of drafter i is awake where drafter i has a proposal (``awake [N, S]``; a
    model always has one, n-gram lookup only where it finds a match); the no-draft arm always is."""
    n, s = awake.shape
    lens = list(draft_lens)
    steps = max(s - max(lens) + 1, 0)
    first = awake[:, :steps].t()  # [T, N]
    return torch.cat([first.new_ones((steps, 1)), first.repeat_interleave(len(lens), dim=1)], dim=1)


def contextual_arms(losses: torch.Tensor, arm_awake: torch.Tensor, awake: torch.Tensor, arm_index: Sequence[int],
                    arm_context: Sequence[int], sleepers: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Map losses and awake masks ``[T, 1 + N·L]`` of the base arm layout onto specialist arms ``[T, E]``.

    A specialist e is base arm ``arm_index[e]`` restricted to a context: ``arm_context[e]`` = 1 where some drafter in
    ``sleepers`` (drafters that can have no proposal, such as n-gram lookup) has one at the window's first position,
    0 where none has, −1 = every position. Outside its context a specialist is asleep, so the learner competes with
    the best arm *per context* (Freund et al.'s specialists), e.g. "n-gram lookup where it matches, else drafter j".
    """
    index = torch.as_tensor(arm_index, dtype=torch.long, device=losses.device)
    context = torch.as_tensor(arm_context, dtype=torch.long, device=losses.device)
    steps = losses.shape[0]
    some = awake[list(sleepers), :steps].any(dim=0) if len(sleepers) else awake.new_ones(steps)
    in_context = (context[None, :] < 0) | (context[None, :] == some.long()[:, None])
    return losses.index_select(1, index), arm_awake.index_select(1, index) & in_context


def _normalhedge_scale(regret: torch.Tensor) -> torch.Tensor:
    """c > 0 with mean_i exp([R_i]₊² / (2c)) = e, searched on log c.

    With a_i = [R_i]₊²/2 the left side decreases in c, is ≤ e at c = max a and ≥ e at c = max a / (1 + ln N),
    so that bracket always holds the root. Each pass evaluates the left side on a grid of the bracket and keeps the
    cell where it crosses e. Returns the upper end of the final cell (a c whose left side is ≤ e), or 0 when no
    regret is positive (the caller then plays uniform).
    """
    a = regret.clamp(min=0).square() * 0.5
    a_max = a.max()
    log_hi = torch.log(a_max.clamp(min=1e-30))
    log_lo = log_hi - math.log(1.0 + math.log(regret.numel()))
    frac = torch.linspace(0.0, 1.0, NORMALHEDGE_GRID_POINTS + 1, device=regret.device, dtype=regret.dtype)
    for _ in range(NORMALHEDGE_GRID_PASSES):
        grid = log_lo + (log_hi - log_lo) * frac  # [G+1] increasing log c
        f = torch.exp(a[None, :] * torch.exp(-grid)[:, None]).mean(dim=1)  # [G+1] decreasing
        cell = (f > math.e).sum().clamp(1, NORMALHEDGE_GRID_POINTS)  # f(grid[cell-1]) > e ≥ f(grid[cell])
        log_lo, log_hi = grid[cell - 1], grid[cell]
    return torch.where(a_max > 0, torch.exp(log_hi), torch.zeros_like(a_max))


def _weights(algo, regret, abs_regret, cum_loss, step, eta, prior):
    n = regret.numel()
    if algo == "hedge":
        rate = eta if eta is not None else torch.sqrt(8.0 * math.log(max(n, 2)) / step.clamp(min=1).float())
        logits = -rate * (cum_loss - cum_loss.min())
        return torch.softmax(logits, dim=0)
    if algo == "normalhedge":
        c = _normalhedge_scale(regret)
        r_pos = regret.clamp(min=0)
        safe_c = torch.where(c > 0, c, torch.ones_like(c))
        w = (r_pos / safe_c) * torch.exp(r_pos.square() / (2 * safe_c))
        total = w.sum()
        uniform = torch.full_like(w, 1.0 / n)
        return torch.where((c > 0) & (total > 0), w / total.clamp(min=1e-30), uniform)
    # adanormalhedge, in log space: w ∝ π · ½(Φ(R+1, C+1) − Φ(R−1, C+1)), Φ(R, C) = exp([R]₊² / (3C))
    denom = 3.0 * (abs_regret + 1.0)
    hi = (regret + 1).clamp(min=0).square() / denom
    lo = (regret - 1).clamp(min=0).square() / denom
    top = hi.max()
    w = torch.exp(hi - top) * (-torch.expm1(lo - hi)).clamp(min=0)
    if prior is not None:
        w = w * prior
    total = w.sum()
    uniform = prior / prior.sum() if prior is not None else torch.full_like(w, 1.0 / n)
    return torch.where(total > 0, w / total.clamp(min=1e-30), uniform)


def hedge_update(
    losses: torch.Tensor,
    regret: torch.Tensor,
    abs_regret: torch.Tensor,
    cum_loss: torch.Tensor,
    weights: torch.Tensor,
    step: torch.Tensor,
    *,
    algo: str = "normalhedge",
    eta: float | None = None,
    prior: torch.Tensor | None = None,
    u: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    awake: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply ``T`` full-information rounds to a learner's state in place and return the next choice.

    Round t, with the weights w_t the learner played: learner loss ℓ̂ = w_t · ℓ_t; then
    Hedge: L += ℓ, w ∝ exp(−η L) (η fixed or the anytime sqrt(8 ln N / t));
    NormalHedge: R += ℓ̂ − ℓ, c_t by bisection, w ∝ ([R]₊ / c) exp([R]₊² / 2c), uniform when all R ≤ 0;
    AdaNormalHedge: R += ℓ̂ − ℓ, C += |ℓ̂ − ℓ|, w ∝ π · ½(Φ(R+1, C+1) − Φ(R−1, C+1)).

    Parameters
    ----------
    losses : Tensor ``[T, N]`` fp32 in [0, 1]; ``T = 0`` only recomputes the choice.
    regret, abs_regret, cum_loss, weights : Tensor ``[N]`` fp32, learner state, updated in place
        (each algorithm uses its own: R for NormalHedge, R and C for AdaNormalHedge, L for Hedge).
    step : Tensor ``[1]`` int64, rounds seen so far, updated in place.
    algo : ``"hedge" | "normalhedge" | "adanormalhedge"``.
    eta : Hedge learning rate; None = anytime sqrt(8 ln N / t).
    prior : Tensor ``[N]`` or None, AdaNormalHedge's prior π (uniform when None).
    u : Tensor ``[1]`` fp32 in [0, 1) to sample the choice from the weights by inverse CDF; None = argmax.
    out : optional Tensor ``[1]`` int64 to write the choice into.
    awake : optional Tensor ``[T, N]`` bool, sleeping experts (Freund et al. 1997): in a round an asleep expert would
        not have been played, so the learner's loss is the weighted mean over the awake ones and an asleep expert is
        charged exactly that (no regret either way). None = all awake.

    Returns
    -------
    Tensor ``[1]`` int64, the drafter to play next (``out`` when given).
    """
    if algo not in ALGOS:
        raise ValueError(f"unknown learner {algo!r}; expected one of {ALGOS}")
    rows = losses.float()
    masks = awake.bool() if awake is not None else None
    for t, row in enumerate(rows):
        played = weights.clone()
        if masks is not None:
            row = _charge_asleep(row, played, masks[t])
        learner_loss = (played * row).sum()
        instant = learner_loss - row
        regret += instant
        abs_regret += instant.abs()
        cum_loss += row
        step += 1
        weights.copy_(_weights(algo, regret, abs_regret, cum_loss, step, eta, prior))
    choice = choose(weights, u)
    return out.copy_(choice) if out is not None else choice


def _charge_asleep(row: torch.Tensor, weights: torch.Tensor, awake: torch.Tensor) -> torch.Tensor:
    """The loss row with every asleep expert charged the awake experts' weighted mean loss (their plain mean when the
    weights put nothing on them)."""
    w = torch.where(awake, weights, 0.0)
    total = w.sum()
    mean = torch.where(total > 0, (w * row).sum() / total.clamp(min=1e-30),
                       (row * awake).sum() / awake.sum().clamp(min=1))
    return torch.where(awake, row, mean)


def choose(weights: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
    """argmax of ``weights`` (first index on ties) or, given ``u ∈ [0, 1)``, the inverse-CDF sample. ``[1]`` int64."""
    if u is None:
        return weights.argmax().view(1)
    cdf = weights.cumsum(0)
    idx = (cdf <= u * cdf[-1]).sum().clamp(max=weights.numel() - 1)
    return idx.view(1).long()


def gamma_losses(gamma: torch.Tensor, loss: str = "expected_length", draft_len: int = 1) -> torch.Tensor:
    """Loss rows ``[T, N]`` released by a γ window ``[N, S]``: expected length (T = S − K + 1) or 1 − γ (T = S)."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
    if loss == "acceptance":
        return (1.0 - gamma.float()).t().contiguous()
    return expected_length_losses(gamma.float(), draft_len)


def hedge_update_from_gamma(
    gamma: torch.Tensor,
    regret: torch.Tensor,
    abs_regret: torch.Tensor,
    cum_loss: torch.Tensor,
    weights: torch.Tensor,
    step: torch.Tensor,
    *,
    draft_len: int = 1,
    loss: str = "expected_length",
    level: str = "token",
    algo: str = "normalhedge",
    eta: float | None = None,
    prior: torch.Tensor | None = None,
    u: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """γ window → loss rows → ``T`` learner rounds → next choice, the twin of the one-launch Triton kernel.

    The caller owns the window: ``gamma`` holds the positions not yet scored, oldest first. ``loss="expected_length"``
    scores every complete window (T = S − K + 1 rounds; the last K − 1 columns stay pending for the next call),
    ``loss="acceptance"`` every column (T = S). ``level="chunk"`` averages the T rows into one round.

    Parameters
    ----------
    gamma : Tensor ``[N, S]`` fp32 (any strides).
    regret, abs_regret, cum_loss, weights, step : learner state, see :func:`hedge_update`, updated in place.
    draft_len : K ≥ 1 of the expected-length loss.
    loss : ``"expected_length" | "acceptance"``.
    level : ``"token"`` (one round per row) or ``"chunk"`` (one round with the mean row).
    algo, eta, prior, u, out : as in :func:`hedge_update`.

    Returns
    -------
    Tensor ``[1]`` int64, the drafter to play next.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {LEVELS}")
    losses = gamma_losses(gamma, loss, draft_len)
    if level == "chunk" and losses.shape[0] > 1:
        losses = losses.mean(dim=0, keepdim=True)
    return hedge_update(losses, regret, abs_regret, cum_loss, weights, step, algo=algo, eta=eta, prior=prior, u=u,
                        out=out)


def acceptance_and_update(
    target_logits: torch.Tensor,
    drafter_logits: torch.Tensor | Sequence[torch.Tensor],
    gamma_history: torch.Tensor,
    regret: torch.Tensor,
    abs_regret: torch.Tensor,
    cum_loss: torch.Tensor,
    weights: torch.Tensor,
    step: torch.Tensor,
    *,
    temperature: float = 1.0,
    mode: str = "tv",
    top_k: int = 0,
    top_p: float = 1.0,
    top_l: int = 1,
    draft_len: int = 1,
    loss: str = "expected_length",
    level: str = "token",
    algo: str = "normalhedge",
    eta: float | None = None,
    prior: torch.Tensor | None = None,
    u: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The whole selection step: γ of the ``m`` new positions → losses → learner rounds → next choice.

    γ ``[N, m]`` is written into the last ``m`` columns of ``gamma_history [N, S]`` (S ≥ m; the first S − m columns
    are the pending positions of earlier rounds), then :func:`hedge_update_from_gamma` runs on the whole window.
    The Triton twin does all of it in one launch.

    Returns
    -------
    Tensor ``[1]`` int64, the drafter to play next; ``gamma_history`` and the learner state are updated in place.
    """
    m, width = target_logits.shape[0], gamma_history.shape[1]
    if width < m:
        raise ValueError(f"gamma_history has {width} columns, fewer than the {m} new positions")
    acceptance_probs(target_logits, drafter_logits, temperature, mode, top_k, top_p, top_l,
                     out=gamma_history[:, width - m:])
    return hedge_update_from_gamma(gamma_history, regret, abs_regret, cum_loss, weights, step, draft_len=draft_len,
                                   loss=loss, level=level, algo=algo, eta=eta, prior=prior, u=u, out=out)
