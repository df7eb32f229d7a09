"""Head to head on a real pool: hedgespec against what a user would run instead, same prompts, one process.

Methods (every one runs every prompt, warmed up, in an order rotated per prompt so none always goes first):

- ``plain``: ``target.generate()``.
- ``hf-assisted:<drafter>``: transformers' assisted generation with that LM drafter (``assistant_model=``), at
  transformers' default schedule (20 draft tokens, stopped early below a 0.4 confidence that adapts when scikit-learn
  is installed), and ``hf-assisted:<drafter>@K=<k>``: its best fixed ``num_assistant_tokens`` from a sweep on
  calibration prompts that are not scored.
- ``hf-lookup``: transformers' prompt lookup (``prompt_lookup_num_tokens=10``).
- ``hedgespec`` and its variants, the bandit baselines, every fixed drafter (``fixed:<i>@draft_len=<K>``), and the
  per-prompt oracle (the fastest fixed drafter on that prompt, in hindsight: computed from the fixed runs).

Every greedy output is compared with ``plain``'s; a difference is reported with the target's top-2 logit gap at the
first differing position (teacher-forced on the plain output), which tells a near-tie in low precision from a bug.
Wall time includes the prompt's prefill (time to the full answer); ``decode tok/s`` leaves out the time to the first
token. Results go to a resumable JSONL record, a JSON summary, a markdown table and a plot.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers.generation.streamers import BaseStreamer

from .drafters import NGramDrafter
from .hf import generate as hs_generate
from .learners import HedgeSpecSelector

CODE_PROMPTS = (
    "Write a Python function `merge_intervals(intervals)` that merges overlapping intervals and returns them sorted. "
    "Include a docstring and two doctests.",
    "Here is a function with a bug:\n```python\ndef mean(xs):\n    total = 0\n    for x in xs:\n        total += x\n"
    "    return total / len(xs) if xs else total / len(xs)\n```\nExplain the bug and give the fixed function.",
    "Write a SQL query over tables `orders(id, customer_id, total, created_at)` and `customers(id, name, country)` "
    "that returns, per country, the number of customers and their average order total in 2024.",
    "Implement a minimal LRU cache class in Python with `get(key)` and `put(key, value)` in O(1), using "
    "`collections.OrderedDict`. Add type hints.",
)


@dataclass
class Prompt:
    category: str
    text: str
    ids: torch.Tensor


def spec_bench_prompts(path: str | Path, tokenizer, per_category: int, max_prompt_tokens: int, seed: int = 0,
                       code: bool = True, categories: list[str] | None = None) -> list[Prompt]:
    """``per_category`` Spec-Bench first turns per category (seeded sample among those whose chat-templated length
    fits ``max_prompt_tokens``; only ``categories`` when given), then the built-in code prompts; every prompt with
    the chat template applied."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    by_category: dict[str, list] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row["turns"][0])
    picked = []
    if categories:
        unknown = set(categories) - set(by_category)
        if unknown:
            raise SystemExit(f"unknown Spec-Bench categories {sorted(unknown)}; known: {', '.join(by_category)}")
        by_category = {c: by_category[c] for c in categories}
    for category, texts in by_category.items():
        encoded = [(t, chat_ids(tokenizer, t)) for t in texts]
        fits = [e for e in encoded if e[1].shape[1] <= max_prompt_tokens]
        fits = fits or sorted(encoded, key=lambda e: e[1].shape[1])[:per_category]
        for text, ids in rng.sample(fits, min(per_category, len(fits))):
            picked.append(Prompt(category, text, ids))
    if code:
        picked += [Prompt("code", text, chat_ids(tokenizer, text)) for text in CODE_PROMPTS]
    return picked


def chat_ids(tokenizer, text: str) -> torch.Tensor:
    """The prompt as a user turn with the model's chat template and the generation prompt, ``[1, L]``."""
    out = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    return out["input_ids"]


class FirstTokenClock(BaseStreamer):
    """A streamer that only notes when the first generated token arrived (the first ``put`` is the prompt)."""

    def __init__(self):
        self.calls, self.first = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            self.first = time.perf_counter()

    def end(self):
        pass


# -- methods -------------------------------------------------------------------------------------------------------
@dataclass
class Method:
    """One way of generating: ``kind`` in plain | hf-assisted | hf-lookup | hedgespec (a policy spec)."""

    name: str
    kind: str
    drafter: str | None = None
    k: int | None = None
    policy: str | None = None
    warm: bool = False  # hedgespec: one selector reused across the prompts (a server's setting), not one per prompt
    selector: object = None
    without: tuple[str, ...] = ()  # hedgespec: drafters of the pool this method leaves out ("hedgespec~ngram-1")


def variant_method(spec: str, names: list[str]) -> Method:
    """A hedgespec policy spec, optionally with drafters left out of its pool: ``"hedgespec@eval_budget=0.2~ngram-1"``
    runs that policy over the pool without ``ngram-1`` (an ablation within one run)."""
    policy, *without = spec.split("~")
    unknown = set(without) - set(names)
    if unknown:
        raise SystemExit(f"{spec!r} leaves out drafters the pool does not have: {sorted(unknown)}; it has {names}")
    return Method(spec, "hedgespec", policy=policy, without=tuple(without))


def default_methods(names: list[str], lm_drafters: list[str], hf_best_k: dict[str, int], draft_len: int) -> list:
    methods = [Method("plain", "plain"), Method("hf-lookup", "hf-lookup", k=10)]
    for d in lm_drafters:
        methods.append(Method(f"hf-assisted:{d}", "hf-assisted", drafter=d))
        if d in hf_best_k:
            methods.append(Method(f"hf-assisted:{d}@K={hf_best_k[d]}", "hf-assisted", drafter=d, k=hf_best_k[d]))
    methods.append(Method("hedgespec (warm)", "hedgespec", policy="hedgespec", warm=True))
    for policy in ("hedgespec", "hedgespec@objective=mat", "ucbspec", "metasd", "tapout"):
        methods.append(Method(policy, "hedgespec", policy=policy))
    for i, name in enumerate(names):
        methods.append(Method(f"fixed:{name}", "hedgespec", policy=f"fixed:{i}@draft_len={draft_len}"))
    return methods


def run_method(method: Method, target, drafters: dict, ids: torch.Tensor, *, max_new_tokens: int, draft_len: int,
               sampling: dict, seed: int, eos) -> dict:
    """Generate once; the emitted tokens, wall seconds, seconds to the first token, and the engine's stats."""
    clock = FirstTokenClock()
    common = dict(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos if isinstance(eos, int) else None,
                  **sampling)
    torch.manual_seed(seed)
    stats = None
    start = time.perf_counter()
    if method.kind == "plain":
        out = target.generate(ids, streamer=clock, **common)
    elif method.kind == "hf-lookup":
        out = target.generate(ids, streamer=clock, prompt_lookup_num_tokens=method.k, **common)
    elif method.kind == "hf-assisted":
        assistant = drafters[method.drafter]
        config = assistant.generation_config
        saved = (config.num_assistant_tokens, config.num_assistant_tokens_schedule,
                 config.assistant_confidence_threshold)
        if method.k is not None:  # a fixed draft length: no schedule, no early stop
            config.num_assistant_tokens, config.num_assistant_tokens_schedule = method.k, "constant"
            config.assistant_confidence_threshold = 0.0
        try:
            out = target.generate(ids, assistant_model=assistant, streamer=clock, **common)
        finally:
            (config.num_assistant_tokens, config.num_assistant_tokens_schedule,
             config.assistant_confidence_threshold) = saved
    else:
        pool = [d for name, d in drafters.items() if name not in method.without]
        policy = method.policy
        if method.warm:
            if method.selector is None:
                method.selector = HedgeSpecSelector(len(pool)).to(ids.device)
            policy = method.selector
        spec = hs_generate(target, ids, drafters=pool, policy=policy, draft_len=draft_len, seed=seed,
                           streamer=clock, **common)
        out, stats = spec.sequences, spec.stats
    wall = time.perf_counter() - start
    tokens = out[0, ids.shape[1]:].tolist()
    row = dict(method=method.name, tokens=tokens, new_tokens=len(tokens), wall_s=wall,
               ttft_s=(clock.first - start) if clock.first is not None else wall)
    if stats is not None:
        row.update(rounds=stats.rounds, mean_accepted=stats.mean_accepted, drafter_counts=stats.drafter_counts,
                   no_draft_rounds=stats.no_draft_rounds,
                   host_syncs=stats.host_syncs, drafted=[r.drafted for r in stats.records],
                   chosen=[r.chosen for r in stats.records], accepted=[r.accepted for r in stats.records],
                   evaluated=[r.gamma is not None for r in stats.records],
                   phase_seconds=stats.phase_seconds, evaluations=stats.evaluations, prefill_s=stats.prefill_s,
                   joined=stats.joined, left_out=stats.left_out, costs=stats.costs)
    return row


def first_difference(target, ids: torch.Tensor, reference: list[int], other: list[int]) -> dict | None:
    """Where ``other`` leaves ``reference`` and the target's top-2 logit gap there (teacher-forced on the reference)."""
    j = next((j for j, (a, b) in enumerate(zip(reference, other)) if a != b), None)
    if j is None:
        if len(reference) == len(other):
            return None
        j = min(len(reference), len(other))
        if j >= len(reference):
            return dict(position=j, gap=None, note="longer than the plain output")
    seq = torch.cat([ids[0], torch.tensor(reference[:j], dtype=torch.long)]).view(1, -1).to(ids.device)
    with torch.no_grad():
        logits = target(seq).logits[0, -1].float()
    top = torch.topk(logits, 2)
    return dict(position=j, gap=float(top.values[0] - top.values[1]), plain_token=reference[j],
                other_token=other[j] if j < len(other) else None,
                top2=[int(i) for i in top.indices.tolist()])


# -- the run ---------------------------------------------------------------------------------------------------------
def calibrate_hf_k(target, drafters: dict, lm_drafters: list[str], prompts: list[Prompt], ks, **kw) -> dict:
    """Each LM drafter's fastest fixed ``num_assistant_tokens`` on the calibration prompts (not scored)."""
    best = {}
    for d in lm_drafters:
        times = {}
        for k in ks:
            method = Method(f"hf-assisted:{d}@K={k}", "hf-assisted", drafter=d, k=k)
            rows = [run_method(method, target, drafters, p.ids, **kw) for p in prompts]
            times[k] = sum(r["wall_s"] for r in rows) / max(sum(r["new_tokens"] for r in rows), 1)
        best[d] = min(times, key=times.get)
    return best


def run(target, drafters: dict, prompts: list[Prompt], methods: list[Method], record: Path, *, max_new_tokens: int,
        draft_len: int, sampling: dict, eos, seed: int = 0, show_progress: bool = True) -> list[dict]:
    """Every method on every prompt (rotated order), appending each row to ``record`` (resumed when it exists)."""
    done = {}
    if record.exists():
        for line in record.read_text().splitlines():
            row = json.loads(line)
            done[(row["prompt_index"], row["method"])] = row
    rows = list(done.values())
    todo = [(i, m) for i in range(len(prompts)) for m in methods if (i, m.name) not in done]
    bar = tqdm(total=len(todo), desc="prompts × methods", disable=not show_progress)
    for i, prompt in enumerate(prompts):
        shift = i % len(methods)
        for method in methods[shift:] + methods[:shift]:
            if (i, method.name) in done:
                continue
            bar.set_postfix_str(f"{prompt.category} / {method.name}")
            row = run_method(method, target, drafters, prompt.ids, max_new_tokens=max_new_tokens,
                             draft_len=draft_len, sampling=sampling, seed=seed + i, eos=eos)
            row.update(prompt_index=i, category=prompt.category, prompt_tokens=int(prompt.ids.shape[1]))
            rows.append(row)
            with record.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            bar.update(1)
    bar.close()
    return rows


def summarize(rows: list[dict], target=None, prompts: list[Prompt] | None = None, greedy: bool = True) -> dict:
    """Per method: tok/s (end to end and decode), speedup over plain, MAT, rounds, per category; the oracle; the
    lossless check against plain."""
    by_method: dict[str, list] = {}
    for row in rows:
        by_method.setdefault(row["method"], []).append(row)
    plain = {r["prompt_index"]: r for r in by_method.get("plain", [])}
    fixed = [m for m in by_method if m.startswith("fixed:")]
    if fixed:  # the per-prompt oracle: the fastest fixed drafter on each prompt
        oracle = []
        for i in sorted({r["prompt_index"] for r in rows}):
            candidates = [r for m in fixed for r in by_method[m] if r["prompt_index"] == i]
            if candidates:
                best = min(candidates, key=lambda r: r["wall_s"] / max(r["new_tokens"], 1))
                oracle.append({**best, "method": "oracle", "oracle_choice": best["method"]})
        by_method["oracle"] = oracle
    table = {}
    for method, mrows in by_method.items():
        tokens = sum(r["new_tokens"] for r in mrows)
        wall = sum(r["wall_s"] for r in mrows)
        decode = sum(max(r["wall_s"] - r["ttft_s"], 1e-9) for r in mrows)
        same = [r for r in mrows if r["prompt_index"] in plain]
        plain_time = sum(plain[r["prompt_index"]]["wall_s"] / max(plain[r["prompt_index"]]["new_tokens"], 1) *
                         r["new_tokens"] for r in same)
        entry = dict(tokens_per_s=tokens / wall if wall else 0.0,
                     decode_tokens_per_s=sum(max(r["new_tokens"] - 1, 0) for r in mrows) / decode,
                     speedup=plain_time / sum(r["wall_s"] for r in same) if same else None,
                     prompts=len(mrows), new_tokens=tokens)
        if all("rounds" in r for r in mrows):
            rounds = sum(r["rounds"] for r in mrows)
            entry.update(mean_accepted=tokens / rounds if rounds else 0.0, rounds=rounds)
        categories = {}
        for r in same:
            base = plain[r["prompt_index"]]
            c = categories.setdefault(r["category"], [0.0, 0.0])
            c[0] += base["wall_s"] / max(base["new_tokens"], 1) * r["new_tokens"]
            c[1] += r["wall_s"]
        entry["speedup_by_category"] = {c: a / b for c, (a, b) in categories.items() if b}
        if greedy and method not in ("plain", "oracle"):
            mismatches = []
            for r in same:
                ref = plain[r["prompt_index"]]["tokens"]
                if r["tokens"] != ref:
                    diff = first_difference(target, prompts[r["prompt_index"]].ids, ref, r["tokens"]) \
                        if target is not None and prompts is not None else {}
                    mismatches.append(dict(prompt_index=r["prompt_index"], category=r["category"], **(diff or {})))
            entry["mismatches"] = mismatches
        table[method] = entry
    return table


def format_table(table: dict) -> str:
    lines = [f"{'method':<44}{'tok/s':>8}{'decode':>8}{'speedup':>9}{'MAT':>7}{'mismatch':>10}"]
    for method, e in sorted(table.items(), key=lambda kv: -kv[1]["tokens_per_s"]):
        mat = f"{e['mean_accepted']:.2f}" if "mean_accepted" in e else ""
        speed = f"{e['speedup']:.2f}x" if e.get("speedup") else ""
        mism = "" if "mismatches" not in e else str(len(e["mismatches"]))
        lines.append(f"{method:<44}{e['tokens_per_s']:>8.2f}{e['decode_tokens_per_s']:>8.2f}{speed:>9}{mat:>7}"
                     f"{mism:>10}")
    return "\n".join(lines)


def plot(table: dict, path: Path) -> Path:
    """Speedup over plain generate() by category (columns) and method (rows), as a heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m, e in sorted(table.items(), key=lambda kv: -(kv[1].get("speedup") or 0)) if m != "plain"]
    categories = sorted({c for e in table.values() for c in e.get("speedup_by_category", {})})
    grid = [[table[m]["speedup_by_category"].get(c, float("nan")) for c in categories] + [table[m].get("speedup")
                                                                                           or float("nan")]
            for m in methods]
    fig, ax = plt.subplots(figsize=(4.5 + 0.75 * (len(categories) + 1), 1.6 + 0.38 * len(methods)))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0.5, vmax=2.0, aspect="auto")
    ax.set_xticks(range(len(categories) + 1), categories + ["ALL"], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(methods)), methods, fontsize=8)
    for r, row in enumerate(grid):
        for c, value in enumerate(row):
            if value == value:
                ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=6.5)
    fig.colorbar(image, ax=ax, label="speedup over plain generate()\n(same tokens, wall time)")
    ax.set_title("tokens/s vs plain target.generate(),\nby prompt category", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def markdown(table: dict, meta: dict) -> str:
    lines = [f"### Head to head on `{meta['pool']}`, {meta['date']}", "",
             "- " + "; ".join(f"{k}: {v}" for k, v in meta.items() if k != "pool"), "",
             "| method | tok/s | decode tok/s | speedup vs plain | MAT | rounds | greedy mismatches |",
             "|---|---|---|---|---|---|---|"]
    for method, e in sorted(table.items(), key=lambda kv: -kv[1]["tokens_per_s"]):
        speed = f"{e['speedup']:.2f}×" if e.get("speedup") else ""
        mat = f"{e['mean_accepted']:.2f}" if "mean_accepted" in e else ""
        mism = "" if "mismatches" not in e else str(len(e["mismatches"]))
        lines.append(f"| {method} | {e['tokens_per_s']:.2f} | {e['decode_tokens_per_s']:.2f} | {speed} | {mat} | "
                     f"{e.get('rounds', '')} | {mism} |")
    return "\n".join(lines) + "\n"


def build_parser(parser):
    parser.add_argument("--per-category", type=int, default=1, help="Spec-Bench prompts per category")
    parser.add_argument("--categories", default=None, help="comma list of Spec-Bench categories (default: all 13)")
    parser.add_argument("--no-code", action="store_true", help="leave out the built-in code prompts")
    parser.add_argument("--drafters", default=None, help="comma list of the pool's drafters (default: all)")
    parser.add_argument("--max-prompt-tokens", type=int, default=800)
    parser.add_argument("--calibration-prompts", type=int, default=2)
    parser.add_argument("--hf-ks", default="4,8,16", help="num_assistant_tokens swept for HF's best fixed K")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--onednn", action="store_true", help="fp32 CPU models' linears through oneDNN with prepacked "
                        "weights (hs.apply_onednn_linears; every method, plain generate() included, runs the patched "
                        "target)")
    parser.add_argument("--methods", default=None, help="comma list of method names (default: all)")
    parser.add_argument("--variants", default="", help="more hedgespec policies to run, e.g. "
                        "'hedgespec@prompt_warmup=0,hedgespec@eval_budget=0.2' (added to --methods); '~name' leaves "
                        "a drafter out of that method's pool, e.g. 'hedgespec~ngram-1'")
    return parser


def main(args) -> dict:
    import platform

    import transformers

    from . import models

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    chosen = [d.strip() for d in args.drafters.split(",") if d.strip()] if args.drafters else None
    tokenizer, target, drafters = models.load(args.pool, dtype=dtype, device=args.device, drafters=chosen,
                                              onednn=args.onednn)
    names = list(drafters)
    lm_drafters = [n for n in names if not isinstance(drafters[n], NGramDrafter)]
    from .benchmark import _default_spec_bench

    path = args.spec_bench or _default_spec_bench()
    categories = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
    prompts = spec_bench_prompts(path, tokenizer, args.per_category, args.max_prompt_tokens, args.seed,
                                 code=not args.no_code, categories=categories)
    calibration = spec_bench_prompts(path, tokenizer, 1, 200, args.seed + 1000, code=False)[: args.calibration_prompts]
    sampling = dict(do_sample=True, temperature=args.temperature) if args.sample else dict(do_sample=False)
    eos = tokenizer.eos_token_id
    kw = dict(max_new_tokens=args.max_new_tokens, draft_len=args.draft_len, sampling=sampling, eos=eos)
    args.out.mkdir(parents=True, exist_ok=True)
    calib_file = args.out / "hf_best_k.json"
    wants_k = args.methods is None or "@K=" in args.methods
    if calib_file.exists():
        best_k = json.loads(calib_file.read_text())
    elif not wants_k:  # no chosen method uses HF's best fixed K: no calibration sweep (minutes on a CPU)
        best_k = {}
    else:
        ks = [int(k) for k in args.hf_ks.split(",") if k]
        best_k = calibrate_hf_k(target, drafters, lm_drafters, calibration, ks, seed=args.seed, **kw) if ks else {}
        calib_file.write_text(json.dumps(best_k))
    methods = default_methods(names, lm_drafters, best_k, args.draft_len)
    from .benchmark import split_policy_list

    variants = [v for v in split_policy_list(args.variants) if v not in {m.name for m in methods}]
    methods += [variant_method(v, names) for v in variants]
    if args.methods:
        wanted = [w.strip() for w in args.methods.split(",") if w.strip()]
        unknown = set(wanted) - {m.name for m in methods}
        if unknown:
            raise SystemExit(f"unknown methods {sorted(unknown)}; known: {', '.join(m.name for m in methods)}")
        methods = [m for m in methods if m.name in wanted or m.name in variants]
    for method in tqdm(methods, desc="warm-up", disable=False):  # untimed: caches, kernels, cost calibration
        run_method(method, target, drafters, calibration[0].ids, max_new_tokens=8, draft_len=args.draft_len,
                   sampling=sampling, seed=args.seed, eos=eos)
    rows = run(target, drafters, prompts, methods, args.out / "record.jsonl", seed=args.seed, **kw)
    table = summarize(rows, target, prompts, greedy=not args.sample)
    print(format_table(table))
    plot(table, args.out / "speedup_by_category.png")
    meta = dict(pool=args.pool, date=time.strftime("%Y-%m-%d"),
                device=f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)" if args.device == "cpu"
                else torch.cuda.get_device_name(), dtype=args.dtype, torch=torch.__version__,
                transformers=transformers.__version__, linears="oneDNN" if args.onednn else "torch default",
                decoding=f"sampling T={args.temperature}" if args.sample else "greedy",
                new_tokens=args.max_new_tokens, K_max=args.draft_len, prompts=len(prompts),
                hf_best_k=best_k, command="hedgespec bench --pool " + args.pool)
    (args.out / "summary.json").write_text(json.dumps(dict(meta=meta, table=table), indent=2))
    (args.out / "results.md").write_text(markdown(table, meta))
    print(f"wrote {args.out}/summary.json, results.md, speedup_by_category.png")
    return table
