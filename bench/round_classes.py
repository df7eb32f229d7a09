"""Where a policy's time goes on the zoo, by kind of round: n-gram lookup, model drafter, plain step, and the rounds
that ran an evaluation — rounds, tokens, seconds, tokens per second and phase seconds of each, from the per-round
records (``stats.records``). The diagnosis behind issue 10's throughput work: compare a learner's model-drafter
rounds with a plain step's rate in the same run.

    python bench/round_classes.py hedgespec fixed:6            # one held-out prompt per domain, 128 tokens
    python bench/round_classes.py hedgespec --prompts 2 --new-tokens 64
"""
from __future__ import annotations

import argparse
import collections

import torch

import hedgespec_fast as hs
from hedgespec_fast import zoo

EVALUATION_SECONDS = 0.005  # a round whose evaluate phase took longer ran a (model) evaluation


def classify(records, lookup: int) -> dict:
    """``{kind: [rounds, tokens, seconds, {phase: seconds}]}`` for the kinds of round (a round is in its drafting kind
    and, when it ran an evaluation, also in ``evaluation``)."""
    kinds = collections.defaultdict(lambda: [0, 0, 0.0, collections.Counter()])
    for r in records:
        kind = "plain" if r.drafted == 0 else "lookup" if r.chosen == lookup else "model"
        names = [kind, "all"] + (["evaluation"] if r.times["evaluate"] > EVALUATION_SECONDS else [])
        for name in names:
            row = kinds[name]
            row[0] += 1
            row[1] += r.emitted
            row[2] += sum(r.times.values())
            row[3].update(r.times)
    return kinds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("policies", nargs="+")
    ap.add_argument("--prompts", type=int, default=1, help="held-out prompts per domain")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tok, target, drafters = zoo.load()
    pool = list(drafters.values()) + [hs.NGramDrafter()]
    lookup = len(pool) - 1
    domains = [d for d in zoo.manifest()["domains"] if d in drafters]
    prompts = [tok(p, return_tensors="pt", add_special_tokens=False).input_ids
               for d in domains for p in zoo.heldout_prompts(d, n=args.prompts, prompt_tokens=48, seed=0)]
    for policy in args.policies:
        records, wall, tokens = [], 0.0, 0
        for ids in prompts:
            out = hs.generate(target, ids, drafters=pool, max_new_tokens=args.new_tokens, policy=policy,
                              eos_token_id=None)
            records += out.stats.records
            wall += out.stats.wall_s
            tokens += out.stats.new_tokens
        print(f"{policy}: {tokens / wall:.1f} tok/s over {len(prompts)} prompts (prefill included)")
        kinds = classify(records, lookup)
        for name in ("all", "lookup", "model", "plain", "evaluation"):
            if name not in kinds:
                continue
            rounds, emitted, seconds, phases = kinds[name]
            split = ", ".join(f"{p} {1e3 * phases[p] / rounds:.2f}" for p in ("select", "draft", "verify", "evaluate",
                                                                              "update"))
            print(f"  {name:<11} {rounds:4d} rounds {emitted:5d} tokens {emitted / seconds:7.1f} tok/s  "
                  f"{1e3 * seconds / rounds:6.2f} ms/round  (ms/round: {split})")


if __name__ == "__main__":
    main()
