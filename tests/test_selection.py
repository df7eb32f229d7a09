"""Selection end to end: drafters of known quality (noisy copies of the target); hedgespec must find the best one."""
from __future__ import annotations

import pytest
import torch
from tiny import noisy_copy, tiny_model

import hedgespec_fast as hs

BEST = 1  # the copy with the least noise


@pytest.fixture(scope="module")
def ranked():
    target = tiny_model("llama", seed=3)
    drafters = [noisy_copy(target, 0.9, 11), noisy_copy(target, 0.05, 12), noisy_copy(target, 0.4, 13),
                hs.NGramDrafter()]
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(2, 97, (1, 8), generator=gen) for _ in range(3)]
    return target, drafters, prompts


def run(target, drafters, prompts, policy, **kw):
    kw.setdefault("objective", "mat")  # these checks are about MAT at a fixed K
    return [hs.generate(target, p, drafters=drafters, max_new_tokens=60, policy=policy, draft_len=4,
                        eos_token_id=None, seed=i, **kw).stats for i, p in enumerate(prompts)]


def mat(stats_list):
    return sum(s.new_tokens for s in stats_list) / sum(s.rounds for s in stats_list)


def test_quality_order_is_real(ranked):
    target, drafters, prompts = ranked
    fixed = [mat(run(target, drafters, prompts, f"fixed:{i}")) for i in range(len(drafters))]
    assert max(range(len(fixed)), key=fixed.__getitem__) == BEST, fixed


def test_hedgespec_settles_on_the_best_and_beats_random(ranked):
    target, drafters, prompts = ranked
    hedge = run(target, drafters, prompts, "hedgespec")
    for stats in hedge:
        late = [r.chosen for r in stats.records[len(stats.records) // 2 :]]
        assert late.count(BEST) / len(late) > 0.6, stats.drafter_counts
    random = run(target, drafters, prompts, "random")
    assert mat(hedge) > mat(random)


def test_warm_selector_carries_over_prompts(ranked):
    target, drafters, prompts = ranked
    selector = hs.HedgeSpecSelector(len(drafters), objective="mat")
    first = run(target, drafters, prompts[:1], selector)[0]
    steps_after_first = int(selector.step)
    later = run(target, drafters, prompts[1:], selector)
    assert int(selector.step) > steps_after_first > 0
    assert selector.weights()[BEST] == selector.weights().max()
    share_later = sum(s.drafter_counts[BEST] for s in later) / sum(s.rounds for s in later)
    share_first = first.drafter_counts[BEST] / first.rounds
    assert share_later >= share_first


@pytest.mark.parametrize("policy", ["ucbspec", "exp3spec", "metasd", "hedge", "adanormalhedge"])
def test_every_learner_beats_the_worst_drafter(ranked, policy):
    target, drafters, prompts = ranked
    worst = mat(run(target, drafters, prompts[:1], "fixed:0"))
    assert mat(run(target, drafters, prompts[:1], policy)) > worst
