"""Learners on synthetic loss streams: regret against the best expert stays under each algorithm's bound; delayed
feedback through QPM-D's FIFO stays sublinear; the bandit baselines converge on stochastic arms."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import hedgespec_fast as hs
from hedgespec_fast.feedback import LossStream
from hedgespec_fast.kernels import hedge_update
from hedgespec_fast.learners import RoundOutcome


def run_experts(algo: str, losses: np.ndarray, delays: np.ndarray | None = None) -> float:
    """Play ``losses [T, N]`` with the learner; with ``delays``, loss t is revealed (FIFO) before round t + delay_t.

    Returns the regret Σ_t w_t·ℓ_t − min_i Σ_t ℓ_t[i] of the weights actually played.
    """
    steps, n = losses.shape
    state = [torch.zeros(n) for _ in range(3)]
    weights, step = torch.full((n,), 1.0 / n), torch.zeros(1, dtype=torch.long)
    arrivals: dict[int, list[int]] = {}
    learner_loss = 0.0
    for t in range(steps):
        for s in arrivals.pop(t, []):  # QPM-D: drain everything available before playing
            hedge_update(torch.tensor(losses[s : s + 1], dtype=torch.float32), *state, weights, step, algo=algo)
        learner_loss += float(weights.double() @ torch.from_numpy(losses[t]))
        reveal = t + 1 + (0 if delays is None else int(delays[t]))
        arrivals.setdefault(reveal, []).append(t)
    return learner_loss - losses.sum(axis=0).min()


def bound(algo: str, steps: int, n: int) -> float:
    """The algorithms' regret bounds against the best expert (loose constants on the lower-order terms)."""
    if algo == "hedge":  # anytime η_t = sqrt(8 ln N / t): 2 sqrt(T ln N / 2) + sqrt(ln N / 8)
        return math.sqrt(2 * steps * math.log(n)) + math.sqrt(math.log(n) / 8)
    if algo == "normalhedge":  # CFH09: sqrt(3 T (1 + ln(1/ε))) + O(ln² N), ε = 1/N
        return math.sqrt(3 * steps * (1 + math.log(n))) + 4 * math.log(n) ** 2 + 2
    # AdaNormalHedge (Luo & Schapire 2015): O(sqrt(C_T (ln N + ln ln C_T))), C_T ≤ T
    return math.sqrt(3 * steps * (math.log(n) + 2 * math.log(1 + math.log(1 + steps)) + 1)) + 2


def stochastic_stream(steps=2000, n=8, seed=0):
    rng = np.random.default_rng(seed)
    means = np.full(n, 0.5)
    means[3] = 0.35
    return (rng.random((steps, n)) < means).astype(np.float64)


def ftl_killer(steps=2000):
    """Follow-the-leader's nemesis: (½, 0), then (0, 1), (1, 0), … alternating; two always-bad experts besides."""
    losses = np.ones((steps, 4))
    losses[0, :2] = [0.5, 0.0]
    losses[1:, 0] = np.arange(1, steps) % 2 == 1
    losses[1:, 1] = np.arange(1, steps) % 2 == 0
    losses[1:, :2] = 1 - losses[1:, :2]
    return losses


def late_bloomer(steps=2000, n=8, switch=600):
    """Expert 0 is perfect until ``switch`` and useless after; expert 1 the reverse and best in hindsight."""
    losses = np.full((steps, n), 0.5)
    losses[:switch, 0], losses[switch:, 0] = 0.0, 1.0
    losses[:switch, 1], losses[switch:, 1] = 1.0, 0.0
    return losses


STREAMS = {"stochastic": stochastic_stream, "ftl_killer": ftl_killer, "late_bloomer": late_bloomer}


@pytest.mark.parametrize("algo", ["hedge", "normalhedge", "adanormalhedge"])
@pytest.mark.parametrize("stream", list(STREAMS))
def test_regret_within_bound(algo, stream):
    losses = STREAMS[stream]()
    regret = run_experts(algo, losses)
    assert regret <= bound(algo, *losses.shape), f"{algo} on {stream}: regret {regret:.1f}"


@pytest.mark.parametrize("stream", list(STREAMS))
def test_bounds_are_not_vacuous(stream):
    """A learner that ignores its losses (always uniform) breaks every bound on every stream."""
    losses = STREAMS[stream]()
    uniform_regret = losses.mean(axis=1).sum() - losses.sum(axis=0).min()
    assert uniform_regret > max(bound(algo, *losses.shape) for algo in ("hedge", "normalhedge", "adanormalhedge"))


@pytest.mark.parametrize("algo", ["normalhedge", "hedge"])
def test_qpmd_delayed_feedback_stays_sublinear(algo):
    rng = np.random.default_rng(3)
    delay_cap = 5
    short, long = stochastic_stream(1000, seed=4), stochastic_stream(4000, seed=4)
    r_short = run_experts(algo, short, rng.integers(0, delay_cap + 1, size=1000))
    r_long = run_experts(algo, long, rng.integers(0, delay_cap + 1, size=4000))
    assert r_long / 4000 < r_short / 1000  # average regret shrinks with T
    assert r_long <= math.sqrt(delay_cap + 1) * bound(algo, 4000, 8)


def test_loss_stream_releases_windows_in_order():
    gamma = torch.tensor([[1.0, 0.5, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    stream = LossStream("expected_length", "token", draft_len=3)
    first = stream.push(gamma[:, :2])
    assert first.shape == (0, 2)  # no window of 3 complete yet
    rest = stream.push(gamma[:, 2:])
    assert rest.shape == (3, 2)  # windows starting at positions 0, 1, 2
    # position 0: ÂL = 1 + 1 + 1·0.5 + 1·0.5·0 = 2.5 → loss 1 − 2.5/4
    assert rest[0, 0].item() == pytest.approx(1 - 2.5 / 4)
    assert torch.all(rest[:, 1] == 0.75)  # γ = 0 everywhere: ÂL = 1
    chunk = LossStream("acceptance", "chunk", draft_len=3).push(gamma)
    assert chunk.shape == (1, 2) and chunk[0, 0].item() == pytest.approx(1 - 3.5 / 5)


def test_expert_policy_learns_from_gamma():
    policy = hs.HedgeSpecSelector(3, choice="argmax", objective="mat")
    policy.begin(3, draft_len=2)
    for _ in range(60):
        gamma = torch.tensor([[0.2, 0.3], [0.9, 0.8], [0.5, 0.5]])
        policy.update(RoundOutcome(policy.choose(), 2, 1, 2, 2, gamma))
    assert policy.choose() == 1
    assert policy.weights()[1] > 0.9


def simulate_bandit(policy, accept_rates, rounds=1500, draft_len=4, seed=0):
    rng = np.random.default_rng(seed)
    policy.begin(len(accept_rates), draft_len, seed)
    chosen = []
    for _ in range(rounds):
        arm = policy.choose()
        rate = accept_rates[arm]
        accepted = 0
        while accepted < draft_len and rng.random() < rate:
            accepted += 1
        reward = float(np.clip(rate + rng.normal(0, 0.1), 0, 1))
        policy.update(RoundOutcome(arm, draft_len, accepted, accepted + 1, draft_len, None, reward))
        chosen.append(arm)
    return np.array(chosen)


@pytest.mark.parametrize("make,share", [(lambda n: hs.UCBSpec(n), 0.8), (lambda n: hs.MetaSDUCB(n), 0.8),
                                        (lambda n: hs.EXP3Spec(n), 0.5)], ids=["ucbspec", "metasd", "exp3spec"])
def test_bandits_converge_on_stochastic_arms(make, share):
    rates = [0.3, 0.85, 0.5, 0.6]
    chosen = simulate_bandit(make(len(rates)), rates)
    late = chosen[len(chosen) // 2 :]
    assert (late == 1).mean() > share


def test_selector_is_a_module_with_state():
    sel = hs.HedgeSpecSelector(4)
    assert set(sel.state_dict()) >= {"regret", "weights_", "step"}
    clone = hs.HedgeSpecSelector(4)
    sel.regret += torch.tensor([1.0, 0.0, 0.0, 0.0])
    clone.load_state_dict(sel.state_dict())
    assert torch.equal(clone.regret, sel.regret)
    assert sel.to(torch.float32) is sel
