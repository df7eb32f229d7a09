"""Per-round overhead of everything that is not a model forward: selection, feedback, bookkeeping, host syncs.

Runs real generations (tiny random-init target, three noisy-copy drafters and an n-gram drafter) under every policy,
times every model forward with hooks, and reports per round: total time, time inside model forwards, and the rest
(the overhead this package adds), split by phase, with the host syncs the loop counted. Then times the selection
step alone (γ of every drafter → losses → learner update → choice) on synthetic inputs.

    python bench/overhead.py                      # CPU (or the GPU when there is one)
    python bench/overhead.py --device cuda --json out.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tiny import noisy_copy, tiny_model  # noqa: E402

import hedgespec_fast as hs  # noqa: E402
from hedgespec_fast import kernels  # noqa: E402
from hedgespec_fast.feedback import Evaluator, LossStream  # noqa: E402
from hedgespec_fast.logits import LogitsWarp  # noqa: E402

POLICIES = ["fixed:0", "random", "hedgespec", "hedgespec@objective=mat", "hedge", "adanormalhedge", "ucbspec",
            "exp3spec", "metasd", "tapout"]


class ForwardClock:
    """Accumulates wall time spent inside the top-level forward of the given models."""

    def __init__(self, models, device):
        self.total = 0.0
        self.calls = 0
        self.sync = device.type == "cuda"
        for m in models:
            m.register_forward_pre_hook(self._start)
            m.register_forward_hook(self._stop)

    def _start(self, module, args):
        if self.sync:
            torch.cuda.synchronize()
        self._t = time.perf_counter()

    def _stop(self, module, args, output):
        if self.sync:
            torch.cuda.synchronize()
        self.total += time.perf_counter() - self._t
        self.calls += 1


def build(device, vocab, hidden, layers, n_models=3):
    target = tiny_model("llama", vocab=vocab, hidden=hidden, layers=layers, max_positions=1024).to(device)
    scales = [0.05 * (1 + i) ** 2 for i in range(n_models)]  # 0.05, 0.2, 0.45, 0.8, …: drafters of known order
    drafters = [noisy_copy(target.cpu(), s, i).to(device) for i, s in enumerate(scales)]
    target = target.to(device)
    return target, drafters


def per_round(target, drafters, device, args):
    clock = ForwardClock([target, *drafters], device)
    pool = drafters + [hs.NGramDrafter()]
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, args.vocab, (1, 32), generator=gen).to(device) for _ in range(args.prompts)]
    rows = []
    timing = "sync" if device.type == "cuda" else "auto"
    for policy in tqdm(args.policies.split(","), desc="policies"):
        hs.generate(target, prompts[0], drafters=pool, max_new_tokens=8, policy=policy, eos_token_id=None)  # warm-up
        clock.total, clock.calls = 0.0, 0
        rounds = syncs = 0
        phases = {p: 0.0 for p in ("select", "draft", "verify", "evaluate", "update")}
        for i, prompt in enumerate(prompts):
            out = hs.generate(target, prompt, drafters=pool, max_new_tokens=args.new_tokens, policy=policy,
                              draft_len=args.draft_len, eos_token_id=None, seed=i,
                              spec_config=hs.SpecConfig(timings=timing))
            rounds += out.stats.rounds
            syncs += out.stats.host_syncs
            for p, s in out.stats.phase_seconds.items():
                phases[p] += s
        total = sum(phases.values())
        rows.append({
            "policy": policy,
            "rounds": rounds,
            "ms_per_round": 1e3 * total / rounds,
            "forward_ms_per_round": 1e3 * clock.total / rounds,
            "overhead_ms_per_round": 1e3 * (total - clock.total) / rounds,
            "forwards_per_round": clock.calls / rounds,
            "syncs_per_round": syncs / rounds,
            "select_ms": 1e3 * phases["select"] / rounds,
            "update_ms": 1e3 * phases["update"] / rounds,
        })
    return rows


def selection_step(device, n_drafters, m, vocab, reps):
    """γ for every drafter + expected-length losses + NormalHedge update + choice, on synthetic logits."""
    target = torch.randn(m, vocab, device=device)
    beliefs = [hs.drafters.Beliefs(logits=torch.randn(m, vocab, device=device)) for _ in range(n_drafters)]
    evaluator = Evaluator(LogitsWarp(), do_sample=True)
    try:
        policy = hs.HedgeSpecSelector(n_drafters, objective="mat").to(device)
    except TypeError:  # releases before the throughput objective (a before/after run of this script)
        policy = hs.HedgeSpecSelector(n_drafters).to(device)
    policy.begin(n_drafters, draft_len=5)
    ids = torch.zeros((1, 8), dtype=torch.long, device=device)

    def step():
        gamma = evaluator.gamma(target, target, beliefs, ids, 1)
        policy.update(hs.learners.RoundOutcome(0, 5, 2, m, 5, gamma))
        return policy.choose()

    for _ in range(5):
        step()
    parts = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    parts["selection_step_ms"] = 1e3 * (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        evaluator.gamma(target, target, beliefs, ids, 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    parts["gamma_ms"] = 1e3 * (time.perf_counter() - t0) / reps
    stream = LossStream("expected_length", "token", 5)
    losses = stream.push(torch.rand(n_drafters, m + 4, device=device))
    state = [torch.zeros(n_drafters, device=device) for _ in range(3)]
    w = torch.full((n_drafters,), 1.0 / n_drafters, device=device)
    step_t = torch.zeros(1, dtype=torch.long, device=device)
    kernels.hedge_update(losses, *state, w, step_t, algo="normalhedge")  # warm-up: the first CUDA call compiles
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        kernels.hedge_update(losses, *state, w, step_t, algo="normalhedge")
    if device.type == "cuda":
        torch.cuda.synchronize()
    parts["hedge_update_ms"] = 1e3 * (time.perf_counter() - t0) / reps
    parts["hedge_update_rows"] = int(losses.shape[0])
    return parts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--draft-len", type=int, default=5)
    ap.add_argument("--drafters", type=int, default=7, help="pool size: this many - 1 noisy copies, then n-gram")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma list (default: %(default)s)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    target, drafters = build(device, args.vocab, args.hidden, args.layers, args.drafters - 1)
    rows = per_round(target, drafters, device, args)
    step = selection_step(device, args.drafters, args.draft_len + 1, args.vocab, args.reps)
    meta = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "threads": args.threads, "date": time.strftime("%Y-%m-%d"),
            "vocab": args.vocab, "draft_len": args.draft_len, "new_tokens": args.new_tokens, "prompts": args.prompts}
    print(f"\n{meta}")
    head = (f"{'policy':<16}{'rounds':>7}{'ms/round':>10}{'forward':>9}{'overhead':>10}{'select':>8}{'update':>8}"
            f"{'fwd/rd':>8}{'syncs/rd':>9}")
    print(head)
    for r in rows:
        print(f"{r['policy']:<16}{r['rounds']:>7}{r['ms_per_round']:>10.3f}{r['forward_ms_per_round']:>9.3f}"
              f"{r['overhead_ms_per_round']:>10.3f}{r['select_ms']:>8.3f}{r['update_ms']:>8.3f}"
              f"{r['forwards_per_round']:>8.2f}{r['syncs_per_round']:>9.2f}")
    print(f"selection step alone (N={args.drafters}, m={args.draft_len + 1}, V={args.vocab}): {step}")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rounds": rows, "selection_step": step}, indent=2))


if __name__ == "__main__":
    main()
