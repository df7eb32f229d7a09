"""Sampling losslessness of draft trees and multi-draft: χ² against the exact target distribution, each with a negative
control (a broken rule, fed through the same harness, must be rejected)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sampling_utils import (P_ACCEPT, P_REJECT, chi2_pvalue, exact_first_two, generated_first_two,
                            tiny_vocab_models)

import hedgespec_fast.tree_verify as tree_verify
from hedgespec_fast.tree_verify import verify_tree
from hedgespec_fast.trees import TokenTree, Trials, chain_tree, merge_trees


def broken_choice(tree, probs, generator):
    """Wrong rule: try each child against the *original* p (never the residual) and, when all are rejected, emit a
    sample of p itself instead of the residual. Accepted children are over-represented."""
    n, vocab = probs.shape
    if tree.trials is None:  # one one-hot trial per child
        parents = tree.parents.tolist()
        width = max([parents.count(i) for i in range(n)] + [1])
        child = torch.full((n, width), -1, dtype=torch.long)
        for c, p in enumerate(parents):
            if p >= 0:
                slot = int((child[p] >= 0).sum())
                child[p, slot] = c
        trials = Trials(child, torch.full_like(child, -1), None)
    else:
        trials = tree.trials
    choice = torch.multinomial(probs, 1, generator=generator).view(-1)
    done = torch.zeros(n, dtype=torch.bool)
    for t in range(trials.child.shape[1]):
        c, row = trials.child[:, t], trials.q_row[:, t]
        token = tree.tokens[c.clamp(min=0)]
        q = torch.nn.functional.one_hot(token, vocab).float()
        if trials.q is not None:
            q = torch.where((row >= 0)[:, None], trials.q[row.clamp(min=0)], q)
        ratio = probs.gather(1, token[:, None]).squeeze(1) / q.gather(1, token[:, None]).squeeze(1)
        accept = (c >= 0) & ~done & (torch.rand(n, generator=generator) < ratio)
        choice = torch.where(accept, token, choice)
        done |= accept
    return choice


# -- the rule alone, on explicit distributions over a 6-token vocabulary ----------------------------------------------
V = 6


class Table:
    """A distribution for every prefix (a fixed random function of it), for the 'target' and the 'drafters'."""

    def __init__(self, salt: int, scale: float = 1.6):
        self.salt, self.scale, self.memo = salt, scale, {}

    def logits(self, prefix: tuple) -> torch.Tensor:
        if prefix not in self.memo:
            gen = torch.Generator().manual_seed(hash((self.salt,) + prefix) % 2**31)
            self.memo[prefix] = torch.randn(V, generator=gen) * self.scale
        return self.memo[prefix]

    def probs(self, prefix: tuple) -> torch.Tensor:
        return torch.softmax(self.logits(prefix), -1)


TARGET, DRAFT_A, DRAFT_B = Table(1), Table(2), Table(3, scale=0.8)
ROOT = torch.tensor(0)


def topk_tree(prefix, gen):
    """Deterministic: the drafter's top-2 children at the root and at each child (two levels)."""
    first = DRAFT_A.logits(prefix).topk(2).indices.tolist()
    tokens, parents = [0] + first, [-1, 0, 0]
    for j, a in enumerate(first):
        for b in DRAFT_A.logits(prefix + (a,)).topk(2).indices.tolist():
            tokens.append(b)
            parents.append(1 + j)
    return TokenTree(torch.tensor(tokens), torch.tensor(parents), torch.tensor([0, 1, 1, 2, 2, 2, 2]), 2)


def sampled_chain(table, prefix, depth, gen):
    tokens, probs = [], []
    for _ in range(depth):
        p = table.probs(prefix + tuple(tokens))
        probs.append(p)
        tokens.append(int(torch.multinomial(p, 1, generator=gen)))
    return chain_tree(ROOT, torch.tensor(tokens), torch.stack(probs))


def sampled_chains_tree(prefix, gen):
    """SpecInfer: three chains sampled from one drafter, merged (duplicates share a node and pool their trials)."""
    return merge_trees([sampled_chain(DRAFT_A, prefix, 2, gen) for _ in range(3)])


def mixed_tree(prefix, gen):
    """Multi-draft of several drafters: a greedy chain (deterministic), a sampled chain of another drafter, and a
    deterministic single token."""
    greedy = [int(DRAFT_B.logits(prefix).argmax())]
    greedy.append(int(DRAFT_B.logits(prefix + (greedy[0],)).argmax()))
    other = int(DRAFT_A.logits(prefix).topk(3).indices[2])
    return merge_trees([chain_tree(ROOT, torch.tensor(greedy), None), sampled_chain(DRAFT_A, prefix, 2, gen),
                        chain_tree(ROOT, torch.tensor([other]), None)])


def first_two(build, trials, seed=0):
    """Counts of the first two emitted tokens over ``trials`` runs of: build a tree on the prefix, verify, commit."""
    gen = torch.Generator().manual_seed(seed)
    counts = np.zeros(V * V, dtype=np.int64)
    for _ in range(trials):
        emitted = ()
        while len(emitted) < 2:
            tree = build(emitted, gen)
            paths = {0: ()}
            for i, (tok, par) in enumerate(zip(tree.tokens.tolist(), tree.parents.tolist())):
                if i:
                    paths[i] = paths[par] + (tok,)
            logits = torch.stack([TARGET.logits(emitted + paths[i]) for i in range(tree.size)])
            packed, _ = verify_tree(tree, logits, True, gen)
            n_accepted = int(packed[0])
            emitted += tuple(packed[2 : 3 + n_accepted].tolist())
        counts[emitted[0] * V + emitted[1]] += 1
    return counts


def exact_table_first_two() -> np.ndarray:
    first = TARGET.probs(())
    return torch.stack([first[a] * TARGET.probs((a,)) for a in range(V)]).reshape(-1).double().numpy()


@pytest.mark.parametrize("build", [topk_tree, sampled_chains_tree, mixed_tree], ids=["top-k", "chains", "mixed"])
def test_tree_rule_reproduces_the_target(build, monkeypatch):
    exact = exact_table_first_two()
    assert chi2_pvalue(first_two(build, 2000), exact) > P_ACCEPT
    monkeypatch.setattr(tree_verify, "_sampled_choice", broken_choice)
    assert chi2_pvalue(first_two(build, 600, seed=1), exact) < P_REJECT, "the harness cannot tell a broken rule"


def test_deterministic_children_match_the_recursive_rule():
    """The one-multinomial form for one-hot children and SpecInfer's sequential rule over one-hot trials are the same
    distribution: feed one tree both ways and compare their first tokens by χ² against the exact distribution."""
    tree = topk_tree((), None)
    explicit = Trials(torch.tensor([[1, 2], [3, 4], [5, 6], [-1, -1], [-1, -1], [-1, -1], [-1, -1]]),
                      torch.full((7, 2), -1), None)
    as_trials = TokenTree(tree.tokens, tree.parents, tree.depths, 2, explicit)
    exact = TARGET.probs(()).double().numpy()
    logits = torch.stack([TARGET.logits(()), *[TARGET.logits(p) for p in _paths(tree)[1:]]])
    for t in (tree, as_trials):
        gen = torch.Generator().manual_seed(5)
        counts = np.bincount([int(verify_tree(t, logits, True, gen)[0][2]) for _ in range(2000)], minlength=V)
        assert chi2_pvalue(counts, exact) > P_ACCEPT


def _paths(tree):
    out = [()]
    for i, (tok, par) in enumerate(zip(tree.tokens.tolist(), tree.parents.tolist())):
        if i:
            out.append(out[par] + (tok,))
    return out


# -- end to end: hs.generate with trees and multi-draft on a tiny model ------------------------------------------------
SPECS = ["depth=2,topk=2,total=4", "static:depth=2,topk=2", "chains:k=3,depth=2", "drafters:k=3,depth=2",
         "shared:depth=2,topk=2,total=5"]
TEMPERATURE, TOP_P = 1.3, 0.95  # flatter than the chain test's: a broken rule shows in fewer draws


@pytest.fixture(scope="module")
def tiny_vocab_setup():
    return tiny_vocab_models()


def sample_first_two(target, drafters, seeds):
    """Each draw uses one of the tree kinds in turn (and a random drafter), so all of them feed the one χ² test."""
    return generated_first_two(target, drafters, seeds, lambda seed: dict(
        max_new_tokens=2, tree=SPECS[seed % len(SPECS)], temperature=TEMPERATURE, top_p=TOP_P, policy="random"))


@pytest.mark.slow
def test_generate_with_trees_samples_the_target_distribution(tiny_vocab_setup, monkeypatch):
    target, drafters = tiny_vocab_setup
    exact = exact_first_two(target, TEMPERATURE, TOP_P)
    counts = sample_first_two(target, drafters, range(500, 1500))  # fixed seeds: a deterministic outcome
    assert chi2_pvalue(counts, exact) > P_ACCEPT
    monkeypatch.setattr(tree_verify, "_sampled_choice", broken_choice)
    broken = sample_first_two(target, drafters, range(10_000, 10_900))
    assert chi2_pvalue(broken, exact) < P_REJECT, "a broken tree rule went unnoticed end to end"
