"""GPU microbenchmarks of the Triton kernels against the torch paths and the HBM floor; writes JSON.

    python bench/gpu_kernels.py --out bench/kernels_gpu.json              # on a CUDA machine
    python bench/gpu_kernels.py --dry-run --out /tmp/kernels_dry.json      # anywhere: tiny shapes, Triton interpreter

In order:
1. correctness of every kernel against ``kernels/reference.py`` on the device (exit 1 on a mismatch: wrong code is
   never timed);
2. copy bandwidth of a large torch copy, (read + written bytes) / time; the HBM floor of a shape is its bytes read
   once / that bandwidth;
3. acceptance for a grid of (N, m, V), bf16: Triton (one launch; two launches for tv), plain torch
   (softmax → min → sum, or argmax ==), and ``reference.acceptance_probs``;
4. the learner update (Hedge, NormalHedge, AdaNormalHedge; T = 1, 8): Triton vs torch;
5. the whole selection step (γ + losses + update + choice): fused one launch, two launches, torch.
Times: ``events_us`` = CUDA events around ``--reps`` back-to-back calls (host-bound when the host is slower than the
device), ``graph_us`` = CUDA-graph replay of 20 captured calls (device time, launch gaps included), ``host_us`` = host
time to enqueue one call. Times are reported, never asserted. ``--dry-run`` runs every code path on the CPU under
TRITON_INTERPRET=1 with tiny shapes; its times are meaningless.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

GPU_GRID = [(8, 8, 128256), (16, 8, 151936), (8, 1, 128256), (1, 8, 128256), (4, 4, 32000), (8, 8, 32000),
            (16, 16, 151936)]
HEADLINE = [(8, 8, 128256), (16, 8, 151936)]
DRY_GRID = [(2, 2, 300), (3, 1, 111)]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="path of the JSON results")
    parser.add_argument("--reps", type=int, default=200, help="calls per timing (events and host)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shapes")
    parser.add_argument("--target-forward-ms", type=float, default=None,
                        help="a target forward's time, to report the selection step as a fraction of it")
    parser.add_argument("--measure-target", action="store_true",
                        help="time a verify forward (m = 9 tokens) of a random-init Llama-3-8B-shaped bf16 model "
                             "and use it as --target-forward-ms")
    return parser.parse_args(argv)


class Timer:
    """Device time by CUDA events and by graph replay, host time per call; perf_counter stand-ins on the CPU."""

    def __init__(self, torch, device, reps, inner=20):
        self.torch, self.device, self.reps, self.inner = torch, device, reps, inner
        self.cuda = device.type == "cuda"

    def _sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def events(self, fn):
        for _ in range(3):
            fn()
        self._sync()
        if not self.cuda:
            start = time.perf_counter()
            for _ in range(self.reps):
                fn()
            return (time.perf_counter() - start) / self.reps * 1e6
        start, end = (self.torch.cuda.Event(enable_timing=True) for _ in range(2))
        start.record()
        for _ in range(self.reps):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / self.reps * 1e3

    def graph(self, fn):
        if not self.cuda:
            return None
        torch = self.torch
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up on the capture stream (compiles, allocates)
                for _ in range(3):
                    fn()
            torch.cuda.current_stream().wait_stream(stream)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                for _ in range(self.inner):
                    fn()
            graph.replay()
            torch.cuda.synchronize()
            outer = max(self.reps // self.inner, 5)
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            for _ in range(outer):
                graph.replay()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / (outer * self.inner) * 1e3
        except Exception as error:  # noqa: BLE001 - a path that cannot be captured is reported, not fatal
            print(f"    (graph capture failed: {type(error).__name__}: {error})")
            return None

    def host(self, fn):
        fn()
        self._sync()
        start = time.perf_counter()
        for _ in range(self.reps):
            fn()
        elapsed = time.perf_counter() - start
        self._sync()
        return elapsed / self.reps * 1e6

    def all(self, fn):
        return {"events_us": self.events(fn), "graph_us": self.graph(fn), "host_us": self.host(fn)}


def logits(torch, n, m, vocab, dtype, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    target = torch.randn(m, vocab, device=device, generator=gen) * 2
    drafters = target + torch.randn(n, m, vocab, device=device, generator=gen)
    return target.to(dtype), drafters.to(dtype)


def learner_state(torch, n, device):
    return (torch.zeros(n, device=device), torch.zeros(n, device=device), torch.zeros(n, device=device),
            torch.full((n,), 1.0 / n, device=device), torch.zeros(1, dtype=torch.int64, device=device))


def check_correctness(torch, kernels_mod, device, dry):
    """Every kernel against the reference on the device; returns the records (``ok`` per check)."""
    acceptance, hedge, reference = kernels_mod
    records = []

    def record(name, got, want, atol, rtol):
        got, want = got.double().cpu(), want.double().cpu()
        error = float((got - want).abs().max()) if got.numel() else 0.0
        ok = bool(torch.isfinite(got).all()) and bool(torch.allclose(got, want, atol=atol, rtol=rtol))
        records.append({"check": name, "max_abs_error": error, "ok": ok})
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: max |error| {error:.2e}")

    shapes = DRY_GRID if dry else [(1, 1, 1), (3, 9, 32000 + 7), (8, 8, 128256), (16, 1, 151936)]
    for n, m, vocab in shapes:
        for dtype in (torch.bfloat16, torch.float32):
            target, drafters = logits(torch, n, m, vocab, dtype, device, seed=vocab)
            for mode in reference.MODES:
                want = reference.acceptance_probs(target, drafters, 0.8, mode, top_l=4)
                got = acceptance.acceptance_probs(target, drafters, 0.8, mode, top_l=4,
                                                  out=torch.full((n, m), float("nan"), device=device))
                record(f"acceptance {mode} N{n} m{m} V{vocab} {dtype}", got, want, 1e-5, 1e-4)
            got = acceptance.acceptance_probs(target, list(drafters.unbind(0)), 0.8, schedule="two_launch")
            record(f"acceptance tv two-launch list N{n} m{m} V{vocab} {dtype}", got,
                   reference.acceptance_probs(target, drafters, 0.8), 1e-5, 1e-4)
    n = 8
    losses = torch.rand(8, n, device=device)
    for algo in reference.ALGOS:
        mine, theirs = learner_state(torch, n, device), learner_state(torch, n, device)
        choice = hedge.hedge_update(losses, *mine, algo=algo)
        want_choice = reference.hedge_update(losses, *theirs, algo=algo)
        record(f"hedge_update {algo} weights", mine[3], theirs[3], 1e-5, 1e-4)
        record(f"hedge_update {algo} choice", choice, want_choice, 0, 0)
    n, m, vocab = DRY_GRID[0] if dry else HEADLINE[0]
    target, drafters = logits(torch, n, m, vocab, torch.bfloat16, device)
    mine, theirs = learner_state(torch, n, device), learner_state(torch, n, device)
    history_mine, history_theirs = torch.zeros(n, m + 4, device=device), torch.zeros(n, m + 4, device=device)
    u = torch.tensor([0.4], device=device)
    acceptance.acceptance_and_update(target, drafters, history_mine, *mine, draft_len=5, u=u)
    reference.acceptance_and_update(target, drafters, history_theirs, *theirs, draft_len=5, u=u)
    record("acceptance_and_update γ", history_mine, history_theirs, 1e-5, 1e-4)
    record("acceptance_and_update weights", mine[3], theirs[3], 1e-5, 1e-4)
    return records


def copy_bandwidth(torch, device, timer):
    n_bytes = (1 << 30) if device.type == "cuda" else (1 << 24)
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = timer.events(lambda: dst.copy_(src)) * 1e-6
    return 2 * n_bytes / seconds / 1e9  # read + written bytes per second, GB/s


def bench_acceptance(torch, kernels_mod, device, timer, bandwidth_gbps, grid, headline):
    acceptance, _, reference = kernels_mod
    rows = []
    for n, m, vocab in grid:
        target, drafters = logits(torch, n, m, vocab, torch.bfloat16, device)
        out = torch.empty(n, m, device=device)
        bytes_read = (n + 1) * m * vocab * target.element_size()
        floor_us = bytes_read / (bandwidth_gbps * 1e9) * 1e6
        for mode in (reference.MODES[:3] if (n, m, vocab) in headline else ("tv",)):
            plain = {
                "tv": lambda: torch.minimum(target.float().softmax(-1)[None], drafters.float().softmax(-1)).sum(-1),
                "greedy": lambda: (drafters.argmax(-1) == target.argmax(-1)[None]).float(),
                "topl": lambda: reference.acceptance_probs(target, drafters, 1.0, "topl", top_l=4),
            }[mode]
            row = {"N": n, "m": m, "V": vocab, "dtype": "bf16", "mode": mode, "bytes_read": bytes_read,
                   "floor_us": floor_us}
            row["triton"] = timer.all(lambda: acceptance.acceptance_probs(target, drafters, 1.0, mode, top_l=4,
                                                                          out=out))
            if mode == "tv":
                row["triton_two_launch"] = timer.all(lambda: acceptance.acceptance_probs(
                    target, drafters, 1.0, mode, out=out, schedule="two_launch"))
            row["torch_plain"] = timer.all(plain)
            row["torch_reference"] = timer.all(lambda: reference.acceptance_probs(target, drafters, 1.0, mode,
                                                                                  top_l=4))
            best = row["triton"]["graph_us"] or row["triton"]["events_us"]
            row["triton_over_floor"] = best / floor_us
            row["triton_GBps"] = bytes_read / (best * 1e-6) / 1e9
            row["torch_plain_over_triton"] = (row["torch_plain"]["graph_us"] or row["torch_plain"]["events_us"]) / best
            rows.append(row)
            print(f"  N{n:<3} m{m:<3} V{vocab:<7} {mode:<7} triton {best:9.2f} us  floor {floor_us:8.2f} us  "
                  f"x{row['triton_over_floor']:.2f}  torch {row['torch_plain_over_triton']:.1f}x slower  "
                  f"host {row['triton']['host_us']:.1f} us")
    return rows


def bench_learner(torch, kernels_mod, device, timer):
    _, hedge, reference = kernels_mod
    rows = []
    for n in (8, 16):
        for rounds in (1, 8):
            losses = torch.rand(rounds, n, device=device)
            for algo in reference.ALGOS:
                mine, theirs = learner_state(torch, n, device), learner_state(torch, n, device)
                row = {"N": n, "T": rounds, "algo": algo,
                       "triton": timer.all(lambda: hedge.hedge_update(losses, *mine, algo=algo)),
                       "torch": timer.all(lambda: reference.hedge_update(losses, *theirs, algo=algo))}
                rows.append(row)
                best = row["triton"]["graph_us"] or row["triton"]["events_us"]
                slow = row["torch"]["graph_us"] or row["torch"]["events_us"]
                print(f"  N{n:<3} T{rounds:<2} {algo:<15} triton {best:8.2f} us  torch {slow:9.2f} us  "
                      f"host {row['triton']['host_us']:.1f} us")
    return rows


def bench_step(torch, kernels_mod, device, timer, shapes, target_forward_ms):
    acceptance, hedge, reference = kernels_mod
    rows = []
    for n, m, vocab in shapes:
        target, drafters = logits(torch, n, m, vocab, torch.bfloat16, device)
        history = torch.zeros(n, m + 4, device=device)
        state = learner_state(torch, n, device)
        u = torch.tensor([0.5], device=device)

        def two_launches():
            acceptance.acceptance_probs(target, drafters, out=history[:, 4:])
            return hedge.hedge_update_from_gamma(history, *state, draft_len=5, u=u)

        row = {"N": n, "m": m, "V": vocab, "draft_len": 5, "pending": 4,
               "fused_one_launch": timer.all(lambda: acceptance.acceptance_and_update(target, drafters, history,
                                                                                        *state, draft_len=5, u=u)),
               "two_launches": timer.all(two_launches),
               "torch": timer.all(lambda: reference.acceptance_and_update(target, drafters, history, *state,
                                                                          draft_len=5, u=u))}
        for key in ("fused_one_launch", "two_launches", "torch"):
            best = row[key]["graph_us"] or row[key]["events_us"]
            if target_forward_ms:
                row[key]["fraction_of_target_forward"] = best / (target_forward_ms * 1e3)
            print(f"  N{n:<3} m{m:<3} V{vocab:<7} {key:<17} {best:9.2f} us  host {row[key]['host_us']:.1f} us")
        rows.append(row)
    return rows


def measure_target_forward(torch, device, timer, m=9):
    """ms of one verify forward of a Llama-3-8B-shaped model (random bf16 weights: the time does not depend on them)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192)
    with torch.device(device):
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = LlamaForCausalLM(config).eval()
        finally:
            torch.set_default_dtype(torch.float32)
    ids = torch.randint(0, config.vocab_size, (1, m), device=device)
    with torch.no_grad():
        events_us = timer.events(lambda: model(ids, use_cache=False))
    params = sum(p.numel() for p in model.parameters())
    return {"model": "Llama-3-8B shape, random bf16", "params": params, "tokens": m, "ms": events_us / 1e3,
            "weight_floor_ms": 2 * params / 3.0e12 * 1e3}


def main(argv=None):
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported: @triton.jit decides at decoration
    import torch
    import triton

    from hedgespec_fast.kernels import acceptance, hedge, reference

    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("no CUDA device: run on a GPU machine, or pass --dry-run to exercise the script on the CPU")
    device = torch.device("cpu" if args.dry_run else "cuda")
    reps = min(args.reps, 3) if args.dry_run else args.reps
    timer = Timer(torch, device, reps)
    kernels_mod = (acceptance, hedge, reference)
    meta = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "dry_run": args.dry_run, "reps": reps, "host": platform.node(), "cpu": platform.processor(),
        "python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (Triton interpreter)",
        "sm_count": torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else None,
    }
    print(f"{meta['device']} | torch {meta['torch']} | triton {meta['triton']} | {meta['date_utc']}")
    print("1. correctness against kernels/reference.py")
    correctness = check_correctness(torch, kernels_mod, device, args.dry_run)
    results = {"meta": meta, "correctness": correctness}
    if not all(r["ok"] for r in correctness):
        _write(args.out, results)
        sys.exit("a kernel disagrees with the reference: nothing timed (see the FAIL lines)")
    print("2. copy bandwidth")
    results["copy_bandwidth_GBps"] = bandwidth = copy_bandwidth(torch, device, timer)
    print(f"  {bandwidth:.0f} GB/s (read + write)")
    grid, headline = (DRY_GRID, DRY_GRID[:1]) if args.dry_run else (GPU_GRID, HEADLINE)
    print("3. acceptance (bf16)")
    results["acceptance"] = bench_acceptance(torch, kernels_mod, device, timer, bandwidth, grid, headline)
    print("4. learner update")
    results["learner"] = bench_learner(torch, kernels_mod, device, timer)
    if args.measure_target and device.type == "cuda":
        print("5a. target forward (Llama-3-8B shape, m = 9)")
        results["target_forward"] = forward = measure_target_forward(torch, device, Timer(torch, device, 10))
        torch.cuda.empty_cache()  # the model is gone with the function; give its 16 GB back before the timings
        args.target_forward_ms = forward["ms"]
        print(f"  {forward['ms']:.2f} ms ({forward['params'] / 1e9:.2f} B params)")
    print("5. whole selection step")
    results["selection_step"] = bench_step(torch, kernels_mod, device, timer, headline, args.target_forward_ms)
    _write(args.out, results)


def _write(path, results):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
