"""Bandit baselines: only what the chosen drafter showed is observed (ALGORITHMS.md §5)."""
from __future__ import annotations

import math

import torch

from .base import Policy, RoundOutcome


class _CountingBandit(Policy):
    """Shared state of the index bandits: pulls ``counts``, reward ``sums`` and rounds ``t`` (buffers)."""

    def __init__(self, n_drafters: int):
        super().__init__(n_drafters)
        self.register_buffer("counts", torch.zeros(n_drafters, dtype=torch.float64))
        self.register_buffer("sums", torch.zeros(n_drafters, dtype=torch.float64))
        self.register_buffer("t", torch.zeros(1, dtype=torch.float64))

    def _record(self, arm: int, reward: float) -> None:
        self.counts[arm] += 1
        self.sums[arm] += reward
        self.t += 1

    def _index(self, counts, means, t) -> list[float]:
        raise NotImplementedError

    def choose(self, awake=None) -> int:
        counts = self.counts.tolist()
        for arm, n in enumerate(counts):  # round-robin until every arm has been pulled once
            if n == 0:
                return arm
        sums = self.sums.tolist()
        index = self._index(counts, [s / n for s, n in zip(sums, counts)], float(self.t.item()))
        return max(range(len(index)), key=index.__getitem__)


class UCBSpec(_CountingBandit):
    """UCBSpec (BanditSpec): reward Y = tokens emitted in the round ∈ [1, L+1]; round-robin, then
    argmax μ̂_i + (L/2)·sqrt(((1 + n_i)/n_i²)·(1 + 2 ln(N t² sqrt(1 + n_i) / δ))).

    Parameters
    ----------
    delta : confidence parameter δ.
    """

    def __init__(self, n_drafters: int, delta: float = 0.1):
        super().__init__(n_drafters)
        self.delta = delta

    def _index(self, counts, means, t):
        n_arms, half_l = len(counts), self.draft_len / 2.0
        return [
            mu + half_l * math.sqrt((1 + n) / n**2 * (1 + 2 * math.log(n_arms * t * t * math.sqrt(1 + n) / self.delta)))
            for mu, n in zip(means, counts)
        ]

    def update(self, outcome: RoundOutcome) -> None:
        self._record(outcome.chosen, float(outcome.emitted))


class MetaSDUCB(_CountingBandit):
    """MetaSD-UCB: block-divergence reward r = (1/K) Σ_j (1 − TV(p_j, q_{i,j})) over every drafted position (also after
    the first rejection); round-robin, then argmax μ̂ + β sqrt(2 ln t / n_i)."""

    needs_block_reward = True

    def __init__(self, n_drafters: int, beta: float = 1.0):
        super().__init__(n_drafters)
        self.beta = beta

    def _index(self, counts, means, t):
        return [mu + self.beta * math.sqrt(2 * math.log(max(t, 1.0)) / n) for mu, n in zip(means, counts)]

    def update(self, outcome: RoundOutcome) -> None:
        if outcome.block_reward is not None:  # a drafter that proposed nothing shows no divergence
            self._record(outcome.chosen, outcome.block_reward)


class EXP3Spec(Policy):
    """EXP3Spec (BanditSpec): importance-weighted loss Ẑ_i = 1{i = I_t}(L + 1 − Y)/(L w_t[i]), η_t = sqrt(ln N/(t N)),
    w ∝ exp(−η_t Σ Ẑ); the drafter is sampled from w."""

    def __init__(self, n_drafters: int):
        super().__init__(n_drafters)
        self.register_buffer("cum_estimate", torch.zeros(n_drafters, dtype=torch.float64))
        self.register_buffer("played", torch.full((n_drafters,), 1.0 / n_drafters, dtype=torch.float64))
        self.register_buffer("t", torch.zeros(1, dtype=torch.float64))

    def _current(self) -> torch.Tensor:
        n = self.n_drafters
        eta = math.sqrt(math.log(max(n, 2)) / ((float(self.t.item()) + 1) * n))
        return torch.softmax(-eta * (self.cum_estimate - self.cum_estimate.min()), dim=0)

    def choose(self, awake=None) -> int:
        w = self._current()
        self.played.copy_(w)
        return int(torch.multinomial(w.float(), 1, generator=self.generator).item())

    def update(self, outcome: RoundOutcome) -> None:
        length = max(outcome.draft_len, 1)
        loss = (length + 1 - outcome.emitted) / length
        self.cum_estimate[outcome.chosen] += loss / float(self.played[outcome.chosen])
        self.t += 1

    def weights(self) -> torch.Tensor:
        return self._current()


# ----------------------------------------------------------------------------------------------------------------------
# TapOut: when to stop drafting, chosen by a bandit over parameter-free stopping rules. **[reconstructed]**
# Each rule looks at the warped draft distribution of the token just drafted and says "stop after it".
def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum()


STOP_RULES = {
    "static": None,  # draft the full K
    "max_confidence": lambda logits: bool(torch.softmax(logits, -1).max() < 0.5),  # the drafted token is a coin flip
    "entropy": lambda logits: bool(_entropy(logits) > math.log(2.0)),  # more than one bit of doubt
    "svip": lambda logits: bool(_entropy(logits).sqrt() > 0.6),  # SVIP's sqrt-entropy bound on rejection
    "adaedl": lambda logits: bool(1 - (0.5 * _entropy(logits)).sqrt() < 0.5),  # AdaEDL's acceptance lower bound
}


class TapOut(Policy):
    """TapOut: UCB1 over stopping rules, one arm per draft (sequence-level), reward
    λ·n_acc/n_draft + (1 − λ)·n_acc/K. Composes with any drafter policy (``"hedgespec+tapout"``); alone it drafts
    with drafter 0, the paper's single-drafter setting.

    Parameters
    ----------
    drafter_policy : the policy that chooses the drafter (None = always drafter 0).
    rules : names from ``STOP_RULES``.
    blend : λ.
    """

    def __init__(self, n_drafters: int, drafter_policy: Policy | None = None, rules=tuple(STOP_RULES), blend=0.5):
        super().__init__(n_drafters)
        self.drafter_policy = drafter_policy
        self.rules = list(rules)
        self.blend = blend
        self.register_buffer("counts", torch.zeros(len(self.rules), dtype=torch.float64))
        self.register_buffer("sums", torch.zeros(len(self.rules), dtype=torch.float64))
        self.arm = 0

    @property
    def full_information(self):  # noqa: D401 - mirrors the drafter policy's needs
        return bool(self.drafter_policy is not None and self.drafter_policy.full_information)

    @property
    def partial_information(self):
        return bool(self.drafter_policy is not None and self.drafter_policy.partial_information)

    @property
    def needs_block_reward(self):
        return bool(self.drafter_policy is not None and self.drafter_policy.needs_block_reward)

    def evaluation_need(self, free) -> float:
        return self.drafter_policy.evaluation_need(free) if self.drafter_policy is not None else 1.0

    def evaluation_targets(self, free):
        return self.drafter_policy.evaluation_targets(free) if self.drafter_policy is not None else None

    def drafters_used(self):
        return self.drafter_policy.drafters_used() if self.drafter_policy is not None else [0]

    def begin(self, n_drafters: int, draft_len: int, seed: int | None = None, costs=None, sleepers=()) -> None:
        super().begin(n_drafters, draft_len, seed)
        if self.drafter_policy is not None:
            self.drafter_policy.begin(n_drafters, draft_len, None if seed is None else seed + 1, costs, sleepers)

    def choose(self, awake=None) -> int:
        counts, sums = self.counts.tolist(), self.sums.tolist()
        untried = [a for a, n in enumerate(counts) if n == 0]
        if untried:
            self.arm = untried[0]
        else:
            t = sum(counts)
            index = [s / n + math.sqrt(2 * math.log(t) / n) for s, n in zip(sums, counts)]
            self.arm = max(range(len(index)), key=index.__getitem__)
        return self.drafter_policy.choose(awake) if self.drafter_policy is not None else 0

    def stop_rule(self):
        return STOP_RULES[self.rules[self.arm]]

    def observe_prompt(self, gamma, awake=None) -> None:
        if self.drafter_policy is not None:
            self.drafter_policy.observe_prompt(gamma, awake)

    def draft_length(self) -> int:
        return self.drafter_policy.draft_length() if self.drafter_policy is not None else self.draft_len

    def pending_choice(self):
        return self.drafter_policy.pending_choice() if self.drafter_policy is not None else None

    def receive_choice(self, value: int) -> None:
        if self.drafter_policy is not None:
            self.drafter_policy.receive_choice(value)

    def update(self, outcome: RoundOutcome) -> None:
        if outcome.drafted:
            rate = outcome.accepted / outcome.drafted
            reward = self.blend * rate + (1 - self.blend) * outcome.accepted / max(outcome.draft_len, 1)
            self.counts[self.arm] += 1
            self.sums[self.arm] += reward
        if self.drafter_policy is not None:
            self.drafter_policy.update(outcome)

    def weights(self):
        return self.drafter_policy.weights() if self.drafter_policy is not None else None
