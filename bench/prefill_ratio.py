"""Why catch-up prices are ratios to the target's prompt forward: seconds of a prompt forward of the target and each
model drafter of a pool at several prompt lengths, per token and as a ratio to the target (the cost model's
``prefill_ratio``). Per-token seconds fall with the length (fixed costs), the ratio does not.

    python bench/prefill_ratio.py --pool qwen-coder [--dtype bfloat16] [--threads 2] [--lengths 30,100,300,500]

Prints one table (the lower of two passes per cell); figures only, nothing asserted.
"""
from __future__ import annotations

import argparse
import time

import torch
from transformers import DynamicCache

from hedgespec_fast import models
from hedgespec_fast.drafters.ngram import NGramDrafter
from hedgespec_fast.modeling import forward_logits


def prompt_seconds(model, tokens: torch.Tensor, passes: int = 2) -> float:
    best = float("inf")
    with torch.no_grad():
        for _ in range(passes):
            start = time.perf_counter()
            forward_logits(model, tokens, DynamicCache(), keep=1)
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", default="qwen-coder")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lengths", default="30,100,300,500")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, target, drafters = models.load(args.pool, dtype=getattr(torch, args.dtype))
    named = [("target", target)] + [(n, d) for n, d in drafters.items() if not isinstance(d, NGramDrafter)]
    prompt_seconds(target, torch.randint(100, 20000, (8,)))  # warm-up: a first forward runs cold
    print(f"{'tokens':>7}" + "".join(f"{n + ' ms':>22}" for n, _ in named) + "   ratio to the target")
    for length in [int(x) for x in args.lengths.split(",")]:
        tokens = torch.randint(100, 20000, (length,), generator=torch.Generator().manual_seed(length))
        seconds = [prompt_seconds(m, tokens) for _, m in named]
        print(f"{length:>7}" + "".join(f"{1e3 * s:>14.0f} ({1e3 * s / length:4.1f}/t)" for s in seconds)
              + "   " + " ".join(f"{s / seconds[0]:.2f}" for s in seconds[1:]))


if __name__ == "__main__":
    main()
