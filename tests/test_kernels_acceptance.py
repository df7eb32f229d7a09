"""acceptance_probs and acceptance_and_update: Triton (interpreter on CPU, native on CUDA) against reference.py and a
float64 oracle, outputs poisoned with NaN; the reference itself against hand-computed cases."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import kernel_utils as ku  # first: switches Triton's interpreter on when there is no CUDA
import pytest
import torch
from kernel_utils import DEVICE, DTYPE_TOLERANCES, ON_GPU, assert_close, poisoned

from hedgespec_fast import kernels
from hedgespec_fast.kernels import acceptance, reference

DTYPE_IDS = [str(d).replace("torch.", "") for d, _, _ in DTYPE_TOLERANCES]

# (N, m, V, block_v): odd shapes; a small block_v splits even small vocabularies into several chunks (the last one
# ragged), so the cross-chunk merges and the ticket schedule run in the interpreter too.
CPU_SHAPES = [(1, 1, 1, None), (3, 9, 111, 64), (16, 1, 257, 64), (3, 2, 1000, 128)]


def _semaphores_clear() -> bool:
    return all(int(s.abs().sum()) == 0 for s in acceptance._SEMAPHORES.values())


def _check_against_reference_and_oracle(target, drafters, mode, atol, rtol, temperature=0.7, top_l=3, **kw):
    n, m = len(drafters), target.shape[0]
    out = poisoned((n, m))
    got = acceptance.acceptance_probs(target, drafters, temperature, mode, top_l=top_l, out=out, **kw)
    assert got is out
    expected = reference.acceptance_probs(target, drafters, temperature, mode, top_l=top_l)
    oracle = ku.oracle_acceptance(target, drafters, temperature, mode, top_l=top_l)
    exact = mode in ("greedy", "topl_greedy")  # 0/1 results: no tolerance
    assert_close(got, expected, 0 if exact else atol, 0 if exact else rtol, f"{mode} triton vs reference")
    assert_close(got, oracle, 0 if exact else 4 * atol, 0 if exact else rtol, f"{mode} triton vs float64")
    assert_close(expected, oracle, 0 if exact else 4 * atol, 0 if exact else rtol, f"{mode} reference vs float64")
    assert _semaphores_clear(), "the kernel must leave its counters zeroed for the next launch"
    return got


@pytest.mark.parametrize("dtype,atol,rtol", DTYPE_TOLERANCES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: "N{}-m{}-V{}-b{}".format(*s))
@pytest.mark.parametrize("mode", reference.MODES)
def test_triton_matches_reference_and_float64(mode, shape, dtype, atol, rtol):
    n, m, vocab, block_v = shape
    target, drafters = ku.make_logits(n, m, vocab, dtype, seed=vocab + n)
    gamma = _check_against_reference_and_oracle(target, drafters, mode, atol, rtol, block_v=block_v)
    assert ((gamma >= 0) & (gamma <= 1 + 1e-6)).all()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["tv", "topl"])
def test_triton_matches_reference_at_32000(mode):
    target, drafters = ku.make_logits(3, 2, 32000, torch.bfloat16, seed=1)
    _check_against_reference_and_oracle(target, drafters, mode, 2e-6, 1e-5)


def test_temperature_is_applied_in_kernel():
    target, drafters = ku.make_logits(3, 2, 111, torch.bfloat16, seed=2)
    got = acceptance.acceptance_probs(target, drafters, temperature=0.5, block_v=32)
    assert_close(got, reference.acceptance_probs(target, drafters, temperature=0.5), 2e-6, 1e-5, "T=0.5")
    at_one = reference.acceptance_probs(target, drafters, temperature=1.0)
    assert (got - at_one).abs().max() > 1e-2, "a kernel that ignored the temperature would pass this test"


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.8), (20, 0.9)])
@pytest.mark.parametrize("mode", ["tv", "topl"])
def test_top_k_top_p_are_exact_and_never_ignored(mode, top_k, top_p):
    target, drafters = ku.make_logits(3, 2, 300, torch.float32, seed=3)  # fp32: no ties at the top-p cut
    got = acceptance.acceptance_probs(target, drafters, 0.9, mode, top_k=top_k, top_p=top_p, top_l=2,
                                      out=poisoned((3, 2)), block_v=64)
    expected = reference.acceptance_probs(target, drafters, 0.9, mode, top_k=top_k, top_p=top_p, top_l=2)
    oracle = ku.oracle_acceptance(target, drafters, 0.9, mode, top_k=top_k, top_p=top_p, top_l=2)
    assert_close(got, expected, 2e-6, 1e-5, "warped vs reference")
    assert_close(got, oracle, 1e-5, 1e-5, "warped vs float64")
    unwarped = reference.acceptance_probs(target, drafters, 0.9, mode, top_l=2)
    assert (got - unwarped).abs().max() > 1e-3, "top-k / top-p must change γ here"


def test_ties_go_to_the_first_index():
    """argmax ties → first index (torch.argmax); TopL ties → lowest indices, also across vocabulary chunks."""
    vocab, block_v = 100, 16
    target = torch.zeros(1, vocab)
    target[0, [20, 70]] = 5.0  # tied maximum in two chunks: argmax p = 20
    target[0, 3] = 1.0
    q = torch.zeros(5, 1, vocab)
    q[0, 0, [20, 70]] = 4.0  # argmax 20 → greedy 1
    q[1, 0, [70, 90]] = 4.0  # argmax 70 → greedy 0
    q[2, 0, [3, 50, 20]] = 4.0  # argmax 3; Top2 = {3, 20}: contains 20
    q[3, 0, [3, 50, 70]] = 4.0  # Top2 = {3, 50}: 70 is tied but later
    q[4, 0, :] = -3.0  # all equal: Top2 = {0, 1}
    p = torch.softmax(target[0], 0)
    hand = {
        "greedy": [1, 0, 0, 0, 0],  # drafter 2's first maximum is 3
        "topl_greedy": [1, 0, 1, 0, 0],
        "topl": [p[20] + p[70], p[70] + p[90], p[3] + p[20], p[3] + p[50], p[0] + p[1]],
    }
    for dtype in (torch.float32, torch.bfloat16):
        for mode, values in hand.items():
            want = torch.tensor([[float(v)] for v in values])
            for backend_out in (reference.acceptance_probs(target.to(dtype), q.to(dtype), 1.0, mode, top_l=2),
                                acceptance.acceptance_probs(target.to(dtype).to(DEVICE), q.to(dtype).to(DEVICE), 1.0,
                                                            mode, top_l=2, out=poisoned((5, 1)), block_v=block_v)):
                assert_close(backend_out, want, 1e-6, 1e-6, f"{mode} {dtype}")


@pytest.mark.parametrize("schedule", acceptance.SCHEDULES)
def test_a_drafter_with_nan_logits_has_no_mass(schedule):
    """tv: a NaN anywhere in a drafter's row makes no distribution, γ = 0 there on every backend (tl.minimum alone
    returns p against NaN: γ = 1, a broken drafter the learner would prefer); the other rows are untouched."""
    gen = torch.Generator().manual_seed(3)
    target = torch.randn(3, 100, generator=gen)
    q = torch.randn(3, 3, 100, generator=gen)
    q[0] = float("nan")  # broken everywhere
    q[1, 1, 77] = float("nan")  # one NaN, in the last chunk, at one position
    clean = reference.acceptance_probs(target, q[2:], 1.0, "tv")
    for got in (reference.acceptance_probs(target, q, 1.0, "tv"),
                acceptance.acceptance_probs(target.to(DEVICE), q.to(DEVICE), 1.0, "tv", out=poisoned((3, 3)),
                                            block_v=16, schedule=schedule)):
        got = got.cpu()
        assert torch.equal(got[0], torch.zeros(3)) and got[1, 1] == 0.0
        assert got[1, 0] > 0 and got[1, 2] > 0
        assert_close(got[2:], clean, 1e-6, 1e-5, "the clean drafter")


def test_top_l_larger_than_the_vocabulary_keeps_every_token():
    target, drafters = ku.make_logits(3, 2, 5, torch.float32, seed=4)
    for mode, want in (("topl", 1.0), ("topl_greedy", 1.0)):
        got = acceptance.acceptance_probs(target, drafters, 1.0, mode, top_l=8, out=poisoned((3, 2)))
        assert_close(got, torch.full((3, 2), want), 1e-6, 1e-6, mode)
        assert_close(reference.acceptance_probs(target, drafters, 1.0, mode, top_l=8), torch.full((3, 2), want),
                     1e-6, 1e-6, mode)


def test_drafter_lists_are_read_in_place():
    n, m, vocab = 4, 3, 200
    target, stacked = ku.make_logits(n, m, vocab, torch.bfloat16, seed=5)
    expected = acceptance.acceptance_probs(target, stacked, block_v=64)
    views = list(stacked.unbind(0))  # evenly spaced views of one buffer: base pointer + stride
    source = acceptance._drafter_source(views, m, vocab)
    assert source[0].data_ptr() == stacked.data_ptr() and source[3] is None
    buf = torch.empty(n * (m * vocab + 32), dtype=torch.bfloat16, device=DEVICE)  # unevenly spaced: offset table
    uneven = [buf[i * (m * vocab + 32) + 8 * (i % 3):][: m * vocab].view(m, vocab) for i in range(n)]
    for row, src in zip(uneven, views):
        row.copy_(src)
    assert acceptance._drafter_source(uneven, m, vocab)[3] is not None
    mixed = [views[0].float()] + views[1:]  # mixed dtypes: stacked (a copy)
    for drafters in (views, uneven, mixed):
        got = acceptance.acceptance_probs(target, drafters, out=poisoned((n, m)), block_v=64)
        assert torch.equal(got, expected)


def test_strided_inputs_and_outputs():
    n, m, vocab = 3, 4, 150
    target, drafters = ku.make_logits(n, m, vocab, torch.float16, seed=6)
    wide = torch.zeros(m, vocab + 5, dtype=target.dtype, device=DEVICE)
    wide[:, :vocab] = target
    by_position = drafters.transpose(0, 1).contiguous().transpose(0, 1)  # [N, m, V] with stride_n = V
    out_t = poisoned((m, n)).t()  # γ written through strides (1, N)
    got = acceptance.acceptance_probs(wide[:, :vocab], by_position, 0.8, out=out_t, block_v=64)
    assert_close(got, reference.acceptance_probs(target, drafters, 0.8), 2e-6, 1e-5, "strided")


def test_poisoned_output_shows_exactly_the_written_slots():
    n, m = 3, 2
    target, drafters = ku.make_logits(n, m, 111, torch.float32, seed=7)
    big = poisoned((n + 2, m + 3))
    acceptance.acceptance_probs(target, drafters, out=big[1:n + 1, 2:m + 2], block_v=32)
    written = torch.zeros_like(big, dtype=torch.bool)
    written[1:n + 1, 2:m + 2] = True
    assert not torch.isnan(big[written]).any() and torch.isnan(big[~written]).all()
    with pytest.raises(AssertionError, match="NaN"):  # the checker itself catches an unwritten slot
        assert_close(big[:n, :m], torch.zeros(n, m), 1.0, 1.0, "poisoned")


def test_one_launch_and_two_launch_schedules_agree_bitwise():
    target, drafters = ku.make_logits(3, 5, 300, torch.bfloat16, seed=8)
    fused = acceptance.acceptance_probs(target, drafters, block_v=64, schedule="fused")
    two = acceptance.acceptance_probs(target, drafters, block_v=64, schedule="two_launch", out=poisoned((3, 5)))
    assert torch.equal(fused, two)
    assert _semaphores_clear()


@pytest.mark.parametrize("schedule", acceptance.SCHEDULES)
@pytest.mark.parametrize("mode,loss,level,algo,pending", [
    ("tv", "expected_length", "token", "normalhedge", 2),
    ("greedy", "expected_length", "chunk", "adanormalhedge", 0),
    ("tv", "acceptance", "token", "hedge", 0),
    ("topl", "expected_length", "token", "normalhedge", 3),
])
def test_acceptance_and_update_is_the_whole_step(mode, loss, level, algo, pending, schedule):
    n, m, vocab, draft_len = 3, 4, 200, 3
    target, drafters = ku.make_logits(n, m, vocab, torch.bfloat16, seed=9)
    history = poisoned((n, pending + m))
    history[:, :pending] = torch.rand(n, pending, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    state = ku.learner_state(n, seed=1)
    u = torch.tensor([0.6], device=DEVICE)
    ref_history, ref_state = history.clone(), ku.clone_state(state)
    choice = acceptance.acceptance_and_update(target, drafters, history, *state, mode=mode, top_l=2,
                                              draft_len=draft_len, loss=loss, level=level, algo=algo, u=u,
                                              out=poisoned((1,), torch.int64), block_v=64, schedule=schedule)
    ref_choice = reference.acceptance_and_update(target, drafters, ref_history, *ref_state, mode=mode, top_l=2,
                                                 draft_len=draft_len, loss=loss, level=level, algo=algo, u=u)
    assert_close(history, ref_history, 2e-6, 1e-5, "γ history")
    for name, got, want in zip(("regret", "abs_regret", "cum_loss", "weights", "step"), state, ref_state):
        assert_close(got, want, 1e-5, 1e-4, name)
    assert int(choice) == int(ref_choice)
    assert _semaphores_clear()


def test_dispatch_and_environment_override(monkeypatch):
    target, drafters = ku.make_logits(2, 2, 50, torch.float32, seed=10, device="cpu")
    expected = reference.acceptance_probs(target, drafters)
    assert torch.equal(kernels.acceptance_probs(target, drafters, backend="torch"), expected)
    if not ON_GPU:  # auto on CPU tensors = the torch twin, bit for bit
        assert torch.equal(kernels.acceptance_probs(target, drafters), expected)
        assert_close(kernels.acceptance_probs(target, drafters, backend="triton"), expected, 2e-6, 1e-5, "triton")
        monkeypatch.setenv(kernels.ENV_BACKEND, "triton")
        assert kernels.resolve_backend("torch", target.device) == "triton"
    monkeypatch.setenv(kernels.ENV_BACKEND, "nonsense")
    with pytest.raises(ValueError, match="backend"):
        kernels.acceptance_probs(target, drafters)


def test_invalid_arguments_are_refused():
    target, drafters = ku.make_logits(2, 2, 50, torch.float32, seed=11)
    with pytest.raises(ValueError, match="mode"):
        acceptance.acceptance_probs(target, drafters, mode="nope")
    with pytest.raises(ValueError, match="top_l"):
        acceptance.acceptance_probs(target, drafters, mode="topl", top_l=9)
    with pytest.raises(ValueError, match="temperature"):
        acceptance.acceptance_probs(target, drafters, temperature=0.0)
    with pytest.raises(ValueError, match="out"):
        acceptance.acceptance_probs(target, drafters, out=torch.empty(3, 2, device=DEVICE))
    with pytest.raises(ValueError, match="drafter logits"):
        acceptance.acceptance_probs(target, drafters[:, :1])


def test_importing_the_package_does_not_import_triton():
    code = "import sys, hedgespec_fast, hedgespec_fast.kernels; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HEDGESPEC_BACKEND": ""})


# ---------------------------------------------------------------- the reference against hand-computed values

def test_reference_hand_computed_two_token_cases():
    ln3 = math.log(3.0)
    p = torch.tensor([[0.0, 2 * ln3]])  # at T = 2: softmax = [1/4, 3/4]
    q = torch.tensor([[[2 * ln3, 0.0]], [[0.0, 2 * ln3]]])  # [3/4, 1/4] and p itself
    gamma = reference.acceptance_probs(p, q, temperature=2.0)
    assert_close(gamma, torch.tensor([[0.5], [1.0]]), 1e-6, 1e-6, "Σ min at T=2")
    assert_close(reference.acceptance_probs(p, q, temperature=1.0), torch.tensor([[0.2], [1.0]]), 1e-6, 1e-6, "T=1")
    assert reference.acceptance_probs(p, q, mode="greedy").tolist() == [[0.0], [1.0]]
    assert_close(reference.acceptance_probs(p, q, 2.0, "topl", top_l=1), torch.tensor([[0.25], [0.75]]), 1e-6, 1e-6,
                 "topl")


def test_reference_top_l_ties_are_deterministic():
    x = torch.zeros(1, 1, 40)
    x[0, 0, [3, 7, 20, 33]] = 1.0  # torch.topk(x, 2) returns 20, 33 here; TopL must be {3, 7}
    target = torch.zeros(1, 40)
    target[0, 7] = 9.0
    assert reference.acceptance_probs(target, x, mode="topl_greedy", top_l=2).item() == 1.0
    target[0, 7], target[0, 20] = 0.0, 9.0
    assert reference.acceptance_probs(target, x, mode="topl_greedy", top_l=2).item() == 0.0


# ---------------------------------------------------------------- CUDA: the full grid natively, graphs

@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype,atol,rtol", DTYPE_TOLERANCES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n", [1, 3, 16])
@pytest.mark.parametrize("m", [1, 9])
@pytest.mark.parametrize("vocab", [1, 111, 32000, 128256 + 7])
@pytest.mark.parametrize("mode", reference.MODES)
def test_cuda_full_grid(mode, vocab, m, n, dtype, atol, rtol):
    target, drafters = ku.make_logits(n, m, vocab, dtype, seed=vocab + m + n)
    _check_against_reference_and_oracle(target, drafters, mode, atol * (4 if vocab > 10000 else 1), rtol)
    if mode == "tv":
        two = acceptance.acceptance_probs(target, drafters, 0.7, mode, schedule="two_launch")
        assert torch.equal(two, acceptance.acceptance_probs(target, drafters, 0.7, mode))


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
def test_cuda_graph_replay_of_the_whole_step():
    """Captured once, replayed many times: the self-resetting counters must hold across replays."""
    n, m, vocab = 8, 8, 128256
    target, drafters = ku.make_logits(n, m, vocab, torch.bfloat16, seed=12)
    history = torch.zeros(n, m + 4, device=DEVICE)
    state = ku.learner_state(n, seed=2)
    u = torch.tensor([0.3], device=DEVICE)
    kwargs = dict(draft_len=5, u=u)
    eager_history, eager_state = history.clone(), ku.clone_state(state)
    graph_history, graph_state = history.clone(), ku.clone_state(state)
    start_state = ku.clone_state(graph_state)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on the capture stream: compiles, and allocates its counters outside
        acceptance.acceptance_and_update(target, drafters, history.clone(), *ku.clone_state(state), **kwargs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph, stream=stream):
        choice = acceptance.acceptance_and_update(target, drafters, graph_history, *graph_state, **kwargs)
    for _ in range(5):
        for live, start in zip(graph_state, start_state):
            live.copy_(start)
        graph.replay()
    eager_choice = acceptance.acceptance_and_update(target, drafters, eager_history, *eager_state, **kwargs)
    torch.cuda.synchronize()
    assert_close(graph_history, eager_history, 0, 0, "graph γ")
    for got, want in zip(graph_state, eager_state):
        assert_close(got, want, 0, 0, "graph state")
    assert int(choice) == int(eager_choice)
    assert _semaphores_clear()


# ---------------------------------------------------------------- H100 code without an H100

@pytest.mark.slow
def test_every_variant_compiles_for_sm90_with_vector_loads():
    """The real compiler path (not the interpreter): every kernel variant compiles for sm_90 with the JIT's own
    argument specialisation, and the aligned bf16 acceptance kernels use 16-byte vector loads."""
    code = ("import json, kernel_utils; print(json.dumps([(name, ptx.count('.v4.')) "
            "for name, ptx in kernel_utils.aot_compile_variants(90)]))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env[ku.AOT_ENV] = "1"
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0 and "get_current_target" in done.stderr:
        pytest.skip(f"this Triton's JIT cannot compile without a driver: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    variants = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(variants) >= 15
    aligned_tv = [vec for name, vec in variants if "'MODE': 0" in name and "'vocab': 128256" in name
                  and ("'OFFSET_TABLE': False" in name or "'TABLE_ALIGN': 8" in name)]
    assert len(aligned_tv) >= 6
    assert aligned_tv and all(vec > 0 for vec in aligned_tv), variants
