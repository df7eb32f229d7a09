"""``hedgespec demo``: the trained zoo, prompts from several domains in mixed order, every kind of policy.

Offline and CPU-friendly (about a minute on an idle machine). Prints MAT, tokens/s and the share of rounds spent on
the prompt's own domain expert per policy — hedgespec with the default throughput objective and with the paper's MAT
objective, the bandits, every fixed drafter, the per-prompt oracle (best MAT in hindsight) and the fastest fixed
drafter per prompt (both read off the fixed runs) and the target alone — then MAT per domain, checks every greedy
output against plain ``target.generate()``, and saves a plot (regret vs rounds, drafter share).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from . import benchmark, zoo

# hedgespec (throughput objective, the default) and as in the paper (MAT objective), the bandits, random
DEMO_POLICIES = ("hedgespec", "hedgespec@objective=mat", "ucbspec", "exp3spec", "metasd", "random")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="hedgespec demo", description=__doc__.splitlines()[0])
    parser.add_argument("--per-domain", type=int, default=2, help="held-out prompts per domain")
    parser.add_argument("--prompt-tokens", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--draft-len", type=int, default=5)
    parser.add_argument("--sample", action="store_true", help="speculative sampling instead of greedy")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (with --sample)")
    parser.add_argument("--warm", action="store_true", help="learners keep their state across prompts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=Path("hedgespec_demo.png"))
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    return parser


def per_domain_table(summary: dict, workload_name: str, domains: list[str]) -> str:
    table = summary["workloads"][workload_name]
    lines = [f"{'MAT by domain':<16}" + "".join(f"{d:>9}" for d in domains)]
    for policy, entry in sorted(table.items(), key=lambda kv: -kv[1]["mean_accepted"]):
        cells = "".join(f"{entry['per_domain_mat'].get(d, float('nan')):>9.2f}" for d in domains)
        lines.append(f"{policy:<16}{cells}")
    return "\n".join(lines)


def main(argv=None, args=None) -> dict:
    args = args or build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    tokenizer, target, drafters = zoo.load(device=args.device)
    domains = [d for d in zoo.manifest()["domains"] if d in drafters]
    prompts = {d: zoo.heldout_prompts(d, n=args.per_domain, prompt_tokens=args.prompt_tokens, seed=args.seed)
               for d in domains}
    workloads = {"mixed": benchmark.workload("mixed", prompts, seed=args.seed)}
    names = list(drafters) + ["ngram"]
    policies = list(DEMO_POLICIES) + [f"fixed:{i}" for i in range(len(names))] + ["oracle", benchmark.BASELINE]
    print(f"zoo: target + drafters {names}; {len(workloads['mixed'])} prompts from {domains} in mixed order; "
          f"{args.max_new_tokens} new tokens each; {f'sampling T={args.temperature}' if args.sample else 'greedy'}; "
          f"device {args.device}")
    results = benchmark.run(target, drafters, tokenizer, workloads, policies, max_new_tokens=args.max_new_tokens,
                            draft_len=args.draft_len, do_sample=args.sample, temperature=args.temperature,
                            seed=args.seed, warm=args.warm)
    expert_of = {d: names.index(d) for d in domains}
    summary = benchmark.summarize(results, expert_of)
    print()
    print(benchmark.format_table(summary, "mixed"))
    print("\n(fixed:i = always drafter i: " + ", ".join(f"{i}={n}" for i, n in enumerate(names)) + ")\n")
    print(per_domain_table(summary, "mixed", domains))
    compared, mismatches = benchmark.identical_to_target(results)
    if args.sample:
        print("\n(sampling: outputs follow the target's distribution; they are not compared token for token)")
    elif mismatches:
        print(f"\n{len(mismatches)} of {compared} greedy outputs differ from target.generate(): {mismatches}")
    else:
        print(f"\nevery greedy output ({compared}: {len(policies) - 1} policies × {len(workloads['mixed'])} prompts) "
              "was compared with target.generate() on the same prompt: identical")
    plot = benchmark.plot(results, "mixed", args.plot,
                          policies=["hedgespec", "hedgespec@objective=mat", "ucbspec", "exp3spec", "metasd", "random"])
    elapsed = time.perf_counter() - started
    print(f"\nplot: {plot}   total time {elapsed:.0f} s")
    report = {
        "policies": summary["workloads"]["mixed"],
        "drafters": names,
        "workload": "mixed",
        "domains": domains,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "elapsed_s": elapsed,
        "identical_to_target": None if args.sample else {"compared": compared, "mismatches": mismatches},
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"json: {args.json}")
    return report


if __name__ == "__main__":
    main()
