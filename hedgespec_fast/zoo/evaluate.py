"""Teacher-forced acceptance matrix: how well each drafter would do on each held-out domain.

For every held-out snippet the target and all drafters read the same true text; at every position s
``γ_s = 1{argmax q_s = argmax p_s}`` (greedy) or ``γ_s = Σ_v min(p_s, q_s)`` (sampling, T = 1), and the expected
accepted length of a round with draft length K is estimated as (ALGORITHMS.md §3)

    ÂL_s = 1 + Σ_{k=1..K} Π_{j=0..k-1} γ_{s+j}        (mean over s; ∈ [1, K+1], the 1 is the bonus / correction).

Under greedy decoding along the target's own greedy text this is exact; here the text is held-out human text, so it
measures agreement on real prefixes, which is what speculative decoding on such prompts sees.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import torch

METRICS = ("greedy_al", "sampling_al", "greedy_rate", "sampling_rate")


def expected_accepted_length(gamma: torch.Tensor, draft_len: int) -> torch.Tensor:
    """Per-position ÂL_s from acceptance γ.

    Parameters
    ----------
    gamma : Tensor ``[..., m]`` in [0, 1], consecutive positions.
    draft_len : K.

    Returns
    -------
    Tensor ``[..., m - K + 1]``: ÂL_s for every s whose window s..s+K-1 lies inside.
    """
    windows = gamma.unfold(-1, draft_len, 1)  # [..., m-K+1, K]
    return 1.0 + windows.cumprod(dim=-1).sum(dim=-1)


@dataclass
class AcceptanceMatrix:
    """Domain × drafter tables; ``values[metric][d][i]`` for domain ``domains[d]`` and drafter ``drafters[i]``."""

    domains: list[str]
    drafters: list[str]
    draft_len: int
    values: dict[str, list[list[float]]] = field(default_factory=dict)
    positions: dict[str, int] = field(default_factory=dict)

    def winners(self, metric: str = "greedy_al") -> dict[str, str]:
        """The best drafter per domain."""
        table = self.values[metric]
        return {d: self.drafters[max(range(len(self.drafters)), key=lambda i: table[k][i])]
                for k, d in enumerate(self.domains)}

    def margin(self, domain: str, metric: str = "greedy_al") -> float:
        """Own expert's value minus the best other drafter's, on ``domain`` (needs a drafter named like it)."""
        row = self.values[metric][self.domains.index(domain)]
        own = self.drafters.index(domain)
        return row[own] - max(v for i, v in enumerate(row) if i != own)

    def to_markdown(self, metric: str = "greedy_al") -> str:
        """A markdown table, the best value of each row in bold."""
        table = self.values[metric]
        lines = ["| held-out domain \\ drafter | " + " | ".join(self.drafters) + " | positions |",
                 "|---|" + "---:|" * (len(self.drafters) + 1)]
        for k, domain in enumerate(self.domains):
            best = max(table[k])
            cells = [f"**{v:.2f}**" if v == best else f"{v:.2f}" for v in table[k]]
            lines.append(f"| {domain} | " + " | ".join(cells) + f" | {self.positions.get(domain, 0)} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"domains": self.domains, "drafters": self.drafters, "draft_len": self.draft_len,
                "values": self.values, "positions": self.positions}


@torch.no_grad()
def snippet_gammas(target, drafters: list, input_ids: torch.Tensor, skip: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy and sampling γ of every drafter at every position of a batch of equal-length snippets.

    Parameters
    ----------
    target : causal LM.
    drafters : list of N causal LMs with the target's vocabulary.
    input_ids : LongTensor ``[B, L]``.
    skip : the first ``skip`` positions (too little context to be prompt-like) are dropped.

    Returns
    -------
    (greedy, sampling) : two Tensors ``[N, B, L - 1 - skip]`` fp32.
    """
    from hedgespec_fast.kernels import acceptance_probs

    batch, length = input_ids.shape
    target_logits = target(input_ids=input_ids).logits[:, skip:-1]  # predicts tokens skip+1 .. L-1
    drafter_logits = torch.stack([d(input_ids=input_ids).logits[:, skip:-1] for d in drafters])
    m = target_logits.shape[1]
    flat_target = target_logits.reshape(batch * m, -1)
    flat_drafters = drafter_logits.reshape(len(drafters), batch * m, -1)
    greedy = acceptance_probs(flat_target, flat_drafters, mode="greedy").reshape(len(drafters), batch, m)
    sampling = acceptance_probs(flat_target, flat_drafters, mode="tv", temperature=1.0).reshape(len(drafters), batch, m)
    return greedy.float(), sampling.float()


def acceptance_matrix(
    tokenizer,
    target,
    drafters: dict,
    texts: dict[str, list[str]],
    draft_len: int = 5,
    skip: int = 32,
    max_tokens: int = 320,
    batch_size: int = 8,
) -> AcceptanceMatrix:
    """The domain × drafter matrix of teacher-forced acceptance on held-out text.

    Parameters
    ----------
    tokenizer : the models' tokenizer.
    target : causal LM.
    drafters : dict name → causal LM (column order).
    texts : dict domain → list of held-out texts (row order).
    draft_len : K of the ÂL estimator.
    skip : context positions dropped at the start of each text.
    max_tokens : texts are cut to this many tokens (and, per batch, to the shortest one).
    batch_size : texts per forward.

    Returns
    -------
    AcceptanceMatrix with metrics ``greedy_al``, ``sampling_al`` (mean ÂL) and ``greedy_rate``, ``sampling_rate``
    (mean γ).
    """
    device = next(target.parameters()).device
    names = list(drafters)
    models = [drafters[n] for n in names]
    result = AcceptanceMatrix(domains=list(texts), drafters=names, draft_len=draft_len,
                              values={m: [] for m in METRICS})
    for domain, domain_texts in texts.items():
        encoded = [tokenizer(t, add_special_tokens=False).input_ids[:max_tokens] for t in domain_texts]
        encoded = [ids for ids in encoded if len(ids) > skip + draft_len + 1]
        sums = {m: torch.zeros(len(names), dtype=torch.float64) for m in METRICS}
        counts = {"al": 0, "rate": 0}
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            length = min(len(ids) for ids in chunk)
            input_ids = torch.tensor([ids[:length] for ids in chunk], device=device)
            greedy, sampling = snippet_gammas(target, models, input_ids, skip)
            for metric, gamma in (("greedy", greedy), ("sampling", sampling)):
                al = expected_accepted_length(gamma, draft_len)
                sums[f"{metric}_al"] += al.sum(dim=(1, 2)).double().cpu()
                sums[f"{metric}_rate"] += gamma.sum(dim=(1, 2)).double().cpu()
            counts["al"] += al.shape[1] * al.shape[2]
            counts["rate"] += greedy.shape[1] * greedy.shape[2]
        for metric in METRICS:
            denominator = max(counts["al" if metric.endswith("_al") else "rate"], 1)
            result.values[metric].append((sums[metric] / denominator).tolist())
        result.positions[domain] = counts["rate"]
    return result


def measured_mat_matrix(
    tokenizer,
    target,
    drafters: dict,
    prompts: dict[str, list[str]],
    max_new_tokens: int = 64,
    draft_len: int = 5,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    **generate_kwargs,
) -> AcceptanceMatrix:
    """The domain × drafter matrix of *measured* mean accepted tokens with the engine (``policy="fixed:0"``).

    Each cell runs ``hs.generate`` with that drafter alone on every prompt of the domain and reports
    Σ new tokens / Σ rounds (tokens per target call, bonus / correction included, as ``stats.mean_accepted``).

    Returns
    -------
    AcceptanceMatrix with the single metric ``"measured_mat"``.
    """
    import hedgespec_fast as hs

    device = next(target.parameters()).device
    names = list(drafters)
    result = AcceptanceMatrix(domains=list(prompts), drafters=names, draft_len=draft_len,
                              values={"measured_mat": []})
    for domain, domain_prompts in prompts.items():
        row = []
        for name in names:
            new_tokens = rounds = 0
            for index, prompt in enumerate(domain_prompts):
                input_ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
                out = hs.generate(target, input_ids, drafters=[drafters[name]], policy="fixed:0",
                                  draft_len=draft_len, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                  temperature=temperature, top_p=top_p, seed=seed + index, **generate_kwargs)
                new_tokens += out.stats.new_tokens
                rounds += out.stats.rounds
            row.append(new_tokens / max(rounds, 1))
        result.values["measured_mat"].append(row)
        result.positions[domain] = len(domain_prompts)
    return result


def main(argv=None) -> AcceptanceMatrix:
    """Print the teacher-forced acceptance matrix of the shipped zoo (or of ``--weights``)."""
    from . import heldout_texts, load

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--weights", default=None, help="zoo export folder (default: the shipped zoo)")
    parser.add_argument("--draft-len", type=int, default=5)
    parser.add_argument("--snippets", type=int, default=40, help="held-out snippets per domain")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--measured", type=int, default=0, metavar="N",
                        help="also measure MAT with the engine (hs.generate) on N held-out prompts per domain")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--sample", action="store_true", help="measure with sampling instead of greedy")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizer, target, drafters = load(path=args.weights)
    texts = heldout_texts(n=args.snippets, path=args.weights)
    result = acceptance_matrix(tokenizer, target, drafters, texts, draft_len=args.draft_len)
    for metric, title in (("greedy_al", "greedy ÂL"), ("sampling_al", "sampling ÂL (T=1)"),
                          ("greedy_rate", "greedy γ"), ("sampling_rate", "sampling γ = Σ min(p, q)")):
        print(f"\n{title}, K={args.draft_len}\n" + result.to_markdown(metric))
    if args.measured:
        from . import heldout_prompts

        prompts = heldout_prompts(n=args.measured, prompt_tokens=args.prompt_tokens, path=args.weights)
        measured = measured_mat_matrix(tokenizer, target, drafters, prompts, max_new_tokens=args.new_tokens,
                                       draft_len=args.draft_len, do_sample=args.sample,
                                       temperature=args.temperature, top_p=args.top_p)
        mode = f"sampling T={args.temperature} top-p={args.top_p}" if args.sample else "greedy"
        print(f"\nmeasured MAT (hs.generate, policy fixed, {mode}, {args.measured} prompts × {args.new_tokens} new "
              f"tokens, K={args.draft_len}; last column = prompts)\n" + measured.to_markdown("measured_mat"))
        result.values["measured_mat"] = measured.values["measured_mat"]
    return result


if __name__ == "__main__":
    main()
