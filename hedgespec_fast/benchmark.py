"""End-to-end benchmark: workloads of prompts, every policy, and the numbers a reader needs to judge selection.

Workloads (lists of ``(domain, text)``): ``single:<domain>``, ``mixed`` (all domains, shuffled), ``shift`` (domain
blocks, the distribution moves), ``spec_bench`` (generic chat prompts: expect low acceptance; it shows robustness).
Metrics per policy: MAT (tokens per target call), tokens/s, rounds, drafter counts, share of rounds on the prompt's
own expert, and regret against the per-prompt oracle (how many tokens behind the best fixed drafter in hindsight the
policy is after the same number of target calls).

Results are written per (workload, policy) unit to a JSONL file as soon as the unit finishes, so a long run that is
stopped resumes where it was (``resume=True``).
"""
from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import SpecConfig, split_policy_options
from .drafters import NGramDrafter
from .hf import generate
from .learners import make_policy
from .modeling import context_length

LEARNING_POLICIES = ("hedgespec", "hedge", "adanormalhedge", "ucbspec", "exp3spec", "metasd", "tapout", "random")
BASELINE = "target"  # plain target.generate(), no speculation


@dataclass
class Prompt:
    domain: str
    text: str


def spec_bench_prompts(path: str | Path, n: int | None = None, seed: int = 0) -> list[Prompt]:
    """First turns of Spec-Bench questions (category as the domain)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if n is not None:
        rows = random.Random(seed).sample(rows, min(n, len(rows)))
    return [Prompt(f"spec_bench/{r['category']}", r["turns"][0]) for r in rows]


def workload(kind: str, domain_prompts: dict[str, list[str]], seed: int = 0, spec_bench: str | Path | None = None,
             n_spec_bench: int = 16) -> list[Prompt]:
    """Build a workload from held-out prompts per domain."""
    if kind.startswith("single:"):
        domain = kind.split(":", 1)[1]
        return [Prompt(domain, t) for t in domain_prompts[domain]]
    if kind == "mixed":
        items = [Prompt(d, t) for d, texts in domain_prompts.items() for t in texts]
        random.Random(seed).shuffle(items)
        return items
    if kind == "shift":
        return [Prompt(d, t) for d, texts in domain_prompts.items() for t in texts]
    if kind == "spec_bench":
        if spec_bench is None:
            raise ValueError("the spec_bench workload needs the path of Spec-Bench's question.jsonl")
        return spec_bench_prompts(spec_bench, n_spec_bench, seed)
    raise ValueError(f"unknown workload {kind!r}: single:<domain>, mixed, shift or spec_bench")


# hedgespec with its drafters evaluated every 4 rounds (one forward each), and with the acceptance-rate loss
VARIANTS = ("hedgespec@eval_every=4", "hedgespec@loss=acceptance")


def default_policies(n_drafters: int, include_baseline: bool = False) -> list[str]:
    names = list(LEARNING_POLICIES) + list(VARIANTS) + [f"fixed:{i}" for i in range(n_drafters)] + ["oracle"]
    return names + ([BASELINE] if include_baseline else [])


def split_policy_list(text: str) -> list[str]:
    """``"target,hedgespec@objective=mat,eval_every=4,ucbspec"`` → the three policies: a piece with ``=`` and no
    ``@`` continues the previous policy's options."""
    policies: list[str] = []
    for piece in filter(None, (p.strip() for p in text.split(","))):
        if policies and "=" in piece and "@" not in piece and "@" in policies[-1]:
            policies[-1] += "," + piece
        else:
            policies.append(piece)
    return policies


def _encode(tokenizer, text: str, device, limit: int | None = None) -> torch.Tensor:
    """Token ids ``[1, L]``; prompts longer than ``limit`` keep their last ``limit`` tokens (where the question is)."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    if limit is not None and ids.shape[1] > limit:
        ids = ids[:, -limit:]
    return ids.to(device)


def _prompt_limit(target, pool: list, max_new_tokens: int) -> int | None:
    """The longest prompt every model can take with ``max_new_tokens`` more positions."""
    contexts = [context_length(m) for m in [target] + [getattr(d, "model", d) for d in pool] if hasattr(m, "config")]
    contexts = [c for c in contexts if c is not None]
    return min(contexts) - max_new_tokens if contexts else None


def variant(policy: str, spec: SpecConfig | None) -> tuple[str, SpecConfig]:
    """Split ``"name@key=value,…"`` into the policy name and ``spec`` with those :class:`SpecConfig` fields set."""
    name, overrides = split_policy_options(policy)
    return name, SpecConfig.from_kwargs(spec, **overrides)


class PolicyRun:
    """One policy over one workload, a prompt at a time (so policies can be interleaved prompt by prompt).

    ``policy`` may carry options for this run only: ``"hedgespec@eval_every=4,loss=acceptance"``; with ``warm`` a
    learning policy keeps its state from prompt to prompt.
    """

    def __init__(self, policy: str, target, pool: list, tokenizer, *, max_new_tokens: int, draft_len: int,
                 do_sample: bool, seed: int, warm: bool, spec: SpecConfig | None = None, temperature: float = 1.0):
        self.policy, self.target, self.pool, self.tokenizer = policy, target, pool, tokenizer
        self.max_new_tokens, self.draft_len, self.do_sample, self.seed = max_new_tokens, draft_len, do_sample, seed
        self.temperature = temperature
        self.device = next(target.parameters()).device
        self.name, self.spec = variant(policy, spec)
        self.shared = make_policy(self.name, len(pool), self.spec) if warm and self.name in LEARNING_POLICIES else None
        self.limit = _prompt_limit(target, pool, max_new_tokens)
        self.warmed = False

    def _generate(self, ids, max_new_tokens, **sampling):
        return generate(self.target, ids, drafters=self.pool, max_new_tokens=max_new_tokens,
                        policy=self.shared or self.name, draft_len=self.draft_len, spec_config=self.spec,
                        eos_token_id=None, **sampling)

    def prompt(self, index: int, prompt: Prompt) -> dict:
        """Generate for one prompt; its summary row."""
        ids = _encode(self.tokenizer, prompt.text, self.device, self.limit)
        sampling = dict(seed=self.seed + index)
        if self.do_sample:
            sampling.update(do_sample=True, temperature=self.temperature)
        if self.device.type == "cuda" and self.policy != BASELINE and not self.warmed:
            # Untimed warm-up with a fresh learner: Triton compiles each kernel variant on its first call, which
            # would otherwise land in the first prompt's wall time.
            generate(self.target, ids, drafters=self.pool, max_new_tokens=min(8, self.max_new_tokens),
                     policy=self.name, draft_len=self.draft_len, spec_config=self.spec, eos_token_id=None, **sampling)
        self.warmed = True
        if self.policy == BASELINE:
            row = _baseline(self.target, ids, self.max_new_tokens, dict(sampling))
        else:
            start = time.perf_counter()  # timed around the call, like the baseline: generate()'s setup included
            out = self._generate(ids, self.max_new_tokens, **sampling)
            if ids.device.type == "cuda":
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
            s = out.stats
            row = dict(new_tokens=s.new_tokens, rounds=s.rounds, wall_s=wall, drafter_counts=s.drafter_counts,
                       no_draft_rounds=s.no_draft_rounds,
                       chosen=[r.chosen for r in s.records], emitted=[r.emitted for r in s.records],
                       host_syncs=s.host_syncs, oracle_choice=s.oracle_choice, final_weights=s.final_weights,
                       phase_seconds=s.phase_seconds, prefill_s=s.prefill_s, evaluations=s.evaluations,
                       tokens=out.sequences[0, ids.shape[1]:].tolist())
        row.update(domain=prompt.domain, prompt_index=index)
        return row


def run_policy(policy: str, target, pool: list, tokenizer, prompts: list[Prompt], *, progress=None, **kw) -> list:
    """Run one policy over a workload; one summary dict per prompt (see :class:`PolicyRun`)."""
    runner = PolicyRun(policy, target, pool, tokenizer, **kw)
    rows = []
    for index, prompt in enumerate(prompts):
        rows.append(runner.prompt(index, prompt))
        if progress is not None:
            progress.update(1)
    return rows


FASTEST = "fastest fixed"  # the per-prompt oracle in tokens per second


def oracle_rows(fixed_rows: list[list[dict]], by: str = "mat") -> list[dict]:
    """The per-prompt oracle from every fixed drafter's rows (``fixed_rows[i]``: drafter i's, one per prompt): the
    best in hindsight by MAT, then fewer rounds, then lower index (``by="mat"``, the rule ``generate`` uses for
    ``policy="oracle"``), or the fastest (``by="time"``). Its wall time is that fixed run's."""
    def key(rows, i):
        r = rows[i]
        if by == "time":
            return (r["wall_s"] / max(r["new_tokens"], 1), i)
        return (-r["new_tokens"] / max(r["rounds"], 1), r["rounds"], i)

    chosen = []
    for per_prompt in zip(*fixed_rows):
        best = min(range(len(per_prompt)), key=lambda i, rows=per_prompt: key(rows, i))
        chosen.append({**per_prompt[best], "oracle_choice": best})
    return chosen


def _baseline(target, ids, max_new_tokens, sampling) -> dict:
    seed = sampling.pop("seed", 0)
    torch.manual_seed(seed)
    start = time.perf_counter()
    out = target.generate(ids, max_new_tokens=max_new_tokens, eos_token_id=None, pad_token_id=0, **sampling)
    if ids.device.type == "cuda":
        torch.cuda.synchronize()
    new = out.shape[1] - ids.shape[1]
    return dict(new_tokens=new, rounds=new, wall_s=time.perf_counter() - start, drafter_counts=[], chosen=[],
                emitted=[1] * new, host_syncs=new, tokens=out[0, ids.shape[1]:].tolist())


def run(target, drafters: dict, tokenizer, workloads: dict[str, list[Prompt]], policies: list[str], *,
        max_new_tokens: int = 64, draft_len: int = 5, do_sample: bool = False, temperature: float = 1.0,
        seed: int = 0, warm: bool = False,
        ngram: bool = True, record: str | Path | None = None, resume: bool = True, spec: SpecConfig | None = None,
        show_progress: bool = True) -> dict:
    """Run every policy on every workload.

    Returns
    -------
    dict workload → policy → list of per-prompt rows (see :func:`run_policy`), plus ``"_drafters"``: the pool's
    names in policy-index order.
    """
    pool = list(drafters.values()) + ([NGramDrafter()] if ngram else [])
    names = list(drafters) + (["ngram"] if ngram else [])
    done: dict = {}
    record = Path(record) if record else None
    if record and resume and record.exists():
        for line in record.read_text().splitlines():
            unit = json.loads(line)
            done.setdefault(unit["workload"], {})[unit["policy"]] = unit["rows"]
    fixed_names = [f"fixed:{i}" for i in range(len(pool))]
    derive_oracle = "oracle" in policies and all(f in policies for f in fixed_names)
    total = sum(len(p) for w, p in workloads.items() for pol in policies
                if pol not in done.get(w, {}) and not (derive_oracle and pol == "oracle"))
    bar = tqdm(total=total, desc="prompts × policies", disable=not show_progress)
    results: dict = {"_drafters": names}
    for wname, prompts in workloads.items():
        results[wname] = {p: done[wname][p] for p in policies if p in done.get(wname, {})}
        # with every fixed drafter in the run, the oracle is read off their rows instead of rerunning them all
        todo = [p for p in policies if p not in results[wname] and not (derive_oracle and p == "oracle")]
        runners = {p: PolicyRun(p, target, pool, tokenizer, max_new_tokens=max_new_tokens, draft_len=draft_len,
                                do_sample=do_sample, seed=seed, warm=warm, spec=spec, temperature=temperature)
                   for p in todo}
        rows: dict = {p: [] for p in todo}
        for index, prompt in enumerate(prompts):  # interleaved, order rotated: no policy always runs first
            shift = index % max(len(todo), 1)
            for policy in todo[shift:] + todo[:shift]:
                bar.set_postfix_str(f"{wname} / {policy}")
                rows[policy].append(runners[policy].prompt(index, prompt))
                bar.update(1)
        for policy in todo:  # a workload is recorded once every policy has run all its prompts
            results[wname][policy] = rows[policy]
            if record:
                record.parent.mkdir(parents=True, exist_ok=True)
                with record.open("a") as fh:
                    fh.write(json.dumps({"workload": wname, "policy": policy, "rows": rows[policy]}) + "\n")
        if derive_oracle:
            results[wname]["oracle"] = oracle_rows([results[wname][f] for f in fixed_names])
            results[wname][FASTEST] = oracle_rows([results[wname][f] for f in fixed_names], by="time")
        results[wname] = {p: results[wname][p] for p in policies + ([FASTEST] if derive_oracle else [])}
    bar.close()
    return results


# -- aggregation -------------------------------------------------------------------------------------------------------
def _tokens_after_rounds(row: dict, rounds: int) -> int:
    return sum(row["emitted"][:rounds])


def regret_curve(rows: list[dict], oracle_rows: list[dict]) -> list[float]:
    """Mean over prompts of (oracle tokens − policy tokens) after t target calls, t = 1, 2, …, counting a prompt only
    while both runs are still generating (once the faster run has finished, the slower one catches up to the same
    text and the gap would fall back to 0 for everyone: that is not "no regret")."""
    pairs = [(r, o, min(len(r["emitted"]), len(o["emitted"]))) for r, o in zip(rows, oracle_rows)]
    horizon = max((n for _, _, n in pairs), default=0)
    curve = []
    for t in range(1, horizon + 1):
        gaps = [_tokens_after_rounds(o, t) - _tokens_after_rounds(r, t) for r, o, n in pairs if t <= n]
        curve.append(sum(gaps) / len(gaps))
    return curve


def identical_to_target(results: dict) -> tuple[int, list[tuple[str, str, int]]]:
    """Greedy outputs compared with plain ``target.generate()``'s on the same prompts: (outputs compared, mismatches
    as (workload, policy, prompt index)). The fastest fixed drafter's rows are copies of fixed rows: not counted."""
    compared, mismatches = 0, []
    for wname, per_policy in results.items():
        if wname.startswith("_") or BASELINE not in per_policy:
            continue
        reference = {r["prompt_index"]: r.get("tokens") for r in per_policy[BASELINE]}
        for policy, rows in per_policy.items():
            for r in rows:
                if policy in (BASELINE, FASTEST) or r.get("tokens") is None or \
                        reference.get(r["prompt_index"]) is None:
                    continue
                compared += 1
                if r["tokens"] != reference[r["prompt_index"]]:
                    mismatches.append((wname, policy, r["prompt_index"]))
    return compared, mismatches


def summarize(results: dict, expert_of: dict[str, int] | None = None) -> dict:
    """Per workload and policy: MAT, tokens/s, rounds, drafter counts, right-expert share, regret vs the oracle."""
    expert_of = expert_of or {}
    out: dict = {"drafters": results["_drafters"], "workloads": {}}
    for wname, per_policy in results.items():
        if wname.startswith("_"):
            continue
        oracle = per_policy.get("oracle")
        table = {}
        for policy, rows in per_policy.items():
            tokens = sum(r["new_tokens"] for r in rows)
            rounds = sum(r["rounds"] for r in rows)
            wall = sum(r["wall_s"] for r in rows)
            counts = [sum(c) for c in zip(*[r["drafter_counts"] for r in rows])] if rows[0]["drafter_counts"] else []
            on_expert = [(sum(1 for c in r["chosen"] if c == expert_of[r["domain"]]), len(r["chosen"]))
                         for r in rows if r["domain"] in expert_of and r["chosen"]]
            per_domain: dict = {}
            for r in rows:
                t, n = per_domain.get(r["domain"], (0, 0))
                per_domain[r["domain"]] = (t + r["new_tokens"], n + r["rounds"])
            entry = {
                "mean_accepted": tokens / rounds if rounds else 0.0,
                "tokens_per_s": tokens / wall if wall else 0.0,
                "rounds": rounds,
                "new_tokens": tokens,
                "drafter_counts": counts,
                "no_draft_rounds": sum(r.get("no_draft_rounds", 0) for r in rows),
                "right_expert_share": (sum(a for a, _ in on_expert) / sum(b for _, b in on_expert)
                                       if on_expert else None),
                "per_domain_mat": {d: t / n for d, (t, n) in per_domain.items() if n},
            }
            if wall and all("phase_seconds" in r for r in rows):  # where the wall time went (prefill included)
                phases = {k: sum(r["phase_seconds"].get(k, 0.0) for r in rows) for k in rows[0]["phase_seconds"]}
                phases["prefill"] = sum(r.get("prefill_s") or 0.0 for r in rows)
                entry["time_share"] = {k: v / wall for k, v in phases.items()}
            if oracle is not None and policy != BASELINE:
                entry["extra_rounds_vs_oracle"] = rounds - sum(r["rounds"] for r in oracle)
                entry["mat_vs_oracle"] = entry["mean_accepted"] / (sum(r["new_tokens"] for r in oracle) /
                                                                   max(sum(r["rounds"] for r in oracle), 1))
            table[policy] = entry
        out["workloads"][wname] = table
    return out


def format_table(summary: dict, workload_name: str) -> str:
    """A readable table of one workload's summary."""
    table = summary["workloads"][workload_name]
    lines = [f"{'policy':<24}{'MAT':>7}{'vs oracle':>11}{'tok/s':>9}{'rounds':>8}{'on expert':>11}{'eval':>7}"
             f"{'prefill':>9}  drafter counts"]
    order = sorted(table, key=lambda p: -table[p]["mean_accepted"])
    for policy in order:
        e = table[policy]
        share = "" if e["right_expert_share"] is None else f"{100 * e['right_expert_share']:.0f}%"
        ratio = f"{100 * e['mat_vs_oracle']:.1f}%" if "mat_vs_oracle" in e else ""
        times = e.get("time_share", {})
        evaluation = f"{100 * times['evaluate']:.0f}%" if "evaluate" in times else ""
        prefill = f"{100 * times['prefill']:.0f}%" if "prefill" in times else ""
        lines.append(f"{policy:<24}{e['mean_accepted']:>7.3f}{ratio:>11}{e['tokens_per_s']:>9.1f}{e['rounds']:>8}"
                     f"{share:>11}{evaluation:>7}{prefill:>9}  {e['drafter_counts']}"
                     + (f" + {e['no_draft_rounds']} undrafted" if e.get("no_draft_rounds") else ""))
    return "\n".join(lines)


def plot(results: dict, workload_name: str, path: str | Path, policies: list[str] | None = None) -> Path:
    """Left: regret vs rounds (mean over prompts, against the per-prompt oracle). Right: hedgespec's drafter share
    over the whole workload stream (rolling window), with the prompts' domains marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_policy = results[workload_name]
    names = results["_drafters"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    oracle = per_policy.get("oracle")
    if oracle is not None:
        for policy in policies or [p for p in per_policy if p not in ("oracle", BASELINE)]:
            if policy in per_policy:
                left.plot(regret_curve(per_policy[policy], oracle), label=policy,
                          linewidth=2.5 if policy == "hedgespec" else 1.2)
    left.axhline(0, color="grey", linewidth=0.8)
    left.set_xlabel("target calls (rounds) into the prompt")
    left.set_ylabel("tokens behind the per-prompt oracle")
    left.set_title(f"regret vs rounds — {workload_name}")
    left.legend(fontsize=8, ncol=2)
    if "hedgespec" in per_policy:
        _share_over_stream(right, per_policy["hedgespec"], names)
    fig.text(0.01, 0.005, "Left: oracle tokens − policy tokens after t target calls, mean over the prompts on which "
             "both runs are still generating at t (a prompt leaves the mean when either run finishes).",
             fontsize=7, ha="left", va="bottom")
    return _save(fig, path, bottom=0.05)


def _save(fig, path: str | Path, bottom: float = 0.0) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=(0, bottom, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _share_over_stream(ax, rows: list[dict], names: list[str], window: int = 20) -> None:
    chosen = [c for r in rows for c in r["chosen"]]
    if not chosen:
        return
    shares = []
    for i in range(len(names)):
        hits = [1.0 if c == i else 0.0 for c in chosen]
        shares.append([sum(hits[max(0, t - window + 1): t + 1]) / len(hits[max(0, t - window + 1): t + 1])
                       for t in range(len(hits))])
    ax.stackplot(range(len(chosen)), shares, labels=names, alpha=0.85)
    edge = 0
    for r in rows:  # mark where each prompt starts, labelled by its domain
        ax.axvline(edge, color="black", linewidth=0.4)
        ax.text(edge, 1.01, r["domain"].split("/")[-1][:6], fontsize=6, rotation=60, va="bottom")
        edge += len(r["chosen"])
    ax.set_xlim(0, len(chosen))
    ax.set_ylim(0, 1)
    ax.set_xlabel("round (whole workload, prompts in order)")
    ax.set_ylabel(f"hedgespec drafter share (last {window} rounds)")
    ax.legend(fontsize=7, loc="lower right")


# -- the `hedgespec bench` command -------------------------------------------------------------------------------------
def pool_of_size(size: int, target, drafters: dict, seed: int = 0, noise: float = 0.15) -> dict:
    """``size − 1`` model drafters (+ the n-gram drafter): the zoo's drafters first, then noisy copies of them.

    Noisy copies (weights + N(0, (noise·std)²)) are plausible extra drafters of slightly lower quality, so large
    pools have many near-duplicates, as real pools do.
    """
    import copy

    base = list(drafters.items())
    pool = dict(base[: size - 1])
    gen = torch.Generator().manual_seed(seed)
    k = 0
    while len(pool) < size - 1:
        name, model = base[k % len(base)]
        clone = copy.deepcopy(model)
        with torch.no_grad():
            for p in clone.parameters():
                if p.numel() > 1:
                    scale = p.float().std().to(p.dtype) * noise
                    p.add_(torch.randn(p.shape, generator=gen).to(p.device, p.dtype) * scale)
        pool[f"{name}~{k // len(base) + 1}"] = clone
        k += 1
    return pool


def markdown_entry(summary: dict, title: str, meta: dict, pool_sizes: dict | None = None) -> str:
    """A dated RESULTS.md section: one table per workload, then the pool-size sweep if there is one."""
    lines = [f"### {title}", "", "- " + "; ".join(f"{k}: {v}" for k, v in meta.items()), ""]
    for wname, table in summary["workloads"].items():
        lines += [f"**{wname}** (drafters: {', '.join(summary['drafters'])})", "",
                  "| policy | MAT | MAT vs oracle | tok/s | rounds | on own expert | drafter counts |",
                  "|---|---|---|---|---|---|---|"]
        for policy, e in sorted(table.items(), key=lambda kv: -kv[1]["mean_accepted"]):
            share = "" if e["right_expert_share"] is None else f"{100 * e['right_expert_share']:.0f}%"
            ratio = f"{100 * e['mat_vs_oracle']:.1f}%" if "mat_vs_oracle" in e else ""
            lines.append(f"| {policy} | {e['mean_accepted']:.3f} | {ratio} | {e['tokens_per_s']:.1f} | {e['rounds']} | "
                         f"{share} | {e['drafter_counts']} |")
        lines.append("")
    if pool_sizes:
        sizes = sorted(pool_sizes, key=int)
        policies = list(pool_sizes[sizes[0]])
        lines += ["**pool-size sweep, mixed workload** (MAT / % of the per-prompt oracle / tok/s)", "",
                  "| policy | " + " | ".join(f"N = {s}" for s in sizes) + " |", "|---|" + "---|" * len(sizes)]
        for policy in policies:
            cells = []
            for size in sizes:
                e = pool_sizes[size].get(policy)
                ratio = f" / {100 * e['mat_vs_oracle']:.0f}%" if e and "mat_vs_oracle" in e else ""
                cells.append(f"{e['mean_accepted']:.2f}{ratio} / {e['tokens_per_s']:.0f}" if e else "")
            lines.append(f"| {policy} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_pool_sizes(pool_sizes: dict, path: str | Path) -> Path:
    """MAT and MAT / oracle against the pool size, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(pool_sizes, key=int)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for policy in pool_sizes[sizes[0]]:
        xs = [int(s) for s in sizes if policy in pool_sizes[s]]
        width = 2.5 if policy == "hedgespec" else 1.2
        left.plot(xs, [pool_sizes[s][policy]["mean_accepted"] for s in sizes if policy in pool_sizes[s]],
                  marker="o", label=policy, linewidth=width)
        if policy != "oracle":
            right.plot(xs, [100 * pool_sizes[s][policy].get("mat_vs_oracle", float("nan"))
                            for s in sizes if policy in pool_sizes[s]], marker="o", label=policy, linewidth=width)
    left.set_xlabel("drafters in the pool")
    left.set_ylabel("mean accepted tokens per target call")
    left.set_title("MAT vs pool size — mixed workload")
    right.set_xlabel("drafters in the pool")
    right.set_ylabel("% of the per-prompt oracle's MAT")
    right.set_title("share of the oracle vs pool size")
    for ax in (left, right):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _default_spec_bench() -> Path | None:
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "bench" / "data" / "spec_bench" / "question.jsonl",
                      here.parent / "shared" / "data" / "spec_bench" / "question.jsonl"):
        if candidate.exists():
            return candidate
    return None


def build_parser(parser=None):
    import argparse

    parser = parser or argparse.ArgumentParser(prog="hedgespec bench", description="end-to-end benchmark on the zoo")
    parser.add_argument("--workloads", default="mixed,shift,single,spec_bench",
                        help="comma list of mixed, shift, single (every single:<domain>), single:<domain>, spec_bench")
    parser.add_argument("--policies", default=None, help="comma list (default: every policy, fixed:i, oracle, target)")
    parser.add_argument("--pool-sizes", default=None, help="comma list of pool sizes to sweep on the mixed workload")
    parser.add_argument("--per-domain", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--draft-len", type=int, default=5)
    parser.add_argument("--n-spec-bench", type=int, default=16)
    parser.add_argument("--spec-bench", type=Path, default=None)
    parser.add_argument("--sample", action="store_true", help="speculative sampling instead of greedy")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (with --sample)")
    parser.add_argument("--warm", action="store_true", help="learners keep their state across a workload's prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/out/e2e"))
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--results-md", type=Path, default=None, help="append a dated entry to this RESULTS.md")
    parser.add_argument("--pool", default=None,
                        help="a real pool (`hedgespec models list`): head to head against plain generate(), HF "
                             "assisted generation and prompt lookup instead of the zoo workloads")
    from . import headtohead

    headtohead.build_parser(parser.add_argument_group("head to head (with --pool)"))
    return parser


def main(argv=None, args=None) -> dict:
    import platform

    from . import zoo

    args = args or build_parser().parse_args(argv)
    if args.pool:
        from . import headtohead

        if args.out == Path("bench/out/e2e"):
            args.out = Path("bench/out") / f"h2h_{args.pool}{'_sample' if args.sample else ''}"
        return headtohead.main(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer, target, drafters = zoo.load(device=args.device)
    domains = [d for d in zoo.manifest()["domains"] if d in drafters]
    prompts = {d: zoo.heldout_prompts(d, n=args.per_domain, prompt_tokens=args.prompt_tokens, seed=args.seed)
               for d in domains}
    kinds = []
    for kind in args.workloads.split(","):
        kinds += [f"single:{d}" for d in domains] if kind == "single" else [kind]
    spec_bench = args.spec_bench or _default_spec_bench()
    workloads = {k: workload(k, prompts, args.seed, spec_bench, args.n_spec_bench) for k in kinds}
    names = list(drafters) + ["ngram"]
    policies = (split_policy_list(args.policies) if args.policies
                else default_policies(len(names), include_baseline=True))
    args.out.mkdir(parents=True, exist_ok=True)
    common = dict(max_new_tokens=args.max_new_tokens, draft_len=args.draft_len, do_sample=args.sample,
                  temperature=args.temperature, seed=args.seed, warm=args.warm, resume=not args.no_resume)
    results = run(target, drafters, tokenizer, workloads, policies, record=args.out / "record.jsonl", **common)
    expert_of = {d: names.index(d) for d in domains}
    summary = summarize(results, expert_of)
    for wname in workloads:
        print(f"\n== {wname} ==")
        print(format_table(summary, wname))
        plot(results, wname, args.out / f"{wname.replace(':', '_')}.png")
    report = {"summary": summary, "config": {k: str(v) for k, v in vars(args).items()}}
    if args.pool_sizes:
        report["pool_sizes"] = {}
        sweep = ["hedgespec", "ucbspec", "exp3spec", "metasd", "random", "oracle"]
        for size in [int(s) for s in args.pool_sizes.split(",")]:
            pool = pool_of_size(size, target, drafters, seed=args.seed)
            pool_results = run(target, pool, tokenizer, {"mixed": workloads.get("mixed") or workload("mixed", prompts)},
                               sweep, record=args.out / f"record_pool{size}.jsonl", **common)
            pool_names = pool_results["_drafters"]
            pool_summary = summarize(pool_results, {d: pool_names.index(d) for d in domains if d in pool_names})
            report["pool_sizes"][size] = pool_summary["workloads"]["mixed"]
            print(f"\n== pool of {size} ==")
            print(format_table(pool_summary, "mixed"))
        plot_pool_sizes(report["pool_sizes"], args.out / "pool_sizes.png")
    meta = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name() if args.device == "cuda"
            else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)", "torch": torch.__version__,
            "command": "hedgespec " + " ".join(argv if argv is not None else sys.argv[1:]),
            "decoding": f"sampling T={args.temperature}" if args.sample else "greedy",
            "new tokens": args.max_new_tokens, "K": args.draft_len}
    (args.out / "summary.json").write_text(json.dumps(report, indent=2))
    entry = markdown_entry(summary, f"End-to-end benchmark, {meta['date']}", meta, report.get("pool_sizes"))
    (args.out / "results.md").write_text(entry)
    if args.results_md:
        with args.results_md.open("a") as fh:
            fh.write("\n" + entry + "\n")
    print(f"\nwrote {args.out}/summary.json, results.md and plots")
    return report
