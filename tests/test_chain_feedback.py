"""Greedy chains as feedback: a chain's verification shows its own drafter's γ at the round's positions (ones where
accepted, a 0 where rejected), so rounds that the evaluation schedule skips still teach the learner about the
drafter it played, at every position of the round, not only at the round's first window."""
from __future__ import annotations

import pytest
import torch
from tiny import drafter_zoo, tiny_model

import hedgespec_fast as hs
from hedgespec_fast import decoder as decoder_module
from hedgespec_fast.feedback import chain_gamma, fill_chain_gamma

PROMPT = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])


@pytest.fixture(scope="module")
def setup():
    target = tiny_model("llama")
    return target, drafter_zoo(target)


def test_chain_gamma_by_hand():
    assert chain_gamma(accepted=2, drafted=5, emitted=3) == [1.0, 1.0, 0.0]  # rejected at the third
    assert chain_gamma(accepted=4, drafted=4, emitted=5) == [1.0] * 4  # the bonus position: unknown
    assert chain_gamma(accepted=0, drafted=3, emitted=1) == [0.0]
    assert chain_gamma(accepted=3, drafted=6, emitted=2) == [1.0, 1.0]  # an EOS cut the round
    gamma = torch.full((2, 4), float("nan"))
    gamma[1, 2] = 0.25  # evaluated: kept
    fill_chain_gamma(gamma, 10, [(11, 1, [1.0, 0.0]), (9, 0, [1.0])])  # (the second starts before the block)
    assert gamma[1, 1] == 1.0 and gamma[1, 2] == 0.25 and gamma[1, 0].isnan() and gamma[0].isnan().all()


@pytest.mark.parametrize("draft_stop", [None, 0.08])  # (the tiny drafters' top probabilities: 0.05–0.13)
def test_chain_gamma_is_the_evaluators_gamma(setup, draft_stop):
    """Every drafter evaluated every round (``record_gamma``): at each chain round the chosen drafter's γ from the
    evaluation equals what its chain showed. The data must be able to tell: it has rejections, and fully accepted
    chains whose bonus position the drafter would have got right (so claiming a 0 there would be caught)."""
    target, drafters = setup
    rejected = bonus_right = rounds = 0
    for i in range(len(drafters)):
        out = hs.generate(target, PROMPT, drafters=drafters, policy=f"fixed:{i}", max_new_tokens=40, draft_len=5,
                          eos_token_id=None, spec_config=hs.SpecConfig(record_gamma=True, draft_stop=draft_stop))
        for record in out.stats.records:
            if not record.drafted:
                continue
            shown = chain_gamma(record.accepted, record.drafted, record.emitted)
            assert record.gamma[record.chosen][: len(shown)] == shown, (i, record)
            rounds += 1
            rejected += record.accepted < record.drafted
            full = record.accepted == record.drafted and record.emitted > record.accepted
            bonus_right += full and record.gamma[record.chosen][record.accepted] == 1.0
    assert rounds > 20 and rejected > 5 and (bonus_right > 0 or draft_stop is not None), (rounds, rejected, bonus_right)


@pytest.mark.parametrize("lookup", [True, False])
def test_skipped_rounds_teach_the_played_drafter(setup, monkeypatch, lookup):
    """Evaluation budget tiny, so after the first batch the schedule skips every round: the learner's γ there has
    the chosen drafter's row at the round's positions (from the chain) and other model drafters unknown. Without the
    fill (the negative control) the chosen row is unknown too. The learner still learns, but the arm it plays is
    pinned (drafter 0, K = 4), so the runs play the same rounds."""
    target, drafters = setup
    monkeypatch.setattr(hs.HedgeSpecSelector, "choose", lambda self, awake=None: 0)
    monkeypatch.setattr(hs.HedgeSpecSelector, "draft_length", lambda self: 4)
    pool = drafters + ([hs.NGramDrafter()] if lookup else [])
    n_models = len(drafters)

    def violations():
        seen = []
        original = hs.HedgeSpecSelector.update

        def spy(self, outcome):
            seen.append(outcome)
            return original(self, outcome)

        monkeypatch.setattr(hs.HedgeSpecSelector, "update", spy)
        hs.generate(target, PROMPT, drafters=pool, max_new_tokens=48, draft_len=6, eos_token_id=None, seed=0,
                    spec_config=hs.SpecConfig(eval_budget=0.001, join="eager"))
        monkeypatch.setattr(hs.HedgeSpecSelector, "update", original)
        bad = skipped = 0
        for o in seen:
            if o.gamma is None or o.start is None or o.chosen >= n_models or not o.drafted:
                continue
            if o.gamma_start != o.start or o.gamma.shape[1] != o.emitted:
                continue  # an evaluated batch
            others = [j for j in range(n_models) if j != o.chosen]
            if not all(bool(o.gamma[j].isnan().all()) for j in others):
                continue  # evaluated this round
            skipped += 1
            shown = chain_gamma(o.accepted, o.drafted, o.emitted)
            bad += o.gamma[o.chosen, : len(shown)].tolist() != shown
        return bad, skipped

    violations()  # the first call measures the evaluation's cost (the shared cost model); from then on it skips
    bad, skipped = violations()
    assert skipped >= 3 and bad == 0, (bad, skipped)
    monkeypatch.setattr(decoder_module, "fill_chain_gamma", lambda gamma, start, chains: gamma)
    bad_control, skipped_control = violations()
    assert skipped_control == skipped and bad_control == skipped, "without the fill the chosen row looked known"
