"""Sampling losslessness: speculative sampling's output follows the target's own (warped) distribution.

Each check is a χ² goodness-of-fit test against the *exact* target distribution, and each comes with a negative
control: the same harness, fed by a deliberately broken acceptance rule, must reject. A test that cannot fail
proves nothing.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sampling_utils import (P_ACCEPT, P_REJECT, chi2_pvalue, exact_first_two, generated_first_two,
                            tiny_vocab_models)

import hedgespec_fast.speculation as speculation_module
from hedgespec_fast.verify import verify_sampling

def _broken_residual(draft, draft_probs, target_warped, generator):
    """Wrong rule: on rejection resample from p itself instead of norm(max(0, p − q))."""
    k = draft.shape[0]
    p = torch.softmax(target_warped, dim=-1)
    rows = torch.arange(k)
    q = torch.ones(k) if draft_probs is None else draft_probs[rows, draft]
    accepted = torch.rand(k, generator=generator) * q < p[rows, draft]
    n = accepted.long().cumprod(0).sum()
    correction = torch.multinomial(p, 1, generator=generator).view(-1)
    emitted = torch.where(torch.arange(k + 1) == n, correction, torch.cat([draft, draft.new_zeros(1)]))
    return torch.cat([n.view(1), torch.zeros(1, dtype=torch.long), emitted])


# -- the rule alone, on explicit distributions ------------------------------------------------------------------------
def first_token_counts(verify, p_logits, q, trials, deterministic=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    vocab = p_logits.shape[-1]
    counts = np.zeros(vocab, dtype=np.int64)
    for _ in range(trials):
        draft = torch.multinomial(q, 1, generator=gen).view(-1)
        packed = verify(draft, None if deterministic else q, p_logits, gen)
        counts[packed[2].item()] += 1
    return counts


@pytest.mark.parametrize("deterministic", [False, True], ids=["sampled-draft", "one-hot-draft"])
def test_rule_reproduces_target_first_token(deterministic):
    gen = torch.Generator().manual_seed(1)
    vocab, k = 6, 3
    p_logits = torch.randn(k + 1, vocab, generator=gen) * 1.5
    q = torch.softmax(torch.randn(k, vocab, generator=gen) * 1.5, dim=-1)
    if deterministic:  # n-gram style: the draft is one token with certainty
        q = torch.nn.functional.one_hot(q.argmax(-1), vocab).float()
    target = torch.softmax(p_logits[0], -1).numpy()
    good = first_token_counts(verify_sampling, p_logits, q, 6000, deterministic)
    assert chi2_pvalue(good, target) > P_ACCEPT
    bad = first_token_counts(_broken_residual, p_logits, q, 6000, deterministic)
    assert chi2_pvalue(bad, target) < P_REJECT, "the harness cannot tell a broken rule from the right one"


def test_rule_respects_top_k_support():
    """Tokens outside the target's warped support are never emitted, whatever the drafter proposes."""
    gen = torch.Generator().manual_seed(2)
    p_logits = torch.randn(3, 9, generator=gen)
    p_logits[:, :4] = float("-inf")  # what top-k leaves of the target
    q = torch.softmax(torch.randn(2, 9, generator=gen), -1)  # the drafter puts mass everywhere
    counts = first_token_counts(verify_sampling, p_logits, q, 2000)
    assert counts[:4].sum() == 0


# -- end to end: hs.generate against the exact distribution of the target's first two tokens ---------------------------
TEMPERATURE, TOP_P = 0.9, 0.95


@pytest.fixture(scope="module")
def tiny_vocab_setup():
    return tiny_vocab_models()


def sample_first_two(target, drafters, draws, policy):
    kwargs = dict(max_new_tokens=3, draft_len=2, temperature=TEMPERATURE, top_p=TOP_P, policy=policy)
    return generated_first_two(target, drafters, range(draws), lambda seed: kwargs)


@pytest.mark.slow
def test_generate_samples_the_target_distribution(tiny_vocab_setup, monkeypatch):
    target, drafters = tiny_vocab_setup
    exact = exact_first_two(target, TEMPERATURE, TOP_P)
    counts = sample_first_two(target, drafters, 1500, policy="random")  # every drafter kind takes part
    assert chi2_pvalue(counts, exact) > P_ACCEPT
    monkeypatch.setattr(speculation_module, "verify_sampling", _broken_residual)  # the chain strategy's rule
    broken = sample_first_two(target, drafters, 800, policy="random")
    assert chi2_pvalue(broken, exact) < P_REJECT, "a broken rule went unnoticed end to end"


def test_the_policy_draws_from_its_own_stream(tiny_vocab_setup, monkeypatch):
    """The policy's generator must not replay the sampling generator's numbers: seeded alike, the uniform that picks
    this round's drafter would be the one that drafts or accepts its tokens, and the output would follow the choice
    rule instead of the target (it did: χ² p ≈ 1e-34 in test_warm_start's throughput case before the seeds were
    split)."""
    import hedgespec_fast as hs
    from hedgespec_fast.learners.base import Policy

    target, drafters = tiny_vocab_setup
    seen = []
    begin = Policy.begin

    def spy(self, n_drafters, draft_len, seed=None, costs=None, sleepers=()):
        seen.append(seed)
        return begin(self, n_drafters, draft_len, seed, costs, sleepers)

    monkeypatch.setattr(Policy, "begin", spy)
    for seed in (0, 5):
        hs.generate(target, torch.tensor([[1, 2, 3]]), drafters=drafters, max_new_tokens=4, do_sample=True,
                    seed=seed, eos_token_id=None)
        policy_draw = torch.rand(4, generator=torch.Generator().manual_seed(seen[-1]))
        sampling_draw = torch.rand(4, generator=torch.Generator().manual_seed(seed))
        assert seen[-1] != seed and not torch.equal(policy_draw, sampling_draw)
