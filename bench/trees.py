"""Chains vs draft trees vs multi-draft: mean accepted tokens per target forward (MAT) and tokens/s.

Every configuration decodes the same prompts with the same target; the tree budgets are equal where it matters
(``dynamic`` and ``shared`` both verify 24 draft tokens a round), so ``shared`` (the policy's weights share the tree's
tokens among drafters) is compared with a single-drafter dynamic tree at the same cost in target work.

Models: the trained zoo when it is installed (``--zoo``: ``hedgespec_fast.zoo.load()``, held-out prompts of every
domain), else a tiny synthetic family (default): a 4-layer llama target whose layers after the first add little
(their output projections scaled by ``--residual-scale``), so that its 1- and 2-layer truncations are cheap drafters of
realistic quality (the argmax is often in their top-4 but not always their top-1: the regime trees are for), a
noisy 1-layer copy (a poor drafter) and the n-gram drafter.

    python bench/trees.py                                  # tiny models, CPU, greedy and sampling
    python bench/trees.py --zoo --json bench/trees_zoo.json
    python bench/trees.py --quick                          # a smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tiny import noisy_copy, tiny_model, truncated_copy  # noqa: E402

import hedgespec_fast as hs  # noqa: E402

TREES = {
    "chain K=5": None,
    "static 3x2 (14)": "static:depth=3,topk=2",
    "dynamic 5/4/24": "depth=5,topk=4,total=24",
    "multi: 4 sampled chains": "chains:k=4,depth=5",
    "multi: top-2 drafters' chains": "drafters:k=2,depth=5",
    "multi: shared 5/4/24": "shared:depth=5,topk=4,total=24",
}


def tiny_family(vocab: int, hidden: int, residual_scale: float, seed: int):
    target = tiny_model("llama", seed=seed, vocab=vocab, hidden=hidden, layers=4, max_positions=2048)
    with torch.no_grad():
        for layer in target.model.layers[1:]:
            layer.self_attn.o_proj.weight.mul_(residual_scale)
            layer.mlp.down_proj.weight.mul_(residual_scale)
    drafters = {"trunc-1": truncated_copy(target, 1), "trunc-2": truncated_copy(target, 2),
                "noisy-1": noisy_copy(truncated_copy(target, 1), 0.3, seed + 1)}
    gen = torch.Generator().manual_seed(seed)
    prompts = [("random", torch.randint(2, vocab, (1, 32), generator=gen)) for _ in range(6)]
    return target, drafters, prompts


def zoo_family(n_per_domain: int, prompt_tokens: int, device: str = "cpu"):
    from hedgespec_fast import zoo

    tokenizer, target, drafters = zoo.load(device=device)
    prompts = []
    for domain, texts in zoo.heldout_prompts(None, n=n_per_domain, prompt_tokens=prompt_tokens).items():
        prompts += [(domain, tokenizer(t, return_tensors="pt", add_special_tokens=False).input_ids.to(device))
                    for t in texts]
    return target, drafters, prompts


def run_config(target, pool, prompts, tree, policy, do_sample, new_tokens, temperature=1.0):
    totals = dict(new_tokens=0, rounds=0, drafted=0, accepted=0, syncs=0, wall_s=0.0)
    counts = [0] * len(pool)
    for i, (_, prompt) in enumerate(prompts):
        out = hs.generate(target, prompt, drafters=pool, max_new_tokens=new_tokens, tree=tree, policy=policy,
                          do_sample=do_sample, temperature=temperature, seed=i, eos_token_id=None)
        s = out.stats
        for key, value in (("new_tokens", s.new_tokens), ("rounds", s.rounds), ("drafted", s.drafted_tokens),
                           ("accepted", s.accepted_tokens), ("syncs", s.host_syncs), ("wall_s", s.wall_s)):
            totals[key] += value
        counts = [a + b for a, b in zip(counts, s.drafter_counts)]
    rounds = max(totals["rounds"], 1)
    return {
        "mat": totals["new_tokens"] / rounds,
        "tokens_per_s": totals["new_tokens"] / totals["wall_s"],
        "ms_per_round": 1e3 * totals["wall_s"] / rounds,
        "draft_tokens_per_round": totals["drafted"] / rounds,
        "accepted_per_round": totals["accepted"] / rounds,
        "host_syncs_per_round": totals["syncs"] / rounds,
        "target_forwards": totals["rounds"],
        "drafter_share": [c / rounds for c in counts],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", action="store_true", help="use the trained zoo (hedgespec_fast.zoo.load())")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--residual-scale", type=float, default=0.15)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--prompts-per-domain", type=int, default=2)
    ap.add_argument("--policies", default="fixed:best,hedgespec,ucbspec")
    ap.add_argument("--modes", default="greedy,sampling")
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    ap.add_argument("--trees", default=",".join(TREES), help="comma-separated names from TREES")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--quick", action="store_true", help="2 prompts x 24 tokens, greedy, two configurations")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.zoo:
        target, drafters, prompts = zoo_family(args.prompts_per_domain, 64, args.device)
    else:
        target, drafters, prompts = tiny_family(args.vocab, args.hidden, args.residual_scale, seed=0)
        target, prompts = target.to(args.device), [(d, p.to(args.device)) for d, p in prompts]
        drafters = {name: model.to(args.device) for name, model in drafters.items()}
    pool = list(drafters.values()) + [hs.NGramDrafter()]
    names = list(drafters) + ["ngram"]
    trees = {name: TREES[name] for name in args.trees.split(",")}
    if args.quick:
        prompts, args.new_tokens, args.modes = prompts[:2], 24, "greedy"
        trees = {k: trees[k] for k in ("chain K=5", "dynamic 5/4/24")}

    # The best single drafter (highest chain MAT, greedy) stands in for a well-chosen fixed drafter.
    best = max(range(len(pool)), key=lambda i: run_config(target, pool, prompts[:2], None, f"fixed:{i}", False,
                                                          min(args.new_tokens, 32))["mat"])
    policies = [p.replace("fixed:best", f"fixed:{best}") for p in args.policies.split(",")]
    hs.generate(target, prompts[0][1], drafters=pool, max_new_tokens=8, tree="depth=2", eos_token_id=None)  # warm-up

    rows = []
    grid = [(m, t, p) for m in args.modes.split(",") for t in trees for p in policies]
    for mode, tree_name, policy in tqdm(grid, desc="configs"):
        result = run_config(target, pool, prompts, trees[tree_name], policy, mode == "sampling", args.new_tokens,
                            args.temperature)
        rows.append({"mode": mode, "tree": tree_name, "spec": trees[tree_name], "policy": policy, **result})

    meta = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "threads": args.threads,
        "torch": torch.__version__, "models": "zoo" if args.zoo else "tiny",
        "drafters": names, "best_fixed": names[best], "prompts": len(prompts), "new_tokens": args.new_tokens,
        "temperature": args.temperature,
        "load_average": os.getloadavg()[0], "command": "python bench/trees.py " + " ".join(argv or sys.argv[1:]),
    }
    print(f"\n{json.dumps(meta)}")
    print(f"{'mode':<9}{'tree':<31}{'policy':<11}{'MAT':>6}{'tok/s':>8}{'ms/rd':>8}{'draft/rd':>9}{'syncs/rd':>9}")
    for r in rows:
        print(f"{r['mode']:<9}{r['tree']:<31}{r['policy']:<11}{r['mat']:>6.2f}{r['tokens_per_s']:>8.1f}"
              f"{r['ms_per_round']:>8.1f}{r['draft_tokens_per_round']:>9.1f}{r['host_syncs_per_round']:>9.2f}")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
