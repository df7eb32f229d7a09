"""Stacked drafters: models of one shape run as one batch-G model. The stack must reproduce every member (logits
and KV cache), the engine on it must give the same output and the same γ as on the members one by one, and a stack
that would not reproduce its members must be refused."""
from __future__ import annotations

import pytest
import torch
from tiny import ARCHS, noisy_copy, tiny_model, truncated_copy

import hedgespec_fast as hs
from hedgespec_fast.cache import new_cache
from hedgespec_fast.drafters import stacked as stacked_module
from hedgespec_fast.drafters.stacked import StackedDrafters, StackingError, stack_models
from hedgespec_fast.modeling import forward_rows
from hedgespec_fast.pool import DrafterPool

PROMPT = torch.tensor([[5, 9, 11, 5, 9, 13]])


def copies(target, n=3, seed=0):
    return [noisy_copy(target, s, seed + i) for i, s in enumerate((0.05, 0.3, 0.8)[:n])]


@pytest.mark.parametrize("arch", ARCHS)
def test_stack_reproduces_each_member_and_its_cache(arch):
    target = tiny_model(arch, seed=1)
    members = copies(target)
    stacked = stack_models(members)
    ids = torch.randint(2, 97, (9,), generator=torch.Generator().manual_seed(2))
    cache = new_cache()
    got = forward_rows(stacked, ids, cache, 0, len(members))
    step = forward_rows(stacked, ids[:1], cache, 1, len(members))  # and one decoding step on the stacked cache
    for b, member in enumerate(members):
        own = new_cache()
        want = forward_rows(member, ids, own, 0, 1)[0]
        torch.testing.assert_close(got[b], want, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(step[b], forward_rows(member, ids[:1], own, 1, 1)[0], atol=1e-5, rtol=1e-4)
        for layer, own_layer in zip(cache.layers, own.layers):
            torch.testing.assert_close(layer.keys[b], own_layer.keys[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(layer.values[b], own_layer.values[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampling"])
def test_engine_on_a_stack_equals_the_members_one_by_one(do_sample):
    target = tiny_model("llama", seed=3)
    drafters = copies(target, seed=3) + [hs.NGramDrafter()]
    kw = dict(drafters=drafters, max_new_tokens=30, draft_len=3, eos_token_id=None, seed=4, policy="hedgespec",
              objective="mat", do_sample=do_sample, temperature=0.8)
    runs = {stack: hs.generate(target, PROMPT, spec_config=hs.SpecConfig(stack_drafters=stack), **kw)
            for stack in (True, False)}
    assert torch.equal(runs[True].sequences, runs[False].sequences)
    if not do_sample:
        plain = target.generate(PROMPT, do_sample=False, max_new_tokens=30, eos_token_id=None)
        assert torch.equal(runs[True].sequences, plain)
    assert [r.chosen for r in runs[True].stats.records] == [r.chosen for r in runs[False].stats.records]
    for a, b in zip(runs[True].stats.records, runs[False].stats.records):
        assert (a.gamma is None) == (b.gamma is None)  # the last round is not evaluated (nobody would learn from it)
        if a.gamma is not None:
            torch.testing.assert_close(torch.tensor(a.gamma), torch.tensor(b.gamma), atol=1e-5, rtol=1e-5)


def test_pool_stacks_only_models_alike():
    target = tiny_model("llama", seed=5)
    alike = copies(target, 2)
    pool = DrafterPool(alike + [truncated_copy(target, 1), hs.NGramDrafter()], stack=True)
    assert pool.stacked == [[0, 1]]
    assert isinstance(pool.units[0][0], StackedDrafters)
    assert DrafterPool(alike, stack=False).stacked == []
    assert DrafterPool(alike, stack="auto").stacked == []  # auto stacks on CUDA only: on CPU it does not pay


def test_a_stack_that_does_not_reproduce_its_members_is_refused(monkeypatch):
    target = tiny_model("llama", seed=6)
    members = copies(target, 2)
    with pytest.raises(StackingError, match="differ"):
        stack_models([members[0], truncated_copy(target, 1)])
    monkeypatch.setattr(stacked_module.GroupedLinear, "forward",
                        lambda self, x: torch.bmm(x, self.weight_t.flip(0)))  # rows through the wrong member
    with pytest.raises(StackingError, match="does not reproduce member"):
        stack_models(members)
    stacked_module._STACKS.clear()
    pool = DrafterPool(members, stack=True)  # the pool falls back to separate drafters, with the reason logged
    assert pool.stacked == []


def test_stacks_are_cached_and_rebuilt_when_weights_change():
    target = tiny_model("llama", seed=7)
    members = copies(target, 2)
    first = stacked_module.cached_stack(members)
    assert stacked_module.cached_stack(members) is first
    with torch.no_grad():
        members[1].lm_head.weight.mul_(2.0)
    assert stacked_module.cached_stack(members) is not first


def test_a_stack_is_evaluated_when_any_member_is_wanted():
    """An evaluation that wants only some drafters (the throughput learner leaves weightless ones out) still runs a
    stack whose first member is left out when another member is wanted: one forward serves the group."""
    target = tiny_model("llama", seed=5)
    pool = DrafterPool(copies(target, 2) + [hs.NGramDrafter()], stack=True)
    pool.prefill(PROMPT)
    emitted = torch.tensor([7, 8, 9])
    beliefs = pool.commit(emitted, emitted.tolist(), [0, 0, 0], [None, True, True])
    assert beliefs[0] is not None and beliefs[1] is not None and beliefs[1].logits.shape[0] == 3
