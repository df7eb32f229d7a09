"""How often each drafter of a pool agrees with the target: teacher-forced on the target's greedy answers to
Spec-Bench prompts, the share of positions where the drafter's argmax is the target's token (top-1), and where the
target's token is among the drafter's top 2 and top 4 (what a draft tree could catch). Exact counts, not timings.

    python bench/drafter_agreement.py --drafters qwen-0.5b,qwen-0.5b-int8 --dynamic-int8
    python bench/drafter_agreement.py --categories coding,writing --max-new-tokens 64 --json out.json

``--dynamic-int8`` adds ``dynamic-int8``: the 0.5B with every linear quantized by ``torch.ao`` dynamic quantization,
activations included (the copy ``models.int8_copy`` made before it kept activations in bf16), for comparison.
"""
from __future__ import annotations

import argparse
import json

import torch
from torch import nn
from tqdm import tqdm

from hedgespec_fast import models
from hedgespec_fast.benchmark import _default_spec_bench
from hedgespec_fast.headtohead import spec_bench_prompts
from hedgespec_fast.quantize import dynamic_int8

CATEGORIES = "coding,summarization,rag,writing,math_reasoning"


def dynamic_int8_copy(source) -> nn.Module:
    """The drafter ``source`` with torch.ao dynamic quantization of every linear (the earlier int8 recipe)."""
    from transformers import AutoModelForCausalLM

    return dynamic_int8(AutoModelForCausalLM.from_pretrained(models.model_dir(source), dtype=torch.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", default="qwen-coder")
    parser.add_argument("--drafters", default="qwen-0.5b,qwen-0.5b-int8,qwen-1.5b-int8")
    parser.add_argument("--dynamic-int8", action="store_true")
    parser.add_argument("--categories", default=CATEGORIES)
    parser.add_argument("--per-category", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer, target, drafters = models.load(args.pool, dtype=torch.bfloat16, drafters=args.drafters.split(","))
    if args.dynamic_int8:
        drafters["dynamic-int8"] = dynamic_int8_copy(models.QWEN_05B)
    categories = args.categories.split(",")
    prompts = spec_bench_prompts(_default_spec_bench(), tokenizer, args.per_category, 800, 0, code=False,
                                 categories=CATEGORIES.split(","))  # the bench's draw, whatever is printed
    prompts = [p for p in prompts if p.category in categories]
    rows = []
    with torch.no_grad():
        for p in tqdm(prompts, desc="prompts"):
            out = target.generate(p.ids, max_new_tokens=args.max_new_tokens, do_sample=False)
            answer = out[0, p.ids.shape[1]:]
            for name, model in drafters.items():
                logits = model(out).logits[0, p.ids.shape[1] - 1 : -1].float()
                top = logits.topk(4, dim=-1).indices
                hit = top == answer[:, None]
                rows.append(dict(category=p.category, drafter=name, positions=int(answer.shape[0]),
                                 top1=float(hit[:, 0].float().mean()), top2=float(hit[:, :2].any(-1).float().mean()),
                                 top4=float(hit.any(-1).float().mean())))
    print(f"{'category':16s} {'drafter':16s} top1  top2  top4")
    for r in rows:
        print(f"{r['category']:16s} {r['drafter']:16s} {r['top1']:.2f}  {r['top2']:.2f}  {r['top4']:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
