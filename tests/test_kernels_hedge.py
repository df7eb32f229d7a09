"""hedge_update and hedge_update_from_gamma: Triton (interpreter on CPU, native on CUDA) against reference.py and a
float64 oracle; the reference's NormalHedge scale and one-round updates against hand-computed values."""
from __future__ import annotations

import math

import kernel_utils as ku  # first: switches Triton's interpreter on when there is no CUDA
import numpy as np
import pytest
import torch
from kernel_utils import DEVICE, ON_GPU, assert_close, poisoned

from hedgespec_fast import kernels
from hedgespec_fast.kernels import hedge, reference

STATE_NAMES = ("regret", "abs_regret", "cum_loss", "weights", "step")


def _compare_states(got, want, atol, rtol, what):
    for name, g, w in zip(STATE_NAMES, got, want):
        assert_close(g, w, atol, rtol, f"{what} {name}")


def _check_choice(choice, weights, u, reference_choice=None):
    """The choice is argmax (first index) / the inverse-CDF sample of the kernel's own weights; it matches the
    reference's unless the weights put the decision within rounding of a tie."""
    w = weights.double().cpu().numpy()
    c = int(choice)
    assert 0 <= c < len(w)
    if u is None:
        assert w[c] >= w.max() - 1e-6
        near_tie = np.sort(w)[-2] > w.max() - 1e-5 if len(w) > 1 else False
    else:
        cdf = np.cumsum(w)
        x = float(u) * cdf[-1]
        assert (c == 0 or cdf[c - 1] <= x + 1e-6) and (x < cdf[c] + 1e-6 or c == len(w) - 1)
        near_tie = np.abs(cdf - x).min() < 1e-5
    if reference_choice is not None and not near_tie:
        assert c == int(reference_choice)


@pytest.mark.parametrize("sample", [False, True], ids=["argmax", "sample"])
@pytest.mark.parametrize("rounds", [0, 1, 7])
@pytest.mark.parametrize("n", [1, 3, 16])
@pytest.mark.parametrize("algo", reference.ALGOS)
def test_hedge_update_matches_reference_and_float64(algo, n, rounds, sample):
    gen = torch.Generator().manual_seed(n * 10 + rounds)
    losses = torch.rand(rounds, n, generator=gen).to(DEVICE)
    state = ku.learner_state(n, seed=n + rounds)
    u = torch.tensor([0.37], device=DEVICE) if sample else None
    ref_state, start = ku.clone_state(state), ku.clone_state(state)
    choice = hedge.hedge_update(losses, *state, algo=algo, u=u, out=poisoned((1,), torch.int64))
    ref_choice = reference.hedge_update(losses, *ref_state, algo=algo, u=u)
    _compare_states(state, ref_state, 1e-5, 1e-4, "triton vs reference")
    R, C, L, w, t, oracle_choice = ku.oracle_hedge(losses, *start, algo=algo, u=u)
    _compare_states(state, (R, C, L, w, [t]), 1e-4, 1e-3, "triton vs float64")
    _compare_states(ref_state, (R, C, L, w, [t]), 1e-4, 1e-3, "reference vs float64")
    assert int(state[4]) == int(start[4]) + rounds
    _check_choice(choice, state[3], u, ref_choice)
    _check_choice(choice, torch.tensor(w), u, oracle_choice)


def test_hedge_with_a_fixed_rate_and_ada_with_a_prior():
    n = 5
    losses = torch.rand(4, n, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    prior = torch.tensor([0.5, 0.1, 0.1, 0.2, 0.1], device=DEVICE)
    for algo, kwargs in (("hedge", dict(eta=0.7)), ("adanormalhedge", dict(prior=prior))):
        state = ku.learner_state(n, seed=4)
        ref_state, start = ku.clone_state(state), ku.clone_state(state)
        hedge.hedge_update(losses, *state, algo=algo, **kwargs)
        reference.hedge_update(losses, *ref_state, algo=algo, **kwargs)
        _compare_states(state, ref_state, 1e-5, 1e-4, algo)
        R, C, L, w, t, _ = ku.oracle_hedge(losses, *start, algo=algo, **kwargs)
        assert_close(state[3], w, 1e-4, 1e-3, f"{algo} vs float64")
        plain = ku.clone_state(start)
        hedge.hedge_update(losses, *plain, algo=algo)
        assert (plain[3] - state[3]).abs().max() > 1e-3, f"{algo}: the option must change the weights"


@pytest.mark.parametrize("level", reference.LEVELS)
@pytest.mark.parametrize("loss", reference.LOSSES)
@pytest.mark.parametrize("width,draft_len", [(9, 3), (2, 3), (4, 1)])
def test_update_from_gamma_matches_reference(loss, level, width, draft_len):
    n = 4
    gamma = torch.rand(n, width + 2, generator=torch.Generator().manual_seed(width))[:, 1:-1].to(DEVICE)  # strided
    state = ku.learner_state(n, seed=width)
    u = torch.tensor([0.8], device=DEVICE)
    ref_state, start = ku.clone_state(state), ku.clone_state(state)
    choice = hedge.hedge_update_from_gamma(gamma, *state, draft_len=draft_len, loss=loss, level=level, u=u,
                                           out=poisoned((1,), torch.int64))
    ref_choice = reference.hedge_update_from_gamma(gamma, *ref_state, draft_len=draft_len, loss=loss, level=level, u=u)
    _compare_states(state, ref_state, 1e-5, 1e-4, f"{loss}/{level}")
    _check_choice(choice, state[3], u, ref_choice)
    rows = reference.gamma_losses(gamma.double(), loss, draft_len)  # the losses again, in float64
    if level == "chunk" and rows.shape[0] > 1:
        rows = rows.mean(dim=0, keepdim=True)
    R, C, L, w, t, _ = ku.oracle_hedge(rows, *start, algo="normalhedge", u=u)
    _compare_states(state, (R, C, L, w, [t]), 1e-4, 1e-3, "vs float64")


def test_expected_length_losses_by_hand():
    gamma = torch.tensor([[0.5, 0.5, 1.0, 0.0]])
    # K = 2: window s=0: 1 + 0.5 + 0.25 = 1.75; s=1: 1 + 0.5 + 0.5 = 2; s=2: 1 + 1 + 0 = 2 → loss 1 − ÂL / 3
    want = torch.tensor([[1 - 1.75 / 3], [1 - 2 / 3], [1 - 2 / 3]])
    assert_close(reference.expected_length_losses(gamma, 2), want, 1e-7, 1e-7, "ÂL")
    assert reference.expected_length_losses(gamma, 5).shape == (0, 1)
    assert_close(reference.gamma_losses(gamma, "acceptance"), 1 - gamma.t(), 0, 0, "1 − γ")


def test_normalhedge_scale_by_hand_and_against_brent():
    for r in (0.3, 2.0, 25.0):  # N = 2, R = (r, 0): (e^{r²/2c} + 1)/2 = e  ⇒  c = r² / (2 ln(2e − 1))
        c = reference._normalhedge_scale(torch.tensor([r, 0.0]))
        assert_close(c, r * r / (2 * math.log(2 * math.e - 1)), 0, 2e-5, f"c for r={r}")
    gen = torch.Generator().manual_seed(5)
    for n in (1, 3, 16, 64):
        regret = torch.randn(n, generator=gen) * 3
        regret[0] = abs(regret[0]) + 0.1  # at least one positive regret
        c = float(reference._normalhedge_scale(regret))
        a = regret.double().clamp(min=0).square() / 2
        assert_close(torch.exp(a / c).mean(), math.e, 0, 5e-5, f"equation at N={n}")
        assert_close(c, ku.normalhedge_scale64(regret.numpy()), 0, 2e-5, f"Brent at N={n}")
    assert float(reference._normalhedge_scale(torch.tensor([-1.0, 0.0, -3.0]))) == 0.0


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_one_round_by_hand(backend):
    """From the uniform start, losses (0, 1): ℓ̂ = ½, R = (½, −½), C = (½, ½), L = (0, 1)."""
    losses = torch.tensor([[0.0, 1.0]], device=DEVICE)
    eta = 0.9
    hedge_w = torch.tensor([1.0, math.exp(-eta)]) / (1 + math.exp(-eta))
    phi = lambda r: math.exp(max(r, 0.0) ** 2 / (3 * 1.5))  # noqa: E731  Φ(R, C+1) with C = ½
    ada = torch.tensor([phi(1.5) - phi(-0.5), phi(0.5) - phi(-1.5)])
    cases = {"hedge": (dict(eta=eta), hedge_w), "normalhedge": ({}, torch.tensor([1.0, 0.0])),
             "adanormalhedge": ({}, ada / ada.sum())}
    for algo, (kwargs, want) in cases.items():
        state = ku.learner_state(2, warm=False)
        fn = kernels.hedge_update if backend == "torch" else hedge.hedge_update
        choice = fn(losses, *state, algo=algo, **kwargs, **({"backend": "torch"} if backend == "torch" else {}))
        assert_close(state[3], want, 1e-6, 1e-5, f"{algo} weights")
        assert_close(state[0], [0.5, -0.5], 1e-7, 0, "regret")
        assert_close(state[1], [0.5, 0.5], 1e-7, 0, "|regret|")
        assert int(choice) == 0 and int(state[4]) == 1


def test_inverse_cdf_sampling_follows_the_weights():
    weights = torch.tensor([0.1, 0.0, 0.45, 0.05, 0.4], device=DEVICE)
    state = (torch.zeros(5, device=DEVICE),) * 3 + (weights, torch.zeros(1, dtype=torch.int64, device=DEVICE))
    counts = np.zeros(5)
    grid = 40
    for k in range(grid):  # u on a regular grid: each index is picked in proportion to its weight
        u = torch.tensor([(k + 0.5) / grid], device=DEVICE)
        choice = hedge.hedge_update(torch.zeros(0, 5, device=DEVICE), *state, u=u)
        assert int(choice) == int(reference.choose(weights, u))
        counts[int(choice)] += 1
    assert counts.tolist() == [4, 0, 18, 2, 16]
    assert int(hedge.hedge_update(torch.zeros(0, 5, device=DEVICE), *state)) == 2  # argmax


def test_choice_is_written_and_wrong_learners_are_told_apart():
    n = 6
    losses = torch.rand(5, n, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    out = poisoned((1,), torch.int64)
    normal = ku.learner_state(n, seed=7)
    returned = hedge.hedge_update(losses, *normal, algo="normalhedge", out=out)
    assert returned is out and int(out) >= 0
    plain = ku.learner_state(n, seed=7)
    reference.hedge_update(losses, *plain, algo="hedge")
    assert (normal[3] - plain[3]).abs().max() > 1e-2, "a kernel running the wrong learner would pass this test"


def test_invalid_states_are_refused():
    state = list(ku.learner_state(3))
    with pytest.raises(ValueError, match="regret"):
        hedge.hedge_update(torch.zeros(1, 3, device=DEVICE), state[0].double(), *state[1:])
    with pytest.raises(ValueError, match="step"):
        hedge.hedge_update(torch.zeros(1, 3, device=DEVICE), *state[:4], state[4].int())
    with pytest.raises(ValueError, match="losses"):
        hedge.hedge_update(torch.zeros(1, 4, device=DEVICE), *state)
    with pytest.raises(ValueError, match="learner"):
        hedge.hedge_update(torch.zeros(1, 3, device=DEVICE), *state, algo="exp3")
    with pytest.raises(ValueError, match="drafters"):
        big = ku.learner_state(hedge.MAX_DRAFTERS + 1)
        hedge.hedge_update(torch.zeros(1, hedge.MAX_DRAFTERS + 1, device=DEVICE), *big)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
def test_cuda_graph_replay_of_the_update():
    n = 8
    gamma = torch.rand(n, 12, device=DEVICE)
    state = ku.learner_state(n, seed=8)
    u = torch.tensor([0.5], device=DEVICE)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        hedge.hedge_update_from_gamma(gamma, *ku.clone_state(state), draft_len=5, u=u)  # warm-up (compile)
    torch.cuda.current_stream().wait_stream(stream)
    eager, live, start = ku.clone_state(state), ku.clone_state(state), ku.clone_state(state)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        choice = hedge.hedge_update_from_gamma(gamma, *live, draft_len=5, u=u)
    for _ in range(3):
        for x, s in zip(live, start):
            x.copy_(s)
        graph.replay()
    eager_choice = hedge.hedge_update_from_gamma(gamma, *eager, draft_len=5, u=u)
    torch.cuda.synchronize()
    _compare_states(live, eager, 0, 0, "graph")
    assert int(choice) == int(eager_choice)


@pytest.mark.parametrize("sample", [False, True], ids=["argmax", "sample"])
@pytest.mark.parametrize("rounds", [0, 1, 9])
@pytest.mark.parametrize("n", [1, 4, 57])
@pytest.mark.parametrize("algo", reference.ALGOS)
def test_host_update_matches_reference_and_float64(algo, n, rounds, sample):
    """The CPU learner path (NumPy, backend "host", what "auto" takes on CPU) against the torch twin and the float64
    oracle, from a warm state; its NormalHedge scale solves the same equation to full precision."""
    from hedgespec_fast.kernels import host

    gen = torch.Generator().manual_seed(n * 7 + rounds)
    losses = torch.rand(rounds, n, generator=gen)
    state = ku.learner_state(n, seed=n + rounds, device="cpu")
    u = torch.tensor([0.61]) if sample else None
    ref_state, start = ku.clone_state(state), ku.clone_state(state)
    choice = kernels.hedge_update(losses, *state, algo=algo, u=u, out=poisoned((1,), torch.int64, device="cpu"))
    ref_choice = reference.hedge_update(losses, *ref_state, algo=algo, u=u)
    _compare_states(state, ref_state, 1e-5, 1e-4, "host vs reference")
    R, C, L, w, t, oracle_choice = ku.oracle_hedge(losses, *start, algo=algo, u=u)
    _compare_states(state, (R, C, L, w, [t]), 1e-5, 1e-5, "host vs float64")
    _check_choice(choice, state[3], u, ref_choice)
    _check_choice(choice, torch.tensor(w), u, oracle_choice)
    regret = torch.randn(n, dtype=torch.float64) * 3
    c = host.normalhedge_scale(regret.numpy())
    if (regret > 0).any():
        lhs = torch.exp(regret.clamp(min=0).square() / (2 * c)).mean()
        assert abs(float(lhs) - math.e) < 1e-9, "the scale must solve mean exp([R]+^2 / 2c) = e"
    else:
        assert c == 0.0


def test_auto_backend_takes_the_host_path_on_cpu_only():
    assert kernels.resolve_backend("auto", torch.device("cpu"), learner=True) == "host"
    assert kernels.resolve_backend("auto", torch.device("cpu")) == "torch"
    assert kernels.resolve_backend("host", torch.device("cpu")) == "torch"  # γ has no NumPy path
    with pytest.raises(RuntimeError, match="host"):
        kernels.resolve_backend("host", torch.device("meta"), learner=True)
