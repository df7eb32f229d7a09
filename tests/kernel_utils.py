"""Helpers of the kernel tests (tests/test_kernels_*.py): the interpreter switch, inputs, float64 oracles, NaN
poisoning, and an ahead-of-time compile of every kernel variant for a GPU this machine may not have.

Importing this module on a machine without CUDA switches Triton's interpreter on (``TRITON_INTERPRET=1``), so the
Triton kernels run on CPU tensors; with CUDA the same tests run natively. Import it before the kernel modules.
"""
from __future__ import annotations

import importlib
import math
import os
import sys

import numpy as np
import torch

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
AOT_ENV = "HEDGESPEC_TEST_AOT"  # set by the ahead-of-time compile subprocess: it needs the real compiler


def _interpret_on_cpu() -> None:
    if ON_GPU or os.environ.get(AOT_ENV) == "1":
        return
    os.environ["TRITON_INTERPRET"] = "1"
    # Triton decides interpreted-or-compiled when a @jit function is decorated: its own library (tl.sum, tl.max, …)
    # at `import triton`, our kernels at their import. When something imported triton before the switch (torch._dynamo
    # does, through transformers, so any earlier test module may), re-import Triton's Python modules (its compiled
    # extension stays loaded) and our kernel modules, so that all of them are interpreted.
    standard = sys.modules.get("triton.language.standard")
    if standard is not None and type(standard.sum).__name__ != "InterpretedFunction":
        for name in [n for n in sys.modules if n == "triton" or n.startswith("triton.")]:
            if not name.startswith("triton._C"):
                del sys.modules[name]
        for name in ("hedgespec_fast.kernels.acceptance", "hedgespec_fast.kernels.hedge"):
            sys.modules.pop(name, None)
    modules = [("hedgespec_fast.kernels.hedge", "_hedge_kernel"), ("hedgespec_fast.kernels.acceptance",
                                                                   "_acceptance_kernel")]
    if any(name in sys.modules and type(getattr(sys.modules[name], kernel)).__name__ != "InterpretedFunction"
           for name, kernel in modules):
        for name, _ in modules:  # hedge first: acceptance imports its learner epilogue
            if name in sys.modules:
                importlib.reload(sys.modules[name])


if __name__ == "__main__":
    os.environ[AOT_ENV] = "1"
_interpret_on_cpu()

# Tolerances on γ per input dtype. Inputs are exact in fp32 whatever their dtype, so the error is the kernel's fp32
# arithmetic (exp2 vs exp, tree vs pairwise sums) against the reference and against float64: the same for all dtypes.
DTYPE_TOLERANCES = [
    (torch.float32, 2e-6, 1e-5),
    (torch.float16, 2e-6, 1e-5),
    (torch.bfloat16, 2e-6, 1e-5),
]


def poisoned(shape, dtype=torch.float32, device=DEVICE) -> torch.Tensor:
    """An output buffer filled with NaN (floats) or −1 (integers): memory the kernel does not write stays visible."""
    fill = float("nan") if dtype.is_floating_point else -1
    return torch.full(shape, fill, dtype=dtype, device=device)


def assert_close(actual, expected, atol, rtol, what=""):
    """``torch.testing.assert_close`` in float64 on the CPU; NaN anywhere (an unwritten poisoned slot) fails."""
    actual = torch.as_tensor(actual).detach().double().cpu()
    expected = torch.as_tensor(expected).detach().double().cpu()
    assert not torch.isnan(actual).any(), f"{what}: NaN in the result (unwritten output?)\n{actual}"
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def make_logits(n_drafters, m, vocab, dtype, seed=0, device=DEVICE):
    """Target ``[m, V]`` and drafters ``[N, m, V]`` drifting from it with the drafter index (γ spread over (0, 1])."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(m, vocab, generator=gen) * 2.0
    noise = torch.randn(n_drafters, m, vocab, generator=gen)
    scales = torch.linspace(0.0, 2.5, n_drafters + 1)[1:]
    drafters = target + noise * scales[:, None, None]
    return target.to(dtype).to(device), drafters.to(dtype).to(device)


# ---------------------------------------------------------------- float64 oracles (independent of reference.py)

def _warp64(logits, temperature, top_k, top_p):
    """HF's temperature → top-k → top-p (min_tokens_to_keep=1) in float64, written out again."""
    x = logits.double() / temperature
    vocab = x.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.sort(x, dim=-1, descending=True).values[..., top_k - 1: top_k]
        x = torch.where(x < kth, float("-inf"), x)
    if top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, stable=True)
        cum = torch.cumsum(torch.softmax(sorted_x, dim=-1), dim=-1)
        drop_sorted = cum <= 1.0 - top_p
        drop_sorted[..., -1] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = torch.where(drop, float("-inf"), x)
    return x


def oracle_acceptance(target, drafters, temperature=1.0, mode="tv", top_k=0, top_p=1.0, top_l=1):
    """γ ``[N, m]`` float64; argmax and TopL ties go to the lowest index (stable sorts)."""
    t = target.detach().double()  # on its device: float64 is cheap on a GPU, and the big CUDA grid needs it
    q = (drafters if isinstance(drafters, torch.Tensor) else torch.stack(list(drafters))).detach().double()
    top_l = min(top_l, t.shape[-1])
    if mode in ("greedy", "topl_greedy"):
        best_p = t.argmax(dim=-1)  # CPU argmax: first maximal index
        if mode == "greedy":
            return (q.argmax(dim=-1) == best_p).double()
        top = torch.sort(q, dim=-1, descending=True, stable=True).indices[..., :top_l]
        return (top == best_p[None, :, None]).any(dim=-1).double()  # CUDA argmax: first index as well
    p = torch.softmax(_warp64(t, temperature, top_k, top_p), dim=-1)
    if mode == "topl":
        top = torch.sort(q, dim=-1, descending=True, stable=True).indices[..., :top_l]
        return p.expand(q.shape[0], -1, -1).gather(-1, top).sum(dim=-1)
    qp = torch.softmax(_warp64(q, temperature, top_k, top_p), dim=-1)
    return torch.minimum(p[None], qp).sum(dim=-1)


def normalhedge_scale64(regret):
    """c with mean_i exp([R_i]₊² / 2c) = e by Brent's method in float64 (0 when no regret is positive)."""
    from scipy.optimize import brentq

    a = np.maximum(np.asarray(regret, dtype=np.float64), 0.0) ** 2 / 2.0
    if a.max() <= 0:
        return 0.0
    f = lambda log_c: np.mean(np.exp(a / np.exp(log_c))) - math.e  # noqa: E731
    hi = math.log(a.max())
    lo = hi - math.log(1.0 + math.log(len(a))) - 1e-9
    if f(hi) >= 0:  # N = 1: the root is the bracket's end
        return float(a.max())
    return float(np.exp(brentq(f, lo, hi, xtol=1e-15, rtol=1e-15)))


def oracle_hedge(losses, regret, abs_regret, cum_loss, weights, step, algo, eta=None, prior=None, u=None):
    """The learner rounds in float64 numpy. Returns (regret, abs_regret, cum_loss, weights, step, choice)."""
    R, C, L, w = (np.asarray(x.detach().cpu(), dtype=np.float64).copy()
                  for x in (regret, abs_regret, cum_loss, weights))
    t = int(step.item())
    n = len(w)
    pi = None if prior is None else np.asarray(prior.detach().cpu(), dtype=np.float64)
    for row in np.asarray(losses.detach().cpu(), dtype=np.float64):
        inst = float(w @ row) - row
        R, C, L, t = R + inst, C + np.abs(inst), L + row, t + 1
        if algo == "hedge":
            rate = eta if eta is not None else math.sqrt(8 * math.log(max(n, 2)) / max(t, 1))
            e = np.exp(-rate * (L - L.min()))
            w = e / e.sum()
        elif algo == "normalhedge":
            c = normalhedge_scale64(R)
            rp = np.maximum(R, 0.0)
            w = (rp / c) * np.exp(rp ** 2 / (2 * c)) if c > 0 else np.zeros(n)
            w = w / w.sum() if w.sum() > 0 else np.full(n, 1.0 / n)
        else:
            hi = np.maximum(R + 1, 0) ** 2 / (3 * (C + 1))
            lo = np.maximum(R - 1, 0) ** 2 / (3 * (C + 1))
            w = np.exp(hi - hi.max()) * -np.expm1(lo - hi) * (1.0 if pi is None else pi)
            fallback = np.full(n, 1.0 / n) if pi is None else pi / pi.sum()
            w = w / w.sum() if w.sum() > 0 else fallback
    if u is None:
        choice = int(np.argmax(w))
    else:
        cdf = np.cumsum(w)
        choice = min(int((cdf <= float(u.item()) * cdf[-1]).sum()), n - 1)
    return R, C, L, w, t, choice


def learner_state(n, seed=0, device=DEVICE, warm=True):
    """(regret, abs_regret, cum_loss, weights, step) — a warm state (some regret accumulated) or the initial one."""
    gen = torch.Generator().manual_seed(seed)
    if not warm:
        return (torch.zeros(n, device=device), torch.zeros(n, device=device), torch.zeros(n, device=device),
                torch.full((n,), 1.0 / n, device=device), torch.zeros(1, dtype=torch.int64, device=device))
    regret = torch.randn(n, generator=gen) * 2
    return (regret.to(device), (regret.abs() + torch.rand(n, generator=gen) * 3).to(device),
            (torch.rand(n, generator=gen) * 5).to(device), torch.softmax(torch.randn(n, generator=gen), 0).to(device),
            torch.tensor([7], dtype=torch.int64, device=device))


def clone_state(state):
    return tuple(x.clone() for x in state)


# ---------------------------------------------------------------- ahead-of-time compile for an H100 (sm_90)

def aot_compile_variants(arch: int = 90):
    """Compile every kernel variant the launchers pick, with the JIT's own argument specialisation, for a CUDA
    target of compute capability ``arch`` — no GPU needed (a stand-in driver answers the target query; nothing is
    launched). Run in a process without TRITON_INTERPRET. Returns [(description, ptx)]."""
    import triton
    from triton.backends.compiler import GPUTarget

    class _TargetOnlyDriver:
        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

    from hedgespec_fast.kernels import acceptance, hedge

    compiled = []

    class _Warmup:  # stands in for kernel[grid]: compiles with the JIT's specialisation instead of launching
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                kernel = self.fn.warmup(*args, grid=grid, **kwargs)
                flags = {k: v for k, v in kwargs.items() if k.isupper() and k != "BLOCK_CL"}
                if "vocab" in self.fn.arg_names:
                    flags["vocab"] = args[self.fn.arg_names.index("vocab")]
                compiled.append((f"{self.fn.__name__} {flags}", kernel.asm["ptx"]))
            return launch

    triton.runtime.driver.set_active(_TargetOnlyDriver())
    acceptance._acceptance_kernel = _Warmup(acceptance._acceptance_kernel)
    hedge._hedge_kernel = _Warmup(hedge._hedge_kernel)
    n, m, vocab = 8, 8, 128256
    target = torch.empty(m, vocab, dtype=torch.bfloat16)
    drafters = torch.empty(n, m, vocab, dtype=torch.bfloat16)
    for mode in ("tv", "greedy", "topl", "topl_greedy"):
        acceptance.acceptance_probs(target, drafters, mode=mode, top_l=8, block_v=2048)
    acceptance.acceptance_probs(target, drafters, schedule="two_launch", block_v=2048)
    for width, dtype in ((vocab, torch.bfloat16), (vocab + 7, torch.float16)):  # aligned rows, then odd rows
        buf = torch.empty(n * (m * width + 32), dtype=dtype)  # separate, unevenly spaced drafters: the offset table
        uneven = [buf[i * (m * width + 32) + 8 * (i % 3):][: m * width].view(m, width) for i in range(n)]
        acceptance.acceptance_probs(torch.empty(m, width, dtype=dtype), uneven, mode="tv", block_v=2048)
    state = learner_state(n, device="cpu")
    for algo in ("hedge", "normalhedge", "adanormalhedge"):
        acceptance.acceptance_and_update(target, drafters, torch.zeros(n, 12), *state, draft_len=5, algo=algo,
                                         u=torch.zeros(1), block_v=2048)
        hedge.hedge_update(torch.zeros(3, n), *state, algo=algo)
        hedge.hedge_update_from_gamma(torch.zeros(n, 9), *state, draft_len=4, algo=algo, level="chunk",
                                      prior=torch.ones(n) if algo == "adanormalhedge" else None)
    return compiled


if __name__ == "__main__":  # python tests/kernel_utils.py [arch]: the AOT compile report
    for name, ptx in aot_compile_variants(int(sys.argv[1]) if len(sys.argv) > 1 else 90):
        print(f"{name}: {len(ptx)} B of PTX, vector loads: {ptx.count('.v4.')}")
