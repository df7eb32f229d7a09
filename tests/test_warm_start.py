"""The prompt warm start: full information on the prompt itself, from logits the prefill computes anyway.

It must move the first choice toward the drafter that predicts the target best (a near-copy among noisy ones),
change no output (greedy equal to target.generate with and without it), keep memory at the stated bound for a long
prompt (the target's and one drafter's last-P rows at a time), and leave the bandits alone."""
from __future__ import annotations

import pytest
import torch
from tiny import noisy_copy, tiny_model

import hedgespec_fast as hs
from hedgespec_fast import feedback
from hedgespec_fast.cost import CostModel

BEST = 2


@pytest.fixture(scope="module")
def pool():
    target = tiny_model("llama", seed=21, max_positions=1024)
    drafters = [noisy_copy(target, 1.5, 1), noisy_copy(target, 1.2, 2), noisy_copy(target, 0.02, 3)]
    return target, drafters


def prompt(length, seed=0):
    return torch.randint(2, 97, (1, length), generator=torch.Generator().manual_seed(seed))


def cheap_drafting(n_drafters: int) -> CostModel:
    """Costs under which drafting pays (flat verification, drafting at 1 % of it): the throughput learner's first
    choice is then a drafter, not the plain step that these target-sized copies would earn on measured costs."""
    costs = CostModel(n_drafters)
    costs.verify = {n: 1.0 for n in range(1, 20)}
    costs.draft = [0.01] * n_drafters
    return costs


@pytest.mark.parametrize("objective", ["mat", "throughput"])
def test_warm_start_moves_the_first_choice_to_the_near_copy(pool, objective):
    target, drafters = pool
    firsts = {}
    for warm in (0, 32):
        chosen = []
        for seed in range(4):
            policy = hs.HedgeSpecSelector(len(drafters), choice="argmax", objective=objective)
            if objective == "throughput":
                policy.cost_model = cheap_drafting(len(drafters))
            out = hs.generate(target, prompt(48, seed), drafters=drafters, max_new_tokens=6, eos_token_id=None,
                              policy=policy, spec_config=hs.SpecConfig(prompt_warmup=warm), seed=seed)
            chosen.append(out.stats.records[0].chosen)
            assert out.stats.prompt_positions == warm and out.stats.records[0].drafted > 0
        firsts[warm] = chosen
    assert firsts[32] == [BEST] * 4, firsts
    assert firsts[0] != [BEST] * 4, "without the warm start the first choice cannot know the best drafter"


def test_warm_start_changes_no_output(pool):
    target, drafters = pool
    ids = prompt(40, 7)
    ref = target.generate(ids, do_sample=False, max_new_tokens=30, eos_token_id=None)
    for warm in (0, 1, 32, 500):  # 500 > the prompt: capped at L - 1
        for tree in (None, "depth=3,topk=2,total=6"):
            out = hs.generate(target, ids, drafters=drafters + [hs.NGramDrafter()], max_new_tokens=30,
                              eos_token_id=None, tree=tree, policy=f"hedgespec@prompt_warmup={warm}")
            assert torch.equal(out.sequences, ref), (warm, tree)
            assert out.stats.prompt_positions == min(warm, ids.shape[1] - 1)


def test_memory_stays_at_the_bound_for_a_long_prompt(pool, monkeypatch):
    """A 900-token prompt: the warm start keeps the target's last P rows and scores one drafter's [rows, P, V] at a
    time, never a prompt-length block of logits."""
    target, drafters = pool
    seen, alive = [], []
    original = feedback.PromptScores.score

    def spy(self, indices, beliefs):
        seen.append((self.raw.shape, [tuple(b.logits.shape) if b.logits is not None else tuple(b.tokens.shape)
                                      for b in beliefs or []]))
        alive.append(len(indices))
        return original(self, indices, beliefs)

    monkeypatch.setattr(feedback.PromptScores, "score", spy)
    out = hs.generate(target, prompt(900, 3), drafters=drafters + [hs.NGramDrafter()], max_new_tokens=4,
                      eos_token_id=None, policy="hedgespec@prompt_warmup=32")
    assert out.stats.prompt_positions == 32
    assert all(raw == (32, 97) for raw, _ in seen)
    assert all(shape[0] == 32 for _, shapes in seen for shape in shapes)
    assert max(alive) == 1  # drafters scored one at a time


def test_bandits_and_fixed_policies_get_nothing_from_it(pool):
    target, drafters = pool
    for policy in ("ucbspec", "fixed:0", "exp3spec"):
        out = hs.generate(target, prompt(40), drafters=drafters, max_new_tokens=6, eos_token_id=None, policy=policy)
        assert out.stats.prompt_positions == 0


def test_warm_start_composes_with_a_selector_reused_across_prompts(pool):
    target, drafters = pool
    selector = hs.HedgeSpecSelector(len(drafters), objective="mat")
    hs.generate(target, prompt(40, 1), drafters=drafters, max_new_tokens=8, eos_token_id=None, policy=selector)
    steps = int(selector.step)
    out = hs.generate(target, prompt(40, 2), drafters=drafters, max_new_tokens=8, eos_token_id=None, policy=selector)
    assert out.stats.prompt_positions == 32 and int(selector.step) >= steps + 32 - 5 + 1
    assert int(selector.weights().argmax()) == BEST


def test_default_warm_start_follows_the_learners_objective(pool):
    """On by default for MAT learners, off for the throughput learner (chat prompts under-rate drafting: see
    config.DEFAULT_PROMPT_WARMUP); a selector object's own objective decides, not the config's."""
    target, drafters = pool
    cases = [("hedgespec@objective=mat", 32), ("hedgespec", 0),
             (hs.HedgeSpecSelector(len(drafters), objective="mat"), 32), (hs.HedgeSpecSelector(len(drafters)), 0)]
    for policy, expected in cases:
        out = hs.generate(target, prompt(40), drafters=drafters, max_new_tokens=6, eos_token_id=None, policy=policy)
        assert out.stats.prompt_positions == expected, policy


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["hedgespec@objective=mat", "hedgespec@prompt_warmup=4"])
def test_sampling_with_the_warm_start_follows_the_target(policy, monkeypatch):
    """χ² of the first two sampled tokens against the target's exact distribution with the prompt warm start on
    (the MAT learner's default; forced on for the throughput learner), and the broken-rule control must reject."""
    from sampling_utils import (P_ACCEPT, P_REJECT, PROMPT, chi2_pvalue, exact_first_two, generated_first_two,
                                tiny_vocab_models)
    from test_lossless_sampling import _broken_residual

    import hedgespec_fast.speculation as speculation_module

    target, drafters = tiny_vocab_models()
    assert PROMPT.shape[1] > 2  # the warm start has prompt positions to score
    kwargs = dict(max_new_tokens=3, draft_len=2, temperature=0.9, top_p=0.95, policy=policy)
    exact = exact_first_two(target, 0.9, 0.95)
    counts = generated_first_two(target, drafters, range(900), lambda seed: kwargs)
    assert chi2_pvalue(counts, exact) > P_ACCEPT
    monkeypatch.setattr(speculation_module, "verify_sampling", _broken_residual)
    # 1600 draws: the throughput learner drafts with the models in ~60 % of first rounds here (plain steps and
    # lookup the rest), so the broken rule shows less often than under the MAT learner
    broken = generated_first_two(target, drafters, range(1600), lambda seed: kwargs)
    assert chi2_pvalue(broken, exact) < P_REJECT, "a broken rule went unnoticed with the warm start on"
