"""Full-information feedback: γ of every drafter at every verified position, and the losses it becomes.

γ_s[i] = Σ_v min(p_s(v), q_{i,s}(v)) (sampling) or 1{argmax q_{i,s} = argmax p_s} (greedy), with p and q warped
identically; a deterministic proposal x̃ (n-gram) has γ = p_s(x̃), or 1{x̃ = argmax p_s}, and 0 when it proposes
nothing (ALGORITHMS.md §1–3).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from . import kernels
from .drafters.base import Beliefs
from .logits import LogitsWarp


class Evaluator:
    """Computes γ ``[N, m]`` from the target's rows and the drafters' beliefs at the same positions.

    Parameters
    ----------
    warp : the generation's logits warping (applied to the drafters' rows exactly as to the target's).
    do_sample : sampling (``tv``) or greedy acceptance.
    backend : kernel backend for ``acceptance_probs``.
    top_l : draft trees with the drafter's top-L children at every node: γ is the top-L mass (``topl``: Σ_{v ∈ TopL(q)}
        p(v), the chance that one of the L children is accepted; greedy: 1{argmax p ∈ TopL(q)}), ALGORITHMS.md §3.
        None = chains.
    min_confidence : the generation's confidence stop (``SpecConfig.draft_stop``): a model drafter's chain ends before
        a position whose top probability is below it, so γ there is 0 for a chain, whatever p and q agree on:
        γ'_s = γ_s · 1{max q_s ≥ τ}. With it ÂL = 1 + Σ_K Π γ' is the expected length of the chains the drafter
        really drafts (a rule of the prefix alone), and the learner weighs the arms it plays.
    """

    def __init__(self, warp: LogitsWarp, do_sample: bool, backend: str = "auto", top_l: int | None = None,
                 min_confidence: float | None = None):
        self.warp = warp
        self.min_confidence = min_confidence
        self.confident = None  # with a stop: (model drafter rows, [n, m] bool) of the last gamma() call
        self.chain_mode = "tv" if do_sample else "greedy"  # deterministic beliefs (n-gram) propose one token
        self.mode = self.chain_mode if top_l is None else ("topl" if do_sample else "topl_greedy")
        self.top_l = 1 if top_l is None else top_l
        self.backend = backend

    def gamma(self, target_warped: torch.Tensor, target_raw: torch.Tensor, beliefs: Sequence[Beliefs],
              ids: torch.Tensor, start: int) -> torch.Tensor:
        """γ of each belief set against the target.

        Parameters
        ----------
        target_warped, target_raw : ``[m, V]`` the target's warped (fp32) and raw logits at the positions.
        beliefs : one :class:`Beliefs` per drafter, each over the same ``m`` positions (None: a drafter not evaluated
            there, whose γ row is NaN: unknown).
        ids, start : the sequence and the prefix length of row 0 (for position-dependent warping).

        Returns
        -------
        Tensor ``[N, m]`` fp32 on the target's device.
        """
        m = target_warped.shape[0]
        gamma = torch.full((len(beliefs), m), float("nan"), dtype=torch.float32, device=target_warped.device)
        model_rows = [i for i, b in enumerate(beliefs) if b is not None and b.logits is not None]
        token_rows = [i for i, b in enumerate(beliefs) if b is not None and b.logits is None]
        if model_rows:
            stacked = torch.stack([beliefs[i].logits for i in model_rows])  # [n, m, V]
            q = None
            if self.warp.temperature_only is not None:
                # Temperature is the whole warp: the kernel reads the raw logits and divides in-kernel.
                g = kernels.acceptance_probs(target_raw, stacked, temperature=self.warp.temperature_only,
                                             mode=self.mode, top_l=self.top_l, backend=self.backend)
            else:
                q = self.warp(ids, stacked, start)
                g = kernels.acceptance_probs(target_warped, q, temperature=1.0, mode=self.mode, top_l=self.top_l,
                                             backend=self.backend)
            if self.min_confidence is not None:
                if q is None:
                    q = stacked.float() / self.warp.temperature_only
                confident = q.float().softmax(dim=-1).amax(dim=-1) >= self.min_confidence  # [n, m], as the drafter
                g = g * confident
                self.confident = (model_rows, confident)
            gamma[model_rows] = g.nan_to_num(nan=0.0)  # a drafter with NaN logits is never accepted
        if token_rows:
            tokens = torch.stack([beliefs[i].tokens for i in token_rows])  # [n, m], -1 = no proposal
            gamma[token_rows] = onehot_acceptance(target_warped, tokens, self.chain_mode)
        return gamma

    @staticmethod
    def awake(beliefs: Sequence[Beliefs]) -> torch.Tensor | None:
        """``[N, m]`` bool: where each drafter had a proposal (models always; n-gram lookup where it found a match),
        or None when every drafter always has one."""
        if all(b is None or b.logits is not None for b in beliefs):
            return None
        known = next(b for b in beliefs if b is not None and b.logits is None).tokens
        rows = [b.tokens >= 0 if b is not None and b.logits is None else torch.ones_like(known, dtype=torch.bool)
                for b in beliefs]
        return torch.stack(rows)


def onehot_acceptance(target_warped: torch.Tensor, tokens: torch.Tensor, mode: str) -> torch.Tensor:
    """γ of deterministic proposals ``tokens [n, m]`` (−1 = none): p(x̃) (``tv``) or 1{x̃ = argmax p} (greedy)."""
    proposed = tokens >= 0
    safe = tokens.clamp(min=0)
    if mode == "greedy":
        hit = safe == target_warped.argmax(dim=-1)[None, :]
        return (hit & proposed).float()
    p = target_warped.softmax(dim=-1)  # [m, V]
    picked = p.expand(tokens.shape[0], -1, -1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(proposed, picked, torch.zeros_like(picked))


def chain_gamma(accepted: int, drafted: int, emitted: int) -> list[float]:
    """Greedy γ of a chain's own drafter at its round's positions, read off the verification (no forward).

    Under greedy verification a drafted token is accepted iff it is the target's argmax, and every drafted token
    after the first is conditioned on accepted ones, i.e. on the committed text. So the drafter's γ (ALGORITHMS.md
    §1, greedy: 1{argmax q = argmax p}) is 1 at the ``accepted`` positions and, when the chain went on past them
    (``accepted < drafted``), 0 at the next one; what the drafter would have said at the bonus position of a fully
    accepted chain is not known. A confidence stop changes nothing here: every drafted position was confident, so
    γ' = γ there. Clipped to the ``emitted`` positions (an EOS inside the round).

    Returns
    -------
    list of the known γ, for the round's first ``len`` positions.
    """
    known = min(accepted + (accepted < drafted), emitted)
    return [1.0] * min(accepted, known) + [0.0] * (known - min(accepted, known))


def fill_chain_gamma(gamma: torch.Tensor, start: int, chains: Sequence[tuple[int, int, list[float]]]) -> torch.Tensor:
    """Write chains' known γ (:func:`chain_gamma`: ones, then at most one 0) into ``gamma [N, m]`` (column 0 at
    position ``start``) where it is NaN (not evaluated); evaluated values are kept. ``chains``: ``(first position,
    drafter, γ list)``."""
    for first, drafter, values in chains:
        lo = first - start
        hi = min(lo + len(values), gamma.shape[1])
        if lo < 0 or hi <= lo:
            continue
        row = gamma[drafter, lo:hi]
        known = row.new_ones(hi - lo)  # ones, then a 0 where the chain was rejected: built on the device, no copy
        known[int(sum(values[: hi - lo])):] = 0.0
        gamma[drafter, lo:hi] = torch.where(row.isnan(), known, row)
    return gamma


class LossStream:
    """γ of consecutive verified positions in; learner loss vectors out, as soon as each becomes computable.

    This is QPM-D's FIFO (ALGORITHMS.md §4, **[reconstructed]**): the expected-length loss of position s needs
    γ_{s..s+K−1}, so it is released once position s+K−1 is verified; the acceptance loss 1 − γ_s is released at once.
    Released vectors are fed to the base learner in order before its next choice, one learner round each (token
    level) or averaged into one round per draft–verify cycle (chunk level).

    The stream only keeps the open positions; turning a window into losses (and updating the learner) is the
    kernels' job: :meth:`extend` hands the window to ``kernels.hedge_update_from_gamma`` (one launch on a GPU),
    :meth:`push` returns the losses themselves.

    With ``early``, a window is released as soon as its losses are determined, not only once K positions are in:
    ÂL_s(K) = 1 + Σ_{j<K} Π_{l≤j} γ_{s+l} stops changing at the first γ that is 0 (greedy decoding: the drafter's
    token is not the target's) and is unknown from the first NaN on (not evaluated: asleep), so a window in which
    every drafter's row has reached a 0 or a NaN has the losses it would have with all K positions. It is released
    padded with zeros, which change nothing. The losses and their order are the same; the learner gets them sooner.
    That matters where rounds are short: with K_max = 16 and rounds that emit one token each (a drafter that keeps
    missing, plain steps), the complete-window rule left the learner blind for 16 rounds, drafting long chains that
    the target rejected. CPU γ only (reading it on a device would be a host sync).

    Parameters
    ----------
    kind : ``"expected_length"`` or ``"acceptance"``.
    level : ``"token"`` or ``"chunk"``.
    draft_len : K, the window of the expected-length loss.
    early : release determined windows early (above).
    """

    def __init__(self, kind: str, level: str, draft_len: int, early: bool = False):
        self.kind, self.level, self.window, self.early = kind, level, max(int(draft_len), 1), early
        self.history: torch.Tensor | None = None  # [N, < K] γ of positions whose windows are still open
        self.awake: torch.Tensor | None = None  # [N, < K] bool beside it, when some drafter can be asleep
        self.padding = 0  # zero columns the last extend() appended to the window it returned

    def reset(self) -> None:
        """New prompt or a gap in the positions: windows that cannot complete are dropped."""
        self.history = self.awake = None

    def extend(self, gamma: torch.Tensor, awake: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """Add γ ``[N, m]`` (and where each drafter was awake, ``[N, m]`` bool; None = everywhere); return the window
        ``[N, S]`` (open + new positions) and how many losses it releases. The window's awake mask is left in
        :attr:`window_awake`."""
        if awake is None:
            awake = torch.ones_like(gamma, dtype=torch.bool)
        history = gamma if self.history is None else torch.cat([self.history, gamma], dim=1)
        awake = awake if self.awake is None else torch.cat([self.awake, awake], dim=1)
        size = history.shape[1]
        released = size if self.kind == "acceptance" else max(size - self.window + 1, 0)
        if self.early and released < size and history.device.type == "cpu":
            released = max(released, determined_windows(history))
        self.history, self.awake = history[:, released:], awake[:, released:]
        self.padding = max(released + self.window - 1 - size, 0) if self.kind != "acceptance" else 0
        if self.padding:
            history = torch.cat([history, history.new_zeros(history.shape[0], self.padding)], dim=1)
            awake = torch.cat([awake, awake.new_ones(awake.shape[0], self.padding)], dim=1)
        self.window_awake = awake
        return history, released

    def hold(self, window: torch.Tensor, awake: torch.Tensor | None) -> None:
        """Put a window back unscored (its losses could not be computed yet)."""
        if self.padding:
            window, awake = window[:, : -self.padding], None if awake is None else awake[:, : -self.padding]
            self.padding = 0
        self.history, self.awake = window, awake

    def push(self, gamma: torch.Tensor) -> torch.Tensor:
        """Add γ ``[N, m]`` of the next ``m`` positions; return the released losses ``[T, N]`` (T may be 0)."""
        window, _ = self.extend(gamma)
        losses = kernels.gamma_losses(window, self.kind, self.window)
        if self.level == "chunk" and losses.shape[0] > 1:
            losses = losses.mean(dim=0, keepdim=True)
        return losses


def determined_windows(gamma: torch.Tensor) -> int:
    """How many leading windows of γ ``[N, S]`` have determined expected lengths for every K: those starting at or
    before the last position where *every* row has reached a 0 or a NaN (each row's last such position, the least
    over rows, + 1)."""
    stops = (gamma == 0) | gamma.isnan()
    last = torch.where(stops, torch.arange(gamma.shape[1]), -1).amax(dim=1)
    return int(last.min()) + 1


class EvaluationSchedule:
    """When a round's positions are evaluated: ``"evaluate"`` now (with any deferred ones), ``"defer"`` (keep them for
    a later evaluation) or ``"skip"`` (never: nobody computes beliefs there).

    ``every`` = an int: defer and evaluate every that many rounds, nothing skipped (HedgeSpec App. B.5's
    system-efficient variant). ``every = "auto"``: evaluation in batches of ``batch`` consecutive rounds (so the
    expected-length windows inside a batch complete: a batch also waits until it holds ``min_positions``
    positions, the learner's window, else rounds that emit one token each would never complete a window of a
    long-draft arm and those arms would never be scored), and after each batch as many rounds skipped as keep the
    measured evaluation time within ``budget`` of all the time spent: a batch that took ``t`` seconds of evaluation
    over rounds of ``w`` seconds of other work each is followed by ⌈t / (budget · w)⌉ − batch skipped rounds
    (the budget scaled by the learner's weight on the arms evaluation informs: see :meth:`evaluated`). A
    drafter that is neither chosen nor evaluated costs nothing (it catches up when next needed, computing no logits
    for skipped positions), so skipping saves the whole evaluation, where deferring only batches it. The first batch
    of a generation is never skipped: early feedback is worth the most.

    Either way evaluation is forced once ``max_rounds`` rounds or ``max_positions`` positions are owed.
    """

    def __init__(self, every, budget: float = 0.1, batch: int = 4, max_rounds: int = 32, max_positions: int = 128,
                 min_share: float = 0.25):
        self.every, self.budget, self.batch, self.min_share = every, budget, batch, min_share
        self.max_rounds, self.max_positions = max_rounds, max_positions
        self.skip_left = 0
        self.min_positions = 1

    def begin(self, window: int) -> None:
        """The learner's loss window (K for a fixed draft length, K_max under the throughput objective)."""
        self.min_positions = max(1, min(int(window), self.max_positions))

    def decide(self, owed_rounds: int, owed_positions: int, costs) -> str:
        """``owed_*``: deferred rounds / positions including this round's."""
        if self.every != "auto":
            due = owed_rounds >= self.every
        else:
            if self.skip_left > 0:
                self.skip_left -= 1
                return "skip"
            due = owed_rounds >= self.batch and owed_positions >= self.min_positions
        if due or owed_rounds >= self.max_rounds or owed_positions >= self.max_positions:
            return "evaluate"
        return "defer"

    def resume(self) -> None:
        """End the skip: the next batch starts with the next round (a drafter joined and is to be scored)."""
        self.skip_left = 0

    def evaluated(self, rounds: int, costs, need: float = 1.0) -> None:
        """After an evaluation of ``rounds`` rounds: plan the skip from the measured costs.

        ``need`` ∈ [0, 1]: the learner's weight on the arms this evaluation informs (model drafters' arms). The
        budget is scaled by it, down to ``min_share`` of itself: evaluation is worth what it can change, and a
        learner that puts no weight on those arms would play the same with or without their newest γ (selective
        sampling's rule: ask for feedback where the decision depends on it). The floor keeps them tracked, so a
        drafter that becomes good is still noticed, at a quarter of the rate."""
        if self.every != "auto" or costs.eval_forward is None or costs.work <= 0:
            return
        budget = self.budget * min(1.0, max(self.min_share, need))
        self.skip_left = max(0, math.ceil(costs.eval_forward / (budget * costs.work)) - rounds)


class PromptScores:
    """γ of every drafter at the prompt's last P positions: the prompt warm start.

    At prefill the target already runs over the prompt and every drafter prefills it too; keeping their logits at
    the last P positions gives γ_s[i] there with no extra forward (only P rows of each LM head), full information on
    the user's own text before round one. Drafters are scored one at a time, as the pool prefills them
    (:meth:`score`), so at most the target's rows ``[P, V]`` (warped and raw) and one drafter's ``[rows, P, V]`` are
    alive at once: memory ≤ (2 + rows) · P · V · 4 bytes (P = 32, V = 152k: 58 MB for a plain drafter).

    Parameters
    ----------
    evaluator : the generation's :class:`Evaluator` (same warping and acceptance mode as the rounds).
    target_rows : the target's raw logits ``[P, V]`` predicting prompt positions L − P … L − 1.
    warp, ids, prompt_len, n_drafters : the generation's warp, sequence buffer, prompt length L, pool size.
    """

    def __init__(self, evaluator: Evaluator, target_rows: torch.Tensor, warp, ids: torch.Tensor, prompt_len: int,
                 n_drafters: int):
        self.evaluator, self.ids = evaluator, ids
        self.positions = target_rows.shape[0]
        self.start = prompt_len - self.positions
        self.raw = target_rows
        self.warped = warp(ids, target_rows, self.start)
        self.gamma = torch.full((n_drafters, self.positions), float("nan"), device=target_rows.device)
        self.awake = torch.ones((n_drafters, self.positions), dtype=torch.bool, device=target_rows.device)

    def score(self, indices: list[int], beliefs: list[Beliefs] | None) -> None:
        """Score the drafters ``indices`` (a stack's members, or one drafter) on their prompt ``beliefs``; None leaves
        them unknown (NaN: asleep for the learner)."""
        if beliefs is None:
            return
        rows = self.evaluator.gamma(self.warped, self.raw, beliefs, self.ids, self.start)
        awake = self.evaluator.awake(beliefs)
        for j, i in enumerate(indices):
            self.gamma[i] = rows[j]
            if awake is not None:
                self.awake[i] = awake[j]

    def result(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """γ ``[N, P]`` and where each drafter had a proposal (None: everywhere)."""
        return self.gamma, (None if bool(self.awake.all()) else self.awake)
