"""Legitimate drafters that used to be refused: a vocabulary that differs from the target's only by padding rows (one
tokenizer, tables rounded up differently), another dtype (fp64, bf16, int8-quantized). Output stays the target's:
greedy equal to target.generate(), sampling distributed like it (χ²)."""
from __future__ import annotations

import pytest
import torch
from sampling_utils import P_ACCEPT, PROMPT as TINY_PROMPT, VOCAB, chi2_pvalue, exact_first_two, generated_first_two
from tiny import noisy_copy, tiny_model

import hedgespec_fast as hs
from hedgespec_fast.models import int8_copy

PROMPT = torch.tensor([[3, 4, 5, 6, 3, 4]])


def padded_copy(model, vocab: int, seed: int = 0):
    """The model with its vocabulary cut or padded to ``vocab`` rows (new rows random, as untrained padding is)."""
    config = model.config.to_dict()
    config["vocab_size"] = vocab
    clone = type(model)(type(model.config).from_dict(config)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p, q in zip(clone.parameters(), model.parameters()):
            if p.shape == q.shape:
                p.copy_(q)
            else:  # embedding / head: the shared rows copied, the rest random
                rows = min(p.shape[0], q.shape[0])
                p.copy_(torch.randn(p.shape, generator=gen) * q.std())
                p[:rows] = q[:rows]
    return clone


@pytest.fixture(scope="module")
def target():
    return tiny_model("llama", seed=11)


@pytest.mark.parametrize("vocab", [96, 100, 112])
def test_padded_vocabulary_is_accepted_and_lossless(target, vocab):
    ref = target.generate(PROMPT, do_sample=False, max_new_tokens=24, eos_token_id=None)
    drafters = [padded_copy(noisy_copy(target, 0.05, 1), vocab), hs.NGramDrafter()]
    # objective="mat": the throughput learner rightly plays plain steps with a drafter that costs what the target does
    out = hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=24, eos_token_id=None, tokenizer=[0] * 90,
                      objective="mat")
    assert torch.equal(out.sequences, ref)
    assert out.stats.accepted_tokens > 0  # the padded copy does draft and get accepted
    tree = hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=24, eos_token_id=None, tokenizer=[0] * 90,
                       tree="depth=3,topk=2,total=6")
    assert torch.equal(tree.sequences, ref)


def test_padding_within_one_percent_needs_no_tokenizer():
    big = tiny_model("llama", seed=12, vocab=1000)
    ref = big.generate(PROMPT, do_sample=False, max_new_tokens=12, eos_token_id=None)
    out = hs.generate(big, PROMPT, drafters=[padded_copy(noisy_copy(big, 0.05, 2), 992)], max_new_tokens=12,
                      eos_token_id=None)
    assert torch.equal(out.sequences, ref)
    with pytest.raises(ValueError, match="vocabulary of 900 tokens but the target has 1000"):
        hs.generate(big, PROMPT, drafters=[tiny_model("llama", vocab=900)], max_new_tokens=4, eos_token_id=None)


def test_padded_drafter_never_drafts_padding(target):
    """A drafter whose padding rows would win every argmax cannot propose them: they are outside the target's
    vocabulary, cut away before drafting."""
    drafter = padded_copy(target, 110)
    with torch.no_grad():
        drafter.lm_head.weight[97:] *= 50.0  # padding logits dominate
    out = hs.generate(target, PROMPT, drafters=[drafter], max_new_tokens=12, eos_token_id=None, policy="fixed:0",
                      tokenizer=[0] * 97)
    ref = target.generate(PROMPT, do_sample=False, max_new_tokens=12, eos_token_id=None)
    assert torch.equal(out.sequences, ref) and int(out.sequences.max()) < 97


@pytest.mark.slow
def test_padded_drafter_samples_the_target_distribution():
    small = tiny_model("llama", vocab=VOCAB, init_std=0.3)
    drafters = [padded_copy(noisy_copy(small, 0.5, 3), VOCAB + 3), hs.NGramDrafter()]
    exact = exact_first_two(small, 0.9, 0.95)
    counts = generated_first_two(small, drafters, range(1200), lambda seed: dict(
        max_new_tokens=3, draft_len=2, temperature=0.9, top_p=0.95, policy="random", tokenizer=[0] * VOCAB))
    assert TINY_PROMPT.shape[1] > 0
    assert chi2_pvalue(counts, exact) > P_ACCEPT


@pytest.mark.parametrize("kind", ["float64", "bfloat16", "int8"])
def test_drafter_in_another_dtype(target, kind):
    base = noisy_copy(target, 0.05, 4)
    drafter = int8_copy(base) if kind == "int8" else base.to(getattr(torch, kind))
    ref = target.generate(PROMPT, do_sample=False, max_new_tokens=20, eos_token_id=None)
    out = hs.generate(target, PROMPT, drafters=[drafter, hs.NGramDrafter()], max_new_tokens=20, eos_token_id=None)
    assert torch.equal(out.sequences, ref)
    sampled = hs.generate(target, PROMPT, drafters=[drafter], max_new_tokens=20, eos_token_id=None, do_sample=True,
                          seed=1)
    assert sampled.stats.new_tokens == 20
