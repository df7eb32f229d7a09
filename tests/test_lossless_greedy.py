"""Greedy losslessness: hs.generate(...).sequences == target.generate(do_sample=False), token for token."""
from __future__ import annotations

import pytest
import torch
from tiny import ARCHS, drafter_zoo, tiny_model
from transformers import TextStreamer

import hedgespec_fast as hs

POLICY_NAMES = ["hedgespec", "hedge", "adanormalhedge", "ucbspec", "exp3spec", "metasd", "tapout", "fixed:1",
                "fixed:3", "random", "oracle", "hedgespec+tapout"]


@pytest.fixture(scope="module", params=ARCHS)
def setup(request):
    target = tiny_model(request.param)
    drafters = drafter_zoo(target) + [hs.NGramDrafter()]
    return request.param, target, drafters


def prompts(n=2, vocab=97):
    gen = torch.Generator().manual_seed(7)
    # one random prompt and one with a repeated phrase, so the n-gram drafter has something to find
    random_prompt = torch.randint(2, vocab, (1, 9), generator=gen)
    phrase = torch.randint(2, vocab, (4,), generator=gen)
    repeated = torch.cat([phrase, torch.randint(2, vocab, (3,), generator=gen), phrase]).view(1, -1)
    return [random_prompt, repeated][:n]


def reference(target, prompt, **kw):
    return target.generate(prompt, do_sample=False, **kw)


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_every_policy_matches_target_generate(setup, policy):
    arch, target, drafters = setup
    for prompt, draft_len in zip(prompts(), (3, 5)):
        ref = reference(target, prompt, max_new_tokens=24, eos_token_id=None)
        out = hs.generate(target, prompt, drafters=drafters, max_new_tokens=24, policy=policy, draft_len=draft_len,
                          eos_token_id=None, seed=3)
        assert torch.equal(out.sequences, ref), f"{arch}/{policy}/K={draft_len}: speculative output differs"
        assert out.stats.new_tokens == 24
        assert sum(r.emitted for r in out.stats.records) == 24


@pytest.mark.parametrize("draft_len", [1, 2, 7])
def test_draft_lengths(setup, draft_len):
    arch, target, drafters = setup
    prompt = prompts(1)[0]
    ref = reference(target, prompt, max_new_tokens=30, eos_token_id=None)
    out = hs.generate(target, prompt, drafters=drafters, max_new_tokens=30, draft_len=draft_len, eos_token_id=None)
    assert torch.equal(out.sequences, ref)
    assert all(r.drafted <= draft_len for r in out.stats.records)


@pytest.mark.parametrize("max_new_tokens", [1, 2, 4, 5, 6])
def test_max_new_tokens_is_exact(setup, max_new_tokens):
    """Budgets below, at and just past K + 1: never one token too many or too few."""
    _, target, drafters = setup
    for prompt in (prompts(1)[0], torch.tensor([[5]])):  # a one-token prompt has no target prefill at all
        ref = reference(target, prompt, max_new_tokens=max_new_tokens, eos_token_id=None)
        out = hs.generate(target, prompt, drafters=drafters, max_new_tokens=max_new_tokens, draft_len=4,
                          policy="fixed:0", eos_token_id=None)
        assert torch.equal(out.sequences, ref)


def _eos_inside_output(target, prompt, at=6):
    """A token that greedy decoding first emits at offset ``at``, to serve as EOS."""
    ref = reference(target, prompt, max_new_tokens=30, eos_token_id=None)[0, prompt.shape[1]:].tolist()
    for offset in range(at, len(ref)):
        if ref[offset] not in ref[:offset]:
            return ref[offset]
    pytest.skip("greedy text repeats a single token: no fresh EOS candidate")


@pytest.mark.parametrize("policy", ["hedgespec", "fixed:0", "ucbspec"])
def test_eos_inside_a_draft_stops_exactly(setup, policy):
    _, target, drafters = setup
    prompt = prompts(1)[0]
    eos = _eos_inside_output(target, prompt)
    ref = reference(target, prompt, max_new_tokens=30, eos_token_id=eos)
    out = hs.generate(target, prompt, drafters=drafters, max_new_tokens=30, draft_len=6, policy=policy,
                      eos_token_id=eos, pad_token_id=eos)
    assert torch.equal(out.sequences, ref)
    assert out.sequences[0, -1].item() == eos


def test_min_new_tokens_and_repetition_penalty(setup):
    """Position-dependent processors (min-new-tokens, repetition penalty) are applied per position."""
    _, target, drafters = setup
    prompt = prompts(1)[0]
    eos = _eos_inside_output(target, prompt, at=2)
    kw = dict(max_new_tokens=20, eos_token_id=eos, pad_token_id=eos, min_new_tokens=12, repetition_penalty=1.3)
    ref = reference(target, prompt, **kw)
    out = hs.generate(target, prompt, drafters=drafters, draft_len=4, **kw)
    assert torch.equal(out.sequences, ref)
    assert ref.shape[1] - prompt.shape[1] >= 12


def test_custom_generate_is_the_same_engine(setup):
    _, target, drafters = setup
    prompt = prompts(1)[0]
    ref = reference(target, prompt, max_new_tokens=20, eos_token_id=None)
    seq = target.generate(prompt, custom_generate=hs.custom_generate, drafters=drafters, max_new_tokens=20,
                          eos_token_id=None, do_sample=False)
    assert torch.equal(seq, ref)
    out = target.generate(prompt, custom_generate=hs.custom_generate, drafters=drafters, max_new_tokens=20,
                          eos_token_id=None, do_sample=False, return_dict_in_generate=True, policy="ucbspec")
    assert torch.equal(out.sequences, ref)
    assert out["spec_stats"].rounds > 0


class _Collect(TextStreamer):
    """A streamer that records what it is fed instead of decoding it."""

    def __init__(self):
        self.chunks = []
        self.ended = False

    def put(self, value):
        self.chunks.append(value.reshape(-1).tolist())

    def end(self):
        self.ended = True


def test_streamer_gets_tokens_as_rounds_emit_them(setup):
    _, target, drafters = setup
    prompt = prompts(1)[0]
    streamer = _Collect()
    out = hs.generate(target, prompt, drafters=drafters, max_new_tokens=16, streamer=streamer, eos_token_id=None)
    assert streamer.ended
    assert streamer.chunks[0] == prompt[0].tolist()
    streamed = [t for chunk in streamer.chunks[1:] for t in chunk]
    assert streamed == out.sequences[0, prompt.shape[1]:].tolist()
    assert len(streamer.chunks) - 1 == out.stats.rounds  # one put per round, not one at the end


@pytest.mark.parametrize("tree", [None, "depth=3,topk=2,total=6", "chains:k=2"], ids=["chain", "tree", "multi"])
@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_static_caches_match_target_generate(setup, policy, tree):
    """cache_implementation="static" (transformers' option): target and drafters on StaticCache buffers, rolled
    back and gathered in place; the output is still the target's."""
    from hedgespec_fast.cache import is_static, static_caches_supported

    arch, target, drafters = setup
    prompt = prompts(1)[0]
    ref = reference(target, prompt, max_new_tokens=20, eos_token_id=None)
    for _ in range(2):  # the second call reuses (rewinds) the target's static cache
        out = hs.generate(target, prompt, drafters=drafters, max_new_tokens=20, policy=policy, tree=tree, draft_len=3,
                          eos_token_id=None, seed=3, cache_implementation="static")
        assert torch.equal(out.sequences, ref), f"{arch}/{policy}/{tree}: static caches changed the output"
    if static_caches_supported():
        from hedgespec_fast import graphs

        _, cache, graphed = graphs._KEPT[target]["target"]
        assert is_static(cache)
        assert graphed is None or graphed.reason == "CUDA graphs need a CUDA device"  # on CPU: the eager path


@pytest.mark.parametrize("policy", ["hedgespec", "fixed:4", "hedgespec@objective=mat"])
def test_a_lookup_with_a_1gram_fallback_matches_target_generate(setup, policy):
    """Beside the plain lookup, one that falls back to 1-grams (HF prompt lookup's rule): it proposes nearly
    everywhere, is no context for the learner, and changes nothing about the output."""
    arch, target, drafters = setup
    pool = drafters + [hs.NGramDrafter((3, 2, 1), name="ngram-1")]
    assert policy != "fixed:4" or pool[4].name == "ngram-1"
    for prompt in prompts():
        ref = reference(target, prompt, max_new_tokens=24, eos_token_id=None)
        out = hs.generate(target, prompt, drafters=pool, max_new_tokens=24, policy=policy, draft_len=6,
                          eos_token_id=None, seed=3)
        assert torch.equal(out.sequences, ref), f"{arch}/{policy}: speculative output differs"
