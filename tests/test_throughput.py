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
from hedgespec_fast.kernels.reference import contextual_arms
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
    # a per-position charge e: rate ÂL / (C + e·ÂL), scale C_min / (K_max + 1) + e
    e = 0.25
    taxed = throughput_losses(gamma, lens, seconds, position_seconds=e)
    tokens = torch.tensor([1.0, 2.0, 3.0, 1.0, 1.0])
    torch.testing.assert_close(taxed[0], 1 - tokens / (seconds + e * tokens) * (1.0 / 3 + e))
    assert bool(((taxed >= 0) & (taxed <= 1)).all())
    # specialists of drafter 1's arms by whether drafter 0 (the sleeper) has a proposal: awake only in their context
    losses, arm_awake = contextual_arms(losses, mask, awake, [0, 3, 0, 3], [1, 1, 0, 0], [0])
    assert arm_awake.tolist() == [[True, True, False, False], [False, False, True, True], [True, True, False, False]]
    torch.testing.assert_close(losses, throughput_losses(gamma, lens, seconds)[:, [0, 3, 0, 3]])


def test_draft_length_grid():
    assert draft_lengths(5) == (1, 2, 3, 4, 5)
    assert draft_lengths(16) == (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)
    assert draft_lengths(0) == ()


@pytest.fixture(scope="module")
def tiny_pool():
    target = tiny_model("llama", seed=8)
    return target, drafter_zoo(target, seed=8) + [hs.NGramDrafter()]


def test_cost_model_recovers_the_costs_it_is_fed():
    """Rounds timed by a known cost process (verification that jumps from 1 to 2 tokens and is flat after, as on a
    CPU with a slow small-batch GEMM; per-token drafting; evaluation in bursts; ±10 % noise): the estimates come
    within 15 % of the truth, and a round's predicted seconds within 15 % of its true expectation. Synthetic clocks:
    tests never assert on wall time (bench/overhead.py reports the real prediction error)."""
    rng = np.random.default_rng(0)
    true_verify = {n: 0.40 if n == 1 else 1.3 + 0.01 * n for n in range(1, 18)}
    true_draft = [0.15, 0.05]
    costs = CostModel(2)
    for r in range(400):
        drafter, k = int(rng.integers(0, 2)), int(rng.choice([0, 3, 8, 16]))
        evaluated = r % 5 == 0
        noise = lambda: float(rng.uniform(0.9, 1.1))  # noqa: E731
        times = dict(select=0.002 * noise(), draft=k * true_draft[drafter] * noise(),
                     verify=true_verify[k + 1] * noise(), evaluate=(0.5 if evaluated else 0.001) * noise(),
                     update=0.003 * noise())
        costs.observe_round(drafter, k, k + 1, times, evaluated)
    for n in (1, 4, 9, 17):
        assert abs(costs.verify_seconds(n) - true_verify[n]) / true_verify[n] < 0.15
    for i in (0, 1):
        assert abs(costs.draft_seconds(i) - true_draft[i]) / true_draft[i] < 0.15
    assert abs(costs.evaluate - 0.1008) / 0.1008 < 0.3  # a burst of 0.5 s every 5 rounds: 0.1 s a round
    # evaluation and update are charged per emitted position: (0.1008 + 0.003) s a round over 7.75 positions a round
    per_position = (0.1008 + 0.003) / 7.75
    assert abs(costs.position_seconds() - per_position) / per_position < 0.3
    for drafter, k in ((0, 8), (1, 16), (1, 3)):
        truth = true_verify[k + 1] + k * true_draft[drafter] + 0.002 + (k + 1) * per_position
        assert abs(costs.round_seconds(drafter, k) - truth) / truth < 0.15
    assert costs.verify_seconds(12) > costs.verify_seconds(1) * 3  # an unseen size interpolates between seen ones


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


@pytest.mark.parametrize("objective", ["throughput", "mat"])
def test_deferred_choice_rides_in_the_packed_read(tiny_pool, objective):
    """With device state the next arm is computed by the update and read back with the round's one packed read, so
    a round costs one host sync. Forced here on CPU: every round after the first plays exactly the arm it received,
    and the output is unchanged."""
    target, drafters = tiny_pool
    prompt = torch.tensor([[5, 6, 7, 8, 5, 6, 9, 10, 11, 5, 6, 7]])
    ref = target.generate(prompt, do_sample=False, max_new_tokens=40, eos_token_id=None)
    selector = hs.HedgeSpecSelector(len(drafters), objective=objective)
    selector.defer_choice = True
    received, played = [], []
    receive, choose = selector.receive_choice, selector.choose

    def spy_receive(arm):
        received.append(arm)
        receive(arm)

    def spy_choose(awake=None):
        out = choose(awake)
        played.append((out, selector.draft_length()))
        return out

    selector.receive_choice, selector.choose = spy_receive, spy_choose
    # with the prompt warm start the learner has updated before round one (10 positions: complete windows of
    # K_max = 8), so no round falls to the cold-start rule and every round reads back an arm
    out = hs.generate(target, prompt, drafters=drafters, max_new_tokens=40, eos_token_id=None, policy=selector,
                      spec_config=hs.SpecConfig(prompt_warmup=10))
    assert torch.equal(out.sequences, ref)
    assert out.stats.prompt_positions == 10 and selector.informed
    assert len(received) == out.stats.rounds  # one arm read back per round, in the packed read
    for arm, (drafter, length) in zip(received, played[1:]):
        want = selector.arms[arm]
        assert drafter == (want[0] if want[1] != 0 else drafter)
        if objective == "throughput":
            assert length == want[1]
    assert out.stats.host_syncs == out.stats.rounds


@pytest.mark.parametrize("level", ["token", "chunk"])
def test_host_throughput_update_equals_the_torch_path(level):
    """The CPU learner's whole throughput update (NumPy) against the torch twins it stands for, NaN windows and
    sleeping arms included."""
    gen = torch.Generator().manual_seed(4)
    gamma = torch.rand(3, 11, generator=gen)
    gamma[1, 4] = gamma[1, 0] = float("nan")
    awake = torch.rand(3, 11, generator=gen) > 0.2
    lens = (1, 2, 4)
    seconds = torch.rand(1 + 3 * len(lens), generator=gen) + 0.5
    # specialists: drafter 2 sleeps; every base arm in context 1, the others' arms again in context 0
    base = [(0, 0)] + [(i, k) for i in range(3) for k in lens]
    keys = [(b, c) for c in (1, 0) for b, (i, k) in enumerate(base) if not (c == 0 and k > 0 and i == 2)]
    specialists = ([b for b, _ in keys], [c for _, c in keys], (2,))
    observed = [(0, 1 + 1 * len(lens), 2), (0, 2 + 1 * len(lens), 3), (3, 1, 1)]  # drafter 1 at window 0 (γ NaN there)
    for extra in (dict(), dict(position_seconds=0.05), dict(position_seconds=0.05, specialists=specialists),
                  dict(observed=observed), dict(observed=observed, specialists=specialists)):
        experts = len(keys) if "specialists" in extra else len(base)
        states = {}
        for backend in ("host", "torch"):
            state = [torch.zeros(experts), torch.zeros(experts), torch.zeros(experts),
                     torch.full((experts,), 1.0 / experts), torch.zeros(1, dtype=torch.long)]
            for _ in range(3):
                hs.kernels.throughput_update(gamma, awake, lens, seconds, *state, level=level, backend=backend,
                                             **extra)
            states[backend] = state
        for a, b in zip(states["host"], states["torch"]):
            torch.testing.assert_close(a.double(), b.double(), atol=1e-5, rtol=1e-4)


def test_cold_start_plays_the_cheap_arms_before_any_loss():
    """Before the first loss the throughput learner plays the best arm under a prior that is the same for every
    drafter (γ uniform: E[ÂL(K)] = H_{K+1}) at the measured costs: a free drafter at K_max where it has a proposal,
    a plain step where only an expensive drafter does; once a loss arrives NormalHedge chooses."""
    costs = fixed_costs(2, [0.8, 0.0], verify=(1.0, 0.02))
    policy = hs.HedgeSpecSelector(2, objective="throughput")
    policy.begin(2, 6, seed=0, costs=costs, sleepers=(1,))
    assert not policy.informed
    policy.choose([True, True])
    assert (policy._drafter, policy.draft_length()) == (1, 6)
    policy.choose([True, False])
    assert policy.draft_length() == 0
    gamma = torch.tensor([[0.9] * 8, [0.9] * 8])
    policy.update(RoundOutcome(1, 6, 6, 8, 6, gamma, awake=torch.ones(2, 8, dtype=torch.bool)))
    assert policy.informed


def test_cold_start_follows_the_chains_it_played():
    """Before the first loss the cold start's belief in each drafter's acceptance is updated by the chains that
    drafter drafted (Beta posterior): a free lookup whose K_max chains are rejected at once gives way to the model
    drafter, whose accepted chains keep it at K_max; one that rejects chains is drafted shorter. The negative
    control, ``cold_start="uniform"``, keeps the same prior for every drafter and plays the lookup again."""
    costs = fixed_costs(2, [0.05, 0.0], verify=(1.0, 0.02))
    awake = [True, True]
    arms = {}
    for cold_start in ("chains", "uniform"):
        policy = hs.HedgeSpecSelector(2, objective="throughput", cold_start=cold_start)
        policy.begin(2, 6, seed=0, costs=costs, sleepers=(1,))
        played = []
        for start, (chosen, accepted) in enumerate([(1, 0), (None, 6), (None, 6)] + [(None, 0)] * 6):
            policy.choose(awake)
            drafter, length = policy._drafter, policy.draft_length()
            played.append((drafter, length))
            assert chosen is None or drafter == chosen, (cold_start, played)
            # a deferred round: the chain's outcome, no γ yet
            policy.update(RoundOutcome(drafter, length, min(accepted, length), min(accepted, length) + 1, 6,
                                       start=10 * start))
        assert not policy.informed
        arms[cold_start] = played
    chains = arms["chains"]
    assert chains[:3] == [(1, 6), (0, 6), (0, 6)], chains
    assert chains[-1][0] == 0 and chains[-1][1] < 6, "rejected chains should shorten the model drafter's draft"
    assert arms["uniform"] == [(1, 6)] * 9, arms["uniform"]


def test_cold_start_option_is_checked():
    with pytest.raises(ValueError, match="cold_start"):
        hs.HedgeSpecSelector(2, objective="throughput", cold_start="optimistic")


def play_with_sleeper(policy, gamma, awake, costs, k_max, chunk=4):
    """:func:`play` with a drafter that sleeps: the round's awake list is the sleeper's state at its first position."""
    n = gamma.shape[0]
    policy.begin(n, k_max, seed=0, costs=costs, sleepers=(n - 1,))
    chosen = []
    for start in range(0, gamma.shape[1], chunk):
        policy.choose([True] * (n - 1) + [bool(awake[start])])
        chosen.append(policy.arms.index((policy._drafter, policy.draft_length())) if policy.draft_length() else 0)
        block = torch.tensor(gamma[:, start : start + chunk], dtype=torch.float32)
        mask = torch.ones(block.shape, dtype=torch.bool)
        mask[-1] = torch.tensor(awake[start : start + chunk])
        policy.update(RoundOutcome(policy._drafter, 0, 0, block.shape[1], k_max, block, awake=mask))
    return chosen


def test_specialists_learn_the_best_arm_where_the_lookup_sleeps():
    """Text that repeats is easy for every drafter: drafter 0 accepts 0.95 where the lookup (drafter 2, free) has a
    proposal and 0.05 where it has none; drafter 1 accepts 0.5 everywhere. Where the lookup sleeps the best arm is
    drafter 1's, but drafter 0's average over all positions is higher, so one estimate per arm plays drafter 0
    there (the negative control, ``contexts=False``); the context specialists play drafter 1."""
    steps, k_max = 2400, 6
    awake = ((np.arange(steps) // 24) % 2 == 0)
    gamma = np.stack([np.where(awake, 0.95, 0.05), np.full(steps, 0.5), np.where(awake, 0.95, 0.0)])
    costs = fixed_costs(3, [0.02, 0.02, 0.0], verify=(1.0, 0.02))
    rates = {}
    for contexts in (True, False):
        policy = hs.HedgeSpecSelector(3, objective="throughput", contexts=contexts)
        chosen = play_with_sleeper(policy, gamma, awake, costs, k_max)
        arm_rate = arm_rates(gamma, policy.arms, costs, k_max)
        asleep_rounds = [r for r in range(len(chosen)) if not awake[4 * r] and 4 * r < len(arm_rate)]
        rates[contexts] = np.mean([arm_rate[4 * r, chosen[r]] for r in asleep_rounds])
        best = max(arm_rate[[4 * r for r in asleep_rounds], e].mean() for e in range(len(policy.arms))
                   if policy.arms[e][0] != 2 or policy.arms[e][1] == 0)
    assert rates[True] >= 0.9 * best, f"specialists reach {rates[True] / best:.2f} of the best arm where it sleeps"
    assert rates[False] <= 0.8 * best, "one estimate per arm did as well: the check cannot tell them apart"


def test_a_plain_step_asks_no_drafter(tiny_pool):
    """A round that drafts nothing (the no-draft arm, or K = 0) runs the target alone: a lagging drafter is not made
    to catch up for nothing (its prefill is all it runs)."""
    target, drafters = tiny_pool
    calls = []
    hook = drafters[0].register_forward_hook(lambda *args: calls.append(1))
    try:
        prompt = torch.tensor([[5, 6, 7, 8]])
        out = hs.generate(target, prompt, drafters=drafters, max_new_tokens=12, policy="fixed:0", draft_len=0,
                          eos_token_id=None)
    finally:
        hook.remove()
    assert torch.equal(out.sequences, target.generate(prompt, do_sample=False, max_new_tokens=12, eos_token_id=None))
    assert out.stats.rounds == 12 and len(calls) <= 3  # the prompt (and its last two tokens, timed one at a time)


def test_throughput_learner_with_no_drafting_arm(tiny_pool):
    """draft_len = 0 under the throughput objective leaves only the no-draft arm: plain steps, the target's output
    (found by the fuzz test: the per-drafter weights were summed over an empty, float-typed index)."""
    target, drafters = tiny_pool
    prompt = torch.tensor([[5, 6, 7, 8]])
    out = hs.generate(target, prompt, drafters=drafters, max_new_tokens=6, draft_len=0, eos_token_id=None)
    assert torch.equal(out.sequences, target.generate(prompt, do_sample=False, max_new_tokens=6, eos_token_id=None))
    assert out.stats.no_draft_rounds == out.stats.rounds == 6 and out.stats.final_weights is not None


def test_observed_chain_fills_only_what_gamma_leaves_unknown():
    """A played chain's outcome scores its arms (i, K ≤ k) at its first window where γ is NaN, and nowhere else: a
    window γ covers keeps γ's expectation; arms longer than the chain stay unknown."""
    lens = (1, 2, 4)
    gamma = torch.full((2, 6), float("nan"))
    gamma[1] = 0.5
    seconds = torch.tensor([1.0] + [1.0 + 0.1 * k for _ in range(2) for k in lens])
    arm = {(i, k): 1 + i * len(lens) + j for i in range(2) for j, k in enumerate(lens)}
    observed = [(0, arm[(0, 1)], 2), (0, arm[(0, 2)], 2), (1, arm[(1, 1)], 1)]
    plain = throughput_losses(gamma, lens, seconds)
    filled = throughput_losses(gamma, lens, seconds, observed=observed)
    assert plain[0, arm[(0, 1)]].isnan() and not filled[0, arm[(0, 1)]].isnan()
    assert filled[0, arm[(0, 1)]] < filled[0, arm[(0, 2)]]  # 2 tokens a round: cheaper for the shorter chain
    assert filled[0, arm[(0, 4)]].isnan()  # not drafted that far: unknown
    assert torch.equal(filled[1, arm[(1, 1)]], plain[1, arm[(1, 1)]])  # γ known there: its expectation stays
    assert filled[1:, arm[(0, 1)]].isnan().all()  # other windows of the played drafter: unknown


def test_played_arm_learns_where_evaluation_never_comes():
    """No drafter is ever evaluated (γ NaN everywhere, as in the rounds the evaluation schedule skips): the only
    feedback is each played chain's own outcome. A model drafter whose chains are always rejected loses its weight
    to the plain step; without the observations (``start=None``, the negative control) nothing is learned and it
    keeps being played."""
    costs = fixed_costs(1, [0.3], verify=(1.0, 0.02))
    share = {}
    for observe in (True, False):
        policy = hs.HedgeSpecSelector(1, objective="throughput")
        policy.begin(1, 4, seed=0, costs=costs)
        policy.regret.fill_(0.5)  # every arm starts with the same positive regret (as after an early evaluation)
        policy.weights_.fill_(1.0 / policy.regret.numel())
        policy._informed = True
        position, drafted_rounds = 0, 0
        for r in range(300):
            policy.choose()
            k = policy.draft_length()
            emitted = 1  # rejected at once (or a plain step)
            drafted_rounds += int(r >= 200 and k > 0)
            policy.update(RoundOutcome(0, k, 0, emitted, 4, None, skipped=True,
                                       start=position if observe else None, gamma_start=position))
            position += emitted
        share[observe] = drafted_rounds / 100
    assert share[True] < 0.1, f"a drafter that is always rejected was still played in {share[True]:.0%} of rounds"
    assert share[False] > 0.5, "without the observations the drafter lost its weight anyway: the check is vacuous"


def test_cost_model_charges_what_a_drafter_costs_beyond_its_tokens():
    """Rounds of drafter 0 take 0.3 s more than its clean per-token cost and the verification predict (a catch-up
    after rounds it sat out, a slower verification after it): its arms are charged that excess; drafter 1's are
    not."""
    costs = CostModel(2)
    for r in range(200):
        drafter, k = r % 2, 1 + r % 4
        lag = drafter == 0 and r % 4 == 0
        times = dict(select=0.01, draft=0.1 * k + (0.6 if lag else 0.0), verify=1.0 + 0.01 * k,
                     evaluate=0.0, update=0.0)
        costs.observe_round(drafter, k, k + 1, times, False, clean_draft=not lag)
        costs.observe_round(drafter, 0, 1, dict(select=0.01, draft=0.0, verify=1.0, evaluate=0.0, update=0.0),
                            False)
    seconds = costs.arm_seconds([(0, 0), (0, 2), (1, 2)]).tolist()
    assert abs(costs.excess[0] - 0.3) < 0.08 and abs(costs.excess[1]) < 0.03
    assert abs((seconds[1] - seconds[2]) - 0.3) < 0.08


def test_evaluation_leaves_out_weightless_drafters_in_turn():
    """Under the throughput objective an evaluation scores the free drafters, those whose arms carry weight, and one
    weightless drafter in turn (so every drafter is scored now and then)."""
    costs = fixed_costs(4, [0.1, 0.1, 0.1, 0.0])
    policy = hs.HedgeSpecSelector(4, objective="throughput")
    policy.begin(4, 4, seed=0, costs=costs, sleepers=(3,))
    free = [False, False, False, True]
    assert policy.evaluation_targets(free) is None  # before any loss: everything
    policy._informed = True
    weights = torch.zeros_like(policy.weights_)
    weights[[e for e, (i, k) in enumerate(policy.arms) if i == 0 and k > 0]] = 1.0
    policy.weights_.copy_(weights / weights.sum())
    seen = set()
    for _ in range(4):
        targets = policy.evaluation_targets(free)
        assert targets[0] and targets[3] and sum(targets[1:3]) == 1
        seen |= {i for i in (1, 2) if targets[i]}
    assert seen == {1, 2}
    assert hs.HedgeSpecSelector(4, objective="mat").evaluation_targets(free) is None


def test_host_mirror_follows_the_buffers():
    """The learner's NumPy mirror re-reads its buffers when they change behind it (load_state_dict), and writes
    every update back into them."""
    costs = fixed_costs(2, [0.1, 0.0])
    policy = hs.HedgeSpecSelector(2, objective="throughput", choice="argmax")
    policy.begin(2, 4, seed=0, costs=costs)
    gamma = torch.tensor([[0.9] * 6, [0.1] * 6])
    policy.update(RoundOutcome(0, 4, 4, 6, 4, gamma))
    state = {k: v.clone() for k, v in policy.state_dict().items()}
    assert state["step"].item() == 3 and state["regret"].abs().sum() > 0  # 6 positions, K_max 4: 3 windows
    favourite = policy.arms.index((1, 1))
    forced = torch.zeros_like(policy.weights_)
    forced[favourite] = 1.0
    regret = torch.full_like(policy.regret, -1.0)
    regret[favourite] = 1.0
    policy.load_state_dict({**state, "weights_": forced, "regret": regret})
    policy.choose()
    assert (policy._drafter, policy.draft_length()) == (1, 1)


def test_plain_steps_are_scored_in_batches_without_losing_positions(monkeypatch):
    """Plain steps queue their γ (one position each) and are scored together once four positions wait, or at the next
    drafting round: every window is still scored exactly once (the same learner rounds in the end), in fewer
    updates. The control scores every round at once (a queue of one position)."""
    import hedgespec_fast.learners.full as full

    costs = fixed_costs(2, [0.1, 0.0])
    result, default = {}, full.QUEUED_POSITIONS
    for queue in (default, 1):
        monkeypatch.setattr(full, "QUEUED_POSITIONS", queue)
        gen = torch.Generator().manual_seed(0)
        policy = hs.HedgeSpecSelector(2, objective="throughput")
        policy.begin(2, 4, seed=0, costs=costs)
        position, updates = 0, 0
        for r in range(40):
            drafted = 2 if r % 5 == 4 else 0  # four plain steps, then a drafting round (the last round drafts)
            emitted = 3 if drafted else 1
            before = int(policy.step)
            policy.update(RoundOutcome(0, drafted, drafted, emitted, 4, torch.rand(2, emitted, generator=gen),
                                       start=position, gamma_start=position))
            updates += int(int(policy.step) != before)
            position += emitted
        result[queue] = (int(policy.step), updates)
    batched, single = result[default], result[1]
    assert batched[0] == single[0] == position - 4 + 1  # every window scored once
    assert batched[1] < single[1]


@pytest.mark.parametrize("algo", ["normalhedge", "adanormalhedge", "hedge"])
def test_host_rounds_with_few_awake_experts_equal_the_torch_path(algo):
    """Rows in which one expert is awake skip the host solve (nobody gains regret); rows with two or more must not:
    the NumPy learner equals the torch twin row by row on a mix of one-, two- and all-awake rows."""
    gen = torch.Generator().manual_seed(7)
    experts, steps = 6, 12
    losses = torch.rand(steps, experts, generator=gen)
    awake = torch.ones(steps, experts, dtype=torch.bool)
    for t in range(steps):  # all awake (the weights then follow the regrets, as a learner's always do), one, two
        if t % 3:
            awake[t] = False
            awake[t, torch.randperm(experts, generator=gen)[: t % 3]] = True
    states = {}
    for backend in ("host", "torch"):
        state = [torch.rand(experts, generator=torch.Generator().manual_seed(1)) - 0.3, torch.zeros(experts),
                 torch.zeros(experts), torch.full((experts,), 1.0 / experts), torch.zeros(1, dtype=torch.long)]
        hs.kernels.hedge_update(losses, *state, algo=algo, backend=backend, awake=awake)
        states[backend] = state
    for a, b in zip(states["host"], states["torch"]):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-5, rtol=1e-4)
