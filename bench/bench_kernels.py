"""CPU microbenchmarks of the kernels' torch path (``kernels/reference.py``), with pytest-benchmark.

    nice -n 10 python -m pytest bench/bench_kernels.py --benchmark-only -p no:cacheprovider \\
        --benchmark-json=bench/kernels_cpu.json

The Triton kernels are not timed here: on a CPU they run in Triton's interpreter, whose timings mean nothing. Their
GPU timings come from ``bench/gpu_kernels.py``. Every benchmark checks its result's shape so a broken path cannot
post a time.

Intra-op threads: ``HEDGESPEC_BENCH_THREADS`` (default 1). On a small shared machine two threads fighting over two
busy cores made the same call up to 20× slower from one round to the next; one thread gives stable numbers.
"""
from __future__ import annotations

import os

import pytest
import torch

from hedgespec_fast.kernels import reference

THREADS = int(os.environ.get("HEDGESPEC_BENCH_THREADS", "1"))
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _record_threads(benchmark):
    benchmark.extra_info["torch_threads"] = torch.get_num_threads()

ACCEPTANCE_SHAPES = [(4, 4, 32000), (8, 8, 32000), (3, 1, 128256)]


def _logits(n, m, vocab, dtype):
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(m, vocab, generator=gen)
    drafters = target + torch.randn(n, m, vocab, generator=gen)
    return target.to(dtype), drafters.to(dtype)


def _state(n):
    return (torch.zeros(n), torch.zeros(n), torch.zeros(n), torch.full((n,), 1.0 / n), torch.zeros(1, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["tv", "greedy", "topl"])
@pytest.mark.parametrize("shape", ACCEPTANCE_SHAPES, ids=lambda s: "N{}-m{}-V{}".format(*s))
def test_acceptance_probs_torch(benchmark, shape, mode, dtype):
    n, m, vocab = shape
    target, drafters = _logits(n, m, vocab, dtype)
    benchmark.group = f"acceptance N{n} m{m} V{vocab}"
    gamma = benchmark(reference.acceptance_probs, target, drafters, 0.8, mode, top_l=4)
    assert gamma.shape == (n, m)


@pytest.mark.parametrize("rounds", [1, 8])
@pytest.mark.parametrize("algo", reference.ALGOS)
def test_hedge_update_torch(benchmark, algo, rounds):
    n = 8
    losses = torch.rand(rounds, n, generator=torch.Generator().manual_seed(1))
    state = _state(n)
    benchmark.group = f"hedge update N{n} T{rounds}"
    choice = benchmark(reference.hedge_update, losses, *state, algo=algo)
    assert choice.shape == (1,)


def test_update_from_gamma_torch(benchmark):
    n, width, draft_len = 8, 12, 5
    gamma = torch.rand(n, width, generator=torch.Generator().manual_seed(2))
    state = _state(n)
    benchmark.group = "selection step"
    choice = benchmark(reference.hedge_update_from_gamma, gamma, *state, draft_len=draft_len)
    assert choice.shape == (1,)


@pytest.mark.parametrize("shape", [(4, 4, 32000), (8, 8, 32000)], ids=lambda s: "N{}-m{}-V{}".format(*s))
def test_whole_selection_step_torch(benchmark, shape):
    n, m, vocab = shape
    target, drafters = _logits(n, m, vocab, torch.bfloat16)
    history = torch.zeros(n, m + 4)
    state = _state(n)
    benchmark.group = "selection step"
    choice = benchmark(reference.acceptance_and_update, target, drafters, history, *state, draft_len=5,
                       u=torch.tensor([0.5]))
    assert choice.shape == (1,)


def test_expected_length_losses_torch(benchmark):
    gamma = torch.rand(8, 64, generator=torch.Generator().manual_seed(3))
    benchmark.group = "losses"
    losses = benchmark(reference.expected_length_losses, gamma, 5)
    assert losses.shape == (60, 8)
