"""What oneDNN's packed fp32 linears (hs.apply_onednn_linears) change on this CPU: a target forward over 1, 2, 4, 8
and 17 new tokens after a 300-token cache, and plain greedy generate()'s tokens/s, torch's default linears against
oneDNN's, in one process (the model is patched in place after the default's run, then both logits are compared).

    python bench/onednn_linears.py --pool qwen-coder [--model target] [--threads 2]

Prints one table and writes it as JSON beside the other results (--out). Figures only; nothing here is asserted.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers
from transformers import DynamicCache

from hedgespec_fast import apply_onednn_linears, models
from hedgespec_fast.modeling import forward_logits

TOKENS = (1, 2, 4, 8, 17)


def forward_ms(model, context: torch.Tensor, repeats: int) -> dict[int, float]:
    """Median milliseconds of a forward over k new tokens after ``context`` (its cache cropped back each time)."""
    out = {}
    with torch.no_grad():
        cache = DynamicCache()
        forward_logits(model, context[0], cache, keep=1)
        for k in TOKENS:
            times = []
            for r in range(repeats + 1):
                x = torch.randint(100, 20000, (k,), generator=torch.Generator().manual_seed(r))
                start = time.perf_counter()
                forward_logits(model, x, cache, keep=k)  # a verification keeps every row's logits
                times.append(time.perf_counter() - start)
                cache.crop(-k)
            out[k] = 1e3 * statistics.median(times[1:])  # the first is a warm-up
    return out


def generate_tps(model, prompt: torch.Tensor, new_tokens: int) -> tuple[float, list[int]]:
    with torch.no_grad():
        model.generate(prompt, do_sample=False, max_new_tokens=4, eos_token_id=None)  # warm-up
        start = time.perf_counter()
        out = model.generate(prompt, do_sample=False, max_new_tokens=new_tokens, eos_token_id=None)
    return new_tokens / (time.perf_counter() - start), out[0, prompt.shape[1]:].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", default="qwen-coder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("bench/out/onednn_linears.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, target, _ = models.load(args.pool, dtype=torch.float32, drafters=[])
    context = torch.randint(100, 20000, (1, 300), generator=torch.Generator().manual_seed(0))
    probe = torch.randint(100, 20000, (1, 17), generator=torch.Generator().manual_seed(1))
    rows = {}
    with torch.no_grad():
        reference = target(probe).logits
    rows["torch default"] = dict(forward_ms=forward_ms(target, context, args.repeats))
    rows["torch default"]["generate_tok_s"], plain = generate_tps(target, context[:, :64], args.new_tokens)
    apply_onednn_linears(target)
    rows["oneDNN"] = dict(forward_ms=forward_ms(target, context, args.repeats))
    rows["oneDNN"]["generate_tok_s"], patched = generate_tps(target, context[:, :64], args.new_tokens)
    with torch.no_grad():
        diff = (target(probe).logits - reference).abs().max().item()
    print(f"{'linears':<14}" + "".join(f"{f'{k} tok ms':>11}" for k in TOKENS) + f"{'generate tok/s':>16}")
    for name, row in rows.items():
        print(f"{name:<14}" + "".join(f"{row['forward_ms'][k]:>11.0f}" for k in TOKENS)
              + f"{row['generate_tok_s']:>16.2f}")
    for name, row in rows.items():
        one = row["forward_ms"][1]
        print(f"{name}: a 17-token forward costs {row['forward_ms'][17] / one:.2f} one-token forwards")
    print(f"max |Δ logit| {diff:.1e}; greedy continuations equal: {plain == patched}")
    meta = dict(date=time.strftime("%Y-%m-%d"), cpu=platform.processor() or platform.machine(), threads=args.threads,
                torch=torch.__version__, transformers=transformers.__version__, pool=args.pool, context=300)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows, max_abs_logit_diff=diff,
                                        greedy_equal=plain == patched), indent=2))


if __name__ == "__main__":
    main()
