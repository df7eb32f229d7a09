"""The confidence stop (``SpecConfig(draft_stop=τ)``): a model drafter's chain ends before the first position whose top
probability is below τ; γ counts the stop (γ' = γ · 1{max q ≥ τ}), so the learner's expected lengths are those of the
chains it really gets; the output stays the target's (greedy: identical; sampling: its distribution)."""
from __future__ import annotations

import pytest
import torch
from sampling_utils import PROMPT as FIRST_TWO_PROMPT
from sampling_utils import P_ACCEPT, chi2_pvalue, exact_first_two, generated_first_two, tiny_vocab_models
from tiny import ARCHS, drafter_zoo, noisy_copy, tiny_model

import hedgespec_fast as hs
from hedgespec_fast.drafters.base import Beliefs, DraftContext
from hedgespec_fast.drafters.hf import HFDrafter
from hedgespec_fast.feedback import Evaluator
from hedgespec_fast.logits import LogitsWarp

PROMPT = torch.tensor([[3, 1, 4, 1, 5, 2, 6]])


@pytest.fixture(scope="module")
def small():
    return tiny_vocab_models()


def greedy_chain_confidences(model, k):
    """Top probabilities along the model's own greedy chain after PROMPT, ``[k]``."""
    ids, confidences = PROMPT.clone(), []
    for _ in range(k):
        with torch.no_grad():
            p = model(ids).logits[0, -1].float().softmax(-1)
        confidences.append(float(p.max()))
        ids = torch.cat([ids, p.argmax().view(1, 1)], dim=1)
    return confidences


def test_a_chain_ends_before_the_first_unsure_position(small):
    target, drafters = small
    k = 6
    confidences = greedy_chain_confidences(drafters[0], k)
    tau = sorted(confidences)[2] + 1e-4  # between the 3rd and 4th least sure: the stop fires inside the chain
    first_unsure = next(j for j, c in enumerate(confidences) if c < tau)
    lengths = {}
    for threshold in (None, tau, 0.0):  # (under no_grad, as in the decoder)
        drafter = HFDrafter(drafters[0])
        with torch.no_grad():
            drafter.prefill(PROMPT)
        ids = torch.zeros((1, 30), dtype=torch.long)
        ids[0, : PROMPT.shape[1]] = PROMPT
        ctx = DraftContext(ids, PROMPT.shape[1], LogitsWarp(), False, None, min_confidence=threshold)
        with torch.no_grad():
            lengths[threshold] = len(drafter.propose(k, ctx))
    assert lengths[tau] == first_unsure < k
    assert lengths[None] == lengths[0.0] == k  # negative controls: no stop, and a stop that never fires


def test_gamma_counts_the_stop():
    """γ' = γ · 1{max q ≥ τ} for model beliefs (the drafter's own warp), unchanged for a lookup's tokens."""
    gen = torch.Generator().manual_seed(0)
    target_rows = torch.randn(5, 8, generator=gen)
    drafter_rows = torch.randn(5, 8, generator=gen) * 2
    drafter_rows[1] = torch.tensor([5.0, 0, 0, 0, 0, 0, 0, 0])  # a sure position
    beliefs = [Beliefs(logits=drafter_rows), Beliefs(tokens=torch.tensor([0, 1, -1, 2, 3]))]
    warp = LogitsWarp()
    ids = torch.zeros((1, 20), dtype=torch.long)
    for do_sample in (False, True):
        plain = Evaluator(warp, do_sample).gamma(target_rows, target_rows, beliefs, ids, 5)
        stopped = Evaluator(warp, do_sample, min_confidence=0.5).gamma(target_rows, target_rows, beliefs, ids, 5)
        confident = drafter_rows.softmax(-1).amax(-1) >= 0.5
        assert 0 < int(confident.sum()) < 5  # both cases occur
        torch.testing.assert_close(stopped[0], plain[0] * confident)
        torch.testing.assert_close(stopped[1], plain[1])


@pytest.fixture(scope="module", params=ARCHS)
def setup(request):
    target = tiny_model(request.param)
    return target, drafter_zoo(target) + [hs.NGramDrafter()]


@pytest.mark.parametrize("policy", ["hedgespec", "fixed:0", "hedgespec@objective=mat", "tapout"])
def test_greedy_output_is_the_targets(setup, policy):
    target, drafters = setup
    ref = target.generate(PROMPT, do_sample=False, max_new_tokens=24, eos_token_id=None)
    for tau in (0.05, 0.3):
        out = hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=24, policy=policy, draft_len=6,
                          eos_token_id=None, seed=0, spec_config=hs.SpecConfig(draft_stop=tau))
        assert torch.equal(out.sequences, ref), (policy, tau)


def test_the_learners_feedback_is_the_chain_it_got(small, monkeypatch):
    """Greedy, every round evaluated: the chosen drafter's γ' at the round's positions has as many leading ones as
    the round accepted (capped at what was asked), the exact one-step counterfactual of the stopped chain. The
    negative control (γ without the stop) claims longer chains than the drafter drafted."""
    target, _ = small
    drafters = [noisy_copy(target, 0.1, 5)]  # right often, so a stop cuts chains that would have been accepted
    confidences = greedy_chain_confidences(drafters[0], 12)
    tau = sorted(confidences)[len(confidences) // 2]  # the stop fires often

    def mismatches():
        out = hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=40, policy="fixed:0", draft_len=6,
                          eos_token_id=None, spec_config=hs.SpecConfig(draft_stop=tau, record_gamma=True))
        bad, stopped = 0, 0
        for record in out.stats.records:
            row = record.gamma[0]
            lead = next((j for j, g in enumerate(row) if g < 0.5), len(row))
            asked = 6  # max_new_tokens leaves room for a full chain in every round but the last ones
            stopped += record.drafted < asked and record.emitted == record.accepted + 1
            bad += min(lead, asked) != record.accepted and record.emitted == record.accepted + 1
        return bad, stopped, out.stats.rounds

    bad, stopped, rounds = mismatches()
    assert stopped > 0 and bad <= 2, (bad, stopped, rounds)  # (the last rounds may ask fewer than 6)
    monkeypatch.setattr(Evaluator, "__init__", _without_stop(Evaluator.__init__))
    bad_control, _, _ = mismatches()
    assert bad_control > bad + 2, ("γ without the stop looked as exact: the check cannot tell", bad_control, bad)


def _without_stop(init):
    def patched(self, *args, **kwargs):
        kwargs["min_confidence"] = None
        init(self, *args, **kwargs)
    return patched


@pytest.mark.slow
def test_sampling_follows_the_target_with_the_stop(small):
    """τ = 0.73 sits between the drafter's first-position confidence (0.76) and its second-position one after its
    likeliest token (0.72): whether the chain goes on depends on the token it sampled, the case a biased rule
    would show in the first two tokens' distribution."""
    target, drafters = small
    exact = exact_first_two(target, 0.9, 0.95)
    kwargs = dict(max_new_tokens=3, draft_len=2, temperature=0.9, top_p=0.95, policy="fixed:0@draft_stop=0.73")
    counts = generated_first_two(target, drafters, range(1500), lambda seed: kwargs)
    assert chi2_pvalue(counts, exact) > P_ACCEPT
    out = [hs.generate(target, FIRST_TWO_PROMPT, drafters=drafters, do_sample=True, seed=s, eos_token_id=None, **kwargs)
           for s in range(20)]
    first = [o.stats.records[0].drafted for o in out]
    assert 1 in first and 2 in first, f"the stop should cut some first chains, not all: {first}"


def test_bad_threshold_is_a_clear_error(small):
    target, drafters = small
    for bad in (1.0, -0.1, "high", True):
        with pytest.raises(ValueError, match="draft_stop must be a probability in \\[0, 1\\)"):
            hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=4, spec_config=hs.SpecConfig(draft_stop=bad))




def test_cost_model_expects_the_chains_a_stop_leaves():
    """Kaplan–Meier over runs of confident positions: with the pattern (sure, sure, unsure) repeated, a chain from a
    random position drafts min(K, run) with runs 2, 1, 0: D(1) = 2/3, D(K ≥ 2) = 1; a stretch sure to its end says
    nothing about where runs end (censored: D(K) = K, where counting ends as failures would give less). Kept per
    stop: without one (or another τ) a chain drafts K; the arm's seconds use D."""
    from test_throughput import fixed_costs

    costs = fixed_costs(2, [0.1, 0.1])
    costs.draft_stop = 0.4
    costs.observe_confident(0, [True, True, False] * 20)
    costs.observe_confident(1, [True] * 10)
    assert costs.drafted_tokens(0, 1) == pytest.approx(2 / 3, abs=0.02)
    assert costs.drafted_tokens(0, 2) == pytest.approx(1.0, abs=0.02)
    assert costs.drafted_tokens(0, 16) == pytest.approx(1.0, abs=0.02)
    assert costs.drafted_tokens(1, 8) == pytest.approx(8.0)
    seconds = float(costs.arm_seconds([(0, 16)])[0])
    d = costs.drafted_tokens(0, 16)
    assert seconds == pytest.approx(1.0 + 0.02 * (d + 1) + 0.1 * d + 0.1)  # verify(D + 1) + D·draft + overhead
    costs.draft_stop = None
    assert costs.drafted_tokens(0, 16) == 16.0
    assert float(costs.arm_seconds([(0, 16)])[0]) == pytest.approx(1.0 + 0.02 * 17 + 1.6 + 0.1)
    costs.draft_stop = 0.6
    assert costs.drafted_tokens(0, 16) == 16.0  # no runs seen under this stop yet
