"""The GPU decode step (issue 12): an 8B-shaped random-init bf16 target with drafters of 0.5B and 1B shapes and a
1-layer head, eager vs static caches vs static + CUDA graphs: ms per round by phase, host syncs per round, tokens/s,
against plain ``generate()`` (eager and static) and HF assisted generation with the same drafters — at both ends of
the acceptance range: the target itself as drafter (greedy acceptance 1) and unrelated random weights (≈ 0).
Random weights are fine for timing; acceptance on real models comes from the CPU head-to-head.

    python bench/gpu_decode.py --out decode.json              # CUDA (an H100/H200: ~3 minutes)
    python bench/gpu_decode.py --tiny --out /tmp/decode.json  # CPU smoke run with tiny shapes (no graphs: says why)

Also times the graphed forwards alone (target verify of K + 1 tokens, one drafter step), so the bound "a round costs
≤ 1.2 × (verify + K drafter steps)" is read off one run.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

import hedgespec_fast as hs
from hedgespec_fast import graphs
from hedgespec_fast.cache import truncate

SHAPES = {  # Llama-3-8B, Llama-3.2-1B, a Qwen2.5-0.5B-shaped Llama, and one 8B layer as a draft head
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True),
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "head": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=1, num_attention_heads=32,
                 num_key_value_heads=8),
}
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)


def build(shape: str, vocab: int, device, dtype, seed: int, tiny: bool):
    spec = dict(SHAPES[shape])
    if tiny:
        spec.update(TINY, num_hidden_layers=min(spec["num_hidden_layers"], 2))
    config = LlamaConfig(vocab_size=vocab, max_position_embeddings=4096, rope_theta=500000.0, **spec)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built directly in the target dtype: no fp32 copy of 8B parameters
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.pad_token_id = 0
    return model.eval()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def forward_ms(graphed, cache, length: int, n: int, device, reps: int) -> float | None:
    """Median ms of one graphed forward of ``n`` tokens at ``length`` (the cache rewound before each)."""
    if graphed is None or graphed.reason is not None:
        return None
    tokens = torch.ones(n, dtype=torch.long, device=device)
    times = []
    for _ in range(reps + 2):
        truncate(cache, length)
        _, seconds = timed(lambda: graphed(tokens, n), device)
        times.append(seconds)
    truncate(cache, length)
    return 1e3 * statistics.median(times[2:])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (a CPU smoke run of this script)")
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--draft-len", type=int, default=5)
    ap.add_argument("--reps", type=int, default=2, help="timed runs per method (medians; methods interleaved)")
    ap.add_argument("--drafters", default="0.5b,head", help="drafter shapes besides the target copy (0.5b,1b,head)")
    ap.add_argument("--static-for", default="random-0.5b", help="the pool also timed with static caches, no graphs")
    ap.add_argument("--out", type=Path, default=Path("bench/out/gpu_decode.json"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    vocab = 512 if args.tiny else args.vocab

    target = build("8b", vocab, device, dtype, 0, args.tiny)
    drafters = {"copy": target}
    for i, shape in enumerate(s for s in args.drafters.split(",") if s):
        drafters[f"random-{shape}"] = build(shape, vocab, device, dtype, 10 + i, args.tiny)
    ngram = hs.NGramDrafter()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (1, args.prompt_tokens), generator=gen).to(device)
    common = dict(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    k = args.draft_len

    def spec(cache, graphed, objective="mat"):
        return hs.SpecConfig(cache_implementation=cache, cuda_graphs=graphed, objective=objective, draft_len=k,
                             timings="auto")  # CUDA events on a GPU: no extra syncs

    methods = {"plain (eager)": lambda: target.generate(ids, **common),
               "plain (static cache)": lambda: target.generate(ids, cache_implementation="static", **common)}
    for name, model in drafters.items():
        methods[f"hf-assisted:{name} (K={k})"] = (
            lambda m=model: target.generate(ids, assistant_model=m, num_assistant_tokens=k,
                                            num_assistant_tokens_schedule="constant", **common))
        methods[f"hf-assisted:{name} (HF schedule)"] = lambda m=model: target.generate(ids, assistant_model=m,
                                                                                        **common)
        modes = {"eager": (None, False), "static": ("static", False), "graphs": ("static", True)}
        if name != args.static_for:  # static without graphs once is enough to tell the graphs' share
            del modes["static"]
        for mode, (cache, graphed) in modes.items():
            pool = [model, ngram]
            methods[f"hedgespec[{name}+ngram] K={k} {mode}"] = (
                lambda p=pool, c=cache, g=graphed: hs.generate(target, ids, drafters=p, spec_config=spec(c, g),
                                                               **common))
        methods[f"hedgespec[{name}+ngram] throughput graphs"] = (
            lambda p=[model, ngram]: hs.generate(target, ids, drafters=p, draft_len=8,
                                                 spec_config=spec("static", True, "throughput"), **common))
    methods["hedgespec[all] throughput graphs"] = lambda: hs.generate(
        target, ids, drafters=[*drafters.values(), ngram], draft_len=8, spec_config=spec("static", True, "throughput"),
        **common)

    results: dict = {name: {"wall_s": [], "errors": []} for name in methods}
    names = list(methods)
    for name in tqdm(names, desc="warm-up (captures, compiles)"):
        try:
            methods[name]()
        except Exception as err:  # noqa: BLE001 - a method that cannot run is reported, not fatal
            results[name]["errors"].append(f"{type(err).__name__}: {err}"[:300])
    reference = None
    for rep in tqdm(range(args.reps), desc="timed"):
        order = names[rep % len(names):] + names[: rep % len(names)]  # rotated: no method always runs first
        for name in order:
            if results[name]["errors"]:
                continue
            out, seconds = timed(methods[name], device)
            entry = results[name]
            entry["wall_s"].append(seconds)
            sequences = out.sequences if isinstance(out, hs.SpeculativeOutput) else out
            tokens = sequences[0, ids.shape[1]:].tolist()
            if name == "plain (eager)":
                reference = tokens
            entry.setdefault("tokens", tokens)
            if isinstance(out, hs.SpeculativeOutput):
                s = out.stats
                entry.update(rounds=s.rounds, mean_accepted=s.mean_accepted, host_syncs_per_round=s.host_syncs /
                             max(s.rounds, 1), prefill_ms=1e3 * s.prefill_s,
                             ms_per_round={p: 1e3 * v / max(s.rounds, 1) for p, v in s.phase_seconds.items()},
                             drafter_counts=s.drafter_counts)

    table = {}
    for name, entry in results.items():
        row = {"errors": entry["errors"]} if entry["errors"] else {}
        if entry["wall_s"]:
            wall = statistics.median(entry["wall_s"])
            row.update(wall_s=wall, tokens_per_s=args.new_tokens / wall,
                       identical_to_plain=None if reference is None else entry["tokens"] == reference,
                       **{key: entry[key] for key in ("rounds", "mean_accepted", "host_syncs_per_round", "prefill_ms",
                                                      "ms_per_round", "drafter_counts") if key in entry})
            if "rounds" in entry:
                row["ms_per_round_total"] = 1e3 * (wall - entry["prefill_ms"] / 1e3) / max(entry["rounds"], 1)
        table[name] = row

    # the graphed forwards alone, on the caches the graphed runs kept: the bound's right-hand side
    bounds = {}
    target_kept = graphs._KEPT.get(target, {}).get("target")
    verify_ms = forward_ms(target_kept[2], target_kept[1], ids.shape[1], k + 1, device, 10) if target_kept else None
    for name, model in drafters.items():
        kept = graphs._KEPT.get(model, {}).get("drafter")
        step_ms = forward_ms(kept[2], kept[1], ids.shape[1], 1, device, 10) if kept else None
        round_entry = table.get(f"hedgespec[{name}+ngram] K={k} graphs", {})
        bounds[name] = dict(verify_ms=verify_ms, drafter_step_ms=step_ms,
                            forwards_ms=None if verify_ms is None or step_ms is None else verify_ms + k * step_ms,
                            round_ms=round_entry.get("ms_per_round_total"),
                            why_not=None if kept is None or kept[2] is None else kept[2].reason)
        if bounds[name]["forwards_ms"] and bounds[name]["round_ms"]:
            bounds[name]["round_over_forwards"] = bounds[name]["round_ms"] / bounds[name]["forwards_ms"]

    import transformers
    meta = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()})",
                torch=torch.__version__, transformers=transformers.__version__, date=time.strftime("%Y-%m-%d"),
                dtype=str(dtype), tiny=args.tiny, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                draft_len=k, reps=args.reps)
    report = dict(meta=meta, methods=table, graphed_bound=bounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(meta))
    print(f"{'method':<48}{'tok/s':>8}{'ms/round':>10}{'MAT':>6}{'syncs/rd':>9}  same  phases (ms/round) | error")
    for name, row in table.items():
        phases = " ".join(f"{p[:3]}={v:.2f}" for p, v in row.get("ms_per_round", {}).items())
        nan = float("nan")
        print(f"{name:<48}{row.get('tokens_per_s', nan):>8.1f}{row.get('ms_per_round_total', nan):>10.2f}"
              f"{row.get('mean_accepted', nan):>6.2f}{row.get('host_syncs_per_round', nan):>9.2f}  "
              f"{str(row.get('identical_to_plain', '')):<5} {phases} {'; '.join(row.get('errors', []))[:120]}")
    print("graphed forwards vs round:", json.dumps(bounds))
    return report


if __name__ == "__main__":
    main()
