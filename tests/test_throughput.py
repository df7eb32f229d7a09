"""The throughput objective: learners over (drafter, K) arms scored by expected tokens per second.

Synthetic γ / cost streams check the no-regret claim against the best fixed (drafter, K) in throughput, stochastic
and adversarial, each with a negative control that must fail the same check; the cost model is checked against the
round times it was built from; the length part behaves (long drafts for a perfect drafter on flat verification,
none for a useless one)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny import drafter_zoo, tiny_model

import hedgespec_fast as hs
from hedgespec_fast.cost import CostModel
from hedgespec_fast.kernels import throughput_awake, throughput_losses
from hedgespec_fast.learners import RoundOutcome
from hedgespec_fast.learners.full import draft_lengths


def fixed_costs(n_drafters, per_token, verify=(1.0, 0.02), fixed=0.1) -> CostModel:
    """A cost model with known costs: verify(n) = a + b·n, drafting ``per_token[i]`` seconds per token."""
    costs = CostModel(n_drafters)
    for n in range(1, 66):
        costs.verify[n] = verify[0] + verify[1] * n
    costs.draft = list(per_token)
    costs.overhead = fixed
    return costs


def arm_rates(gamma: np.ndarray, arms, costs: CostModel, k_max: int) -> np.ndarray:
    """True expected tokens per second of every arm at every window start ``[T, E]``."""
    seconds = costs.arm_seconds(arms).double().numpy()
    n, s = gamma.shape
    rates = np.zeros((s - k_max + 1, len(arms)))
    for t in range(s - k_max + 1):
        for e, (i, k) in enumerate(arms):
            tokens = 1.0 + (np.cumprod(gamma[i, t : t + k]).sum() if k else 0.0)
            rates[t, e] = tokens / seconds[e]
    return rates


def play(policy, gamma: np.ndarray, costs: CostModel, k_max: int, chunk: int = 4):
    """Feed γ ``chunk`` positions at a time (a round), choosing an arm before each; returns the arms played."""
    policy.begin(gamma.shape[0], k_max, seed=0, costs=costs)
    chosen = []
    for start in range(0, gamma.shape[1], chunk):
        policy.choose()
        chosen.append(policy.arms.index((policy._drafter, policy.draft_length())) if policy.draft_length() else 0)
        block = torch.tensor(gamma[:, start : start + chunk], dtype=torch.float32)
        policy.update(RoundOutcome(policy._drafter, 0, 0, block.shape[1], k_max, block))
    return chosen


def realised_regret(chosen, rates, chunk=4) -> tuple[float, float]:
    """Σ rate of the best fixed arm − Σ rate of the arms played (each played arm scored on its round's positions)."""
    played = sum(rates[r * chunk : (r + 1) * chunk, e].sum() for r, e in enumerate(chosen) if r * chunk < len(rates))
    best = rates.sum(axis=0).max()
    return best - played, best


def bound(steps: int, experts: int, k_max: int, c_min: float, delay: int) -> float:
    """NormalHedge's regret in loss units (sqrt(3T(1 + ln E)) + O(ln² E)) with QPM-D's delay term, times the loss
    transform's scale (K_max + 1) / C_min, back in tokens per second."""
    loss_units = math.sqrt(3 * steps * (1 + math.log(experts))) + 4 * math.log(experts) ** 2 + 2 + delay
    return loss_units * (k_max + 1) / c_min


def stochastic_gamma(steps, rng):
    """Drafter 0 accepts 0.9 but costs 0.15 s a token; drafter 1 accepts 0.6 for 0.01 s; drafter 2 accepts 0.2."""
    means = np.array([0.9, 0.6, 0.2])
    return (rng.random((3, steps)) < means[:, None]).astype(np.float64)


@pytest.mark.parametrize("choice", ["sample", "argmax"])
def test_regret_against_the_best_fixed_arm_stochastic(choice):
    rng = np.random.default_rng(0)
    gamma, k_max = stochastic_gamma(2400, rng), 6
    costs = fixed_costs(3, [0.15, 0.01, 0.01])
    policy = hs.HedgeSpecSelector(3, objective="throughput", choice=choice)
    chosen = play(policy, gamma, costs, k_max)
    rates = arm_rates(gamma, policy.arms, costs, k_max)
    regret, best = realised_regret(chosen, rates)
    c_min = float(costs.arm_seconds(policy.arms).min())
    assert regret <= bound(len(rates), len(policy.arms), k_max, c_min, k_max)
    assert regret / best < 0.05, f"{regret / best:.3f} of the best arm's throughput lost"
    # negative control: a uniformly random arm loses far more than the bound allows per position
    random_chosen = list(np.random.default_rng(1).integers(0, len(policy.arms), size=len(chosen)))
    random_regret, _ = realised_regret(random_chosen, rates)
    assert random_regret / best > 0.2, "the check cannot tell a learner from a random choice"


def test_regret_against_the_best_fixed_arm_adversarial():
    """Regimes switch every 200 positions (drafter 0 perfect then useless, drafter 1 the reverse); the best fixed arm
    in hindsight is beaten by tracking the switches, and the learner must stay within its bound of it. Negative
    control: the same learner with its feedback wired to the wrong drafters fails the check."""
    steps, k_max = 2400, 6
    regime = (np.arange(steps) // 200) % 2 == 0
    gamma = np.stack([np.where(regime, 0.95, 0.1), np.where(regime, 0.1, 0.9), np.full(steps, 0.5)])
    costs = fixed_costs(3, [0.02, 0.02, 0.01])
    policy = hs.HedgeSpecSelector(3, objective="throughput")
    chosen = play(policy, gamma, costs, k_max)
    rates = arm_rates(gamma, policy.arms, costs, k_max)
    regret, best = realised_regret(chosen, rates)
    c_min = float(costs.arm_seconds(policy.arms).min())
    assert regret <= bound(len(rates), len(policy.arms), k_max, c_min, k_max)
    assert regret / best < 0.02, f"{regret / best:.3f} of the best fixed arm's throughput lost"
    # negative control: feedback wired to the wrong drafters (rows 0 and 1 swapped) must fail the same check
    crossed = play(hs.HedgeSpecSelector(3, objective="throughput"), gamma[[1, 0, 2]], costs, k_max)
    crossed_regret, _ = realised_regret(crossed, rates)
    assert crossed_regret / best > 0.05, "miswired feedback passed: the check is vacuous"


def test_length_follows_acceptance_and_cost():
    """A perfect drafter with flat verification drafts the longest K; a useless one is not drafted with at all."""
    k_max, steps = 12, 600
    flat = fixed_costs(2, [0.001, 0.001], verify=(1.0, 0.0))
    perfect = np.stack([np.ones(steps), np.zeros(steps)])
    policy = hs.HedgeSpecSelector(2, objective="throughput", choice="argmax")
    play(policy, perfect, flat, k_max)
    policy.choose()
    assert (policy._drafter, policy.draft_length()) == (0, k_max)
    useless = np.zeros((2, steps))
    pricey = fixed_costs(2, [0.3, 0.3], verify=(1.0, 0.05))
    policy = hs.HedgeSpecSelector(2, objective="throughput", choice="argmax")
    play(policy, useless, pricey, k_max)
    policy.choose()
    assert policy.draft_length() == 0  # the no-draft arm: a plain target step


def test_throughput_losses_and_awake_masks_by_hand():
    gamma = torch.tensor([[1.0, 1.0, 0.5, 1.0], [0.0, 1.0, 1.0, 1.0]])
    lens = (1, 2)
    seconds = torch.tensor([1.0, 1.5, 2.0, 1.5, 2.0])  # [no draft, (0,1), (0,2), (1,1), (1,2)]
    losses = throughput_losses(gamma, lens, seconds)
    assert losses.shape == (3, 5)
    # position 0: ÂL = 1 (no draft), 2 (d0 K=1), 3 (d0 K=2), 1 (d1 K=1), 1 (d1 K=2); scale = C_min / (K_max + 1)
    expected = 1 - torch.tensor([1 / 1.0, 2 / 1.5, 3 / 2.0, 1 / 1.5, 1 / 2.0]) * (1.0 / 3)
    torch.testing.assert_close(losses[0], expected)
    assert bool(((losses >= 0) & (losses <= 1)).all())
    unknown = gamma.clone()
    unknown[1, 2] = float("nan")  # drafter 1 not evaluated at position 2: its windows over it are unknown
    nan_losses = throughput_losses(unknown, lens, seconds)
    assert torch.isnan(nan_losses[1, 4]) and torch.isnan(nan_losses[2, 3]) and not torch.isnan(nan_losses[0]).any()
    awake = torch.tensor([[True, False, True, True], [True, True, True, True]])
    mask = throughput_awake(awake, lens)
    assert mask.tolist()[1] == [True, False, False, True, True]  # drafter 0 had no proposal at position 1


def test_draft_length_grid():
    assert draft_lengths(5) == (1, 2, 3, 4, 5)
    assert draft_lengths(16) == (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)
    assert draft_lengths(0) == ()


@pytest.fixture(scope="module")
def tiny_pool():
    target = tiny_model("llama", seed=8)
    return target, drafter_zoo(target, seed=8) + [hs.NGramDrafter()]


def test_cost_model_predicts_the_rounds_it_measured(tiny_pool):
    """After a generation, the cost model's estimate of each round's work (verify + draft + overhead, for the arm it
    played) is within 35 % of the measured work in the median, and its amortised evaluation cost within 35 % of
    the evaluation time actually spent per round."""
    target, drafters = tiny_pool
    prompt = torch.randint(2, 97, (1, 16), generator=torch.Generator().manual_seed(3))
    hs.generate(target, prompt, drafters=drafters, max_new_tokens=24, eos_token_id=None)  # warm caches and costs
    out = hs.generate(target, prompt, drafters=drafters, max_new_tokens=160, eos_token_id=None, seed=1)
    policy_costs = out.stats.costs
    model = CostModel(len(drafters))
    model.verify = {int(k): v / 1e3 for k, v in policy_costs["verify_ms"].items()}
    model.draft = [None if d is None else d / 1e3 for d in policy_costs["draft_ms_per_token"]]
    model.overhead = policy_costs["overhead_ms_per_round"] / 1e3
    errors = []
    for r in out.stats.records[4:]:
        measured = r.times["draft"] + r.times["verify"] + r.times["select"] + r.times["update"]
        predicted = model.verify_seconds(r.drafted + 1) + r.drafted * model.draft_seconds(r.chosen) + model.overhead
        errors.append(abs(predicted - measured) / measured)
    assert np.median(errors) < 0.35, f"median relative error {np.median(errors):.2f}"
    spent = sum(r.times["evaluate"] for r in out.stats.records) / out.stats.rounds
    assert abs(policy_costs["evaluate_ms_per_round"] / 1e3 - spent) / spent < 0.35


def test_objective_is_an_option_everywhere(tiny_pool):
    target, drafters = tiny_pool
    prompt = torch.tensor([[5, 6, 7, 8]])
    ref = target.generate(prompt, do_sample=False, max_new_tokens=16, eos_token_id=None)
    for kwargs in (dict(objective="mat"), dict(policy="hedgespec@objective=mat"),
                   dict(spec_config=hs.SpecConfig(objective="mat")), dict(policy="hedge@objective=throughput")):
        out = hs.generate(target, prompt, drafters=drafters, max_new_tokens=16, eos_token_id=None, **kwargs)
        assert torch.equal(out.sequences, ref)
    mat = hs.generate(target, prompt, drafters=drafters, max_new_tokens=16, eos_token_id=None, objective="mat")
    assert all(r.drafted == 5 or r.drafted == 0 for r in mat.stats.records[:-1])  # K fixed at 5 under mat
    seq = target.generate(prompt, custom_generate=hs.custom_generate, drafters=drafters, max_new_tokens=16,
                          eos_token_id=None, do_sample=False, objective="mat")
    assert torch.equal(seq, ref)
    with pytest.raises(ValueError, match="objective must be one of"):
        hs.SpecConfig(objective="speed")
    with pytest.raises(ValueError, match="timings='off'"):
        hs.SpecConfig(timings="off")
    assert hs.SpecConfig(objective="mat").draft_len == 5 and hs.SpecConfig().draft_len == 8
    assert hs.SpecConfig.from_kwargs(hs.SpecConfig(), objective="mat").eval_every == 1
