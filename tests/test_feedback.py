"""Full-information feedback is aligned: every drafter's beliefs and γ equal a from-scratch recomputation on the true
prefix (ALGORITHMS.md §2: the "pending logits" alignment is easy to get wrong)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import drafter_zoo, noisy_copy, tiny_model

import hedgespec_fast as hs
from hedgespec_fast.drafters import HFDrafter, NGramDrafter
from hedgespec_fast.drafters.base import DraftContext
from hedgespec_fast.feedback import Evaluator, onehot_acceptance
from hedgespec_fast.logits import LogitsWarp
from hedgespec_fast.pool import DrafterPool


def full_logits(model, seq):
    with torch.no_grad():
        return model(seq.view(1, -1)).logits[0]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_hf_drafter_beliefs_equal_a_fresh_forward(arch):
    """Random rounds of propose / commit (with and without evaluation) never desynchronise the drafter."""
    target = tiny_model(arch)
    drafter = HFDrafter(noisy_copy(target, 0.3, 1))
    rng = torch.Generator().manual_seed(0)
    seq = torch.tensor([3, 9, 27, 81, 50])
    drafter.prefill(seq.view(1, -1))
    ids = torch.zeros((1, 200), dtype=torch.long)
    owed = None  # positions committed since the drafter last reported beliefs
    for round_index in range(21):
        chosen = round_index % 3 != 2  # some rounds another drafter drafts
        k = int(torch.randint(0, 5, (1,), generator=rng))
        n_accepted = 0
        if chosen:
            ids[0, : seq.numel()] = seq
            proposal = drafter.propose(k, DraftContext(ids, seq.numel(), LogitsWarp(), False, None))
            n_accepted = int(torch.randint(0, len(proposal) + 1, (1,), generator=rng))
            emitted = torch.cat([proposal.tokens[:n_accepted], torch.randint(2, 97, (1,), generator=rng)])
        else:
            emitted = torch.randint(2, 97, (int(torch.randint(1, 5, (1,), generator=rng)),), generator=rng)
        # evaluate now / defer to the next evaluation (possibly across rounds that draft) / never report
        want = (True, False, False, True, None, True, False)[round_index % 7]
        beliefs = drafter.commit(emitted, emitted.tolist(), n_accepted, want)
        seq = torch.cat([seq, emitted])
        owed = torch.cat([owed, emitted]) if owed is not None else emitted
        if want is None:
            assert beliefs is None
            owed = None
        elif want:
            start = seq.numel() - owed.numel()
            expected = full_logits(drafter.model, seq)[start - 1 : seq.numel() - 1]
            torch.testing.assert_close(beliefs.logits, expected, atol=1e-4, rtol=1e-4)
            owed = None
        else:
            assert beliefs is None


def test_ngram_lookup_and_beliefs():
    drafter = NGramDrafter(ngram_sizes=(2, 1))
    drafter.prefill(torch.tensor([[5, 6, 7, 8, 5, 6]]))
    ids = torch.zeros((1, 30), dtype=torch.long)
    ids[0, :6] = torch.tensor([5, 6, 7, 8, 5, 6])
    proposal = drafter.propose(4, DraftContext(ids, 6, LogitsWarp(), False, None))
    assert proposal.tokens.tolist() == [7, 8, 5, 6]  # "5 6" was followed by 7, then the lookup continues
    assert proposal.probs is None  # deterministic: one-hot q
    beliefs = drafter.commit(torch.tensor([7, 9]), [7, 9], 1, True)
    assert beliefs.tokens.tolist() == [7, 8]  # after "...5 6" → 7; after "...6 7" → 8
    lonely = NGramDrafter(ngram_sizes=(3,))
    lonely.prefill(torch.tensor([[1, 2, 3, 4]]))
    assert len(lonely.propose(5, DraftContext(ids, 4, LogitsWarp(), False, None))) == 0  # nothing matches
    assert lonely.commit(torch.tensor([4]), [4], 0, True).tokens.tolist() == [-1]


def test_ngram_beliefs_equal_its_proposals():
    """The counterfactual proposal at every position is what the drafter would really have drafted there."""
    seq = [4, 5, 6, 4, 5, 7, 4, 5, 6, 9, 4, 5]
    drafter = NGramDrafter()
    drafter.prefill(torch.tensor([seq[:3]]))
    beliefs = drafter.commit(torch.tensor(seq[3:]), seq[3:], 0, True).tokens.tolist()
    for pos in range(3, len(seq)):
        fresh = NGramDrafter()
        fresh.prefill(torch.tensor([seq[:pos]]))
        ids = torch.zeros((1, 40), dtype=torch.long)
        ids[0, :pos] = torch.tensor(seq[:pos])
        proposal = fresh.propose(1, DraftContext(ids, pos, LogitsWarp(), False, None)).tokens.tolist()
        assert beliefs[pos - 3] == (proposal[0] if proposal else -1)


def test_onehot_acceptance():
    p = torch.log(torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]))
    tokens = torch.tensor([[1, -1], [2, 0]])
    torch.testing.assert_close(onehot_acceptance(p, tokens, "tv"), torch.tensor([[0.6, 0.0], [0.3, 0.5]]))
    torch.testing.assert_close(onehot_acceptance(p, tokens, "greedy"), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


@pytest.mark.parametrize("eval_every", [1, 3], ids=["every-round", "deferred"])
@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampling"])
def test_recorded_gamma_equals_recomputation(do_sample, eval_every):
    """γ in the per-round records, for every drafter and position, equals α(p, q_i) computed from scratch; a deferred
    evaluation's record covers every position since the previous one."""
    target = tiny_model("qwen2", seed=2)
    models = drafter_zoo(target, seed=2)
    temperature = 0.7
    prompt = torch.tensor([[11, 12, 13, 11, 12]])
    kw = dict(do_sample=True, temperature=temperature, seed=1) if do_sample else {}
    out = hs.generate(target, prompt, drafters=models + [NGramDrafter()], max_new_tokens=30, draft_len=3,
                      policy=f"hedgespec@eval_every={eval_every},record_gamma=true", eos_token_id=None, **kw)
    seq = out.sequences[0]
    target_logits = full_logits(target, seq)
    drafter_logits = [full_logits(m, seq) for m in models]
    start = pos = prompt.shape[1]
    evaluated = 0
    for record in out.stats.records:
        pos += record.emitted
        if record.gamma is None:
            continue
        rows = slice(start - 1, pos - 1)
        t = target_logits[rows] / temperature
        for i, q_logits in enumerate(drafter_logits):
            q = q_logits[rows] / temperature
            if do_sample:
                expected = torch.minimum(t.softmax(-1), q.softmax(-1)).sum(-1)
            else:
                expected = (q.argmax(-1) == t.argmax(-1)).float()
            torch.testing.assert_close(torch.tensor(record.gamma[i]), expected, atol=1e-4, rtol=1e-4)
        evaluated += pos - start
        start = pos
    assert evaluated == out.stats.new_tokens  # every position was evaluated exactly once
    assert (out.stats.evaluations < out.stats.rounds) == (eval_every > 1)


def test_evaluator_warps_drafters_like_the_target():
    """With top-k the drafters' rows go through the same pre-pass: γ uses the warped distributions on both sides."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper

    warp = LogitsWarp([TemperatureLogitsWarper(0.8), TopKLogitsWarper(3)])
    gen = torch.Generator().manual_seed(0)
    p_raw, q_raw = torch.randn(4, 10, generator=gen), torch.randn(4, 10, generator=gen)
    p = warp(torch.zeros((1, 20), dtype=torch.long), p_raw, 5)
    q = warp(torch.zeros((1, 20), dtype=torch.long), q_raw, 5)
    gamma = Evaluator(warp, do_sample=True, backend="torch").gamma(p, p_raw, [hs.drafters.Beliefs(logits=q_raw)],
                                                                  torch.zeros((1, 20), dtype=torch.long), 5)
    expected = torch.minimum(p.softmax(-1), q.softmax(-1)).sum(-1)
    torch.testing.assert_close(gamma[0], expected)


def test_evaluation_budget_follows_the_weight_on_what_it_informs():
    """eval_every="auto": after a batch that cost t seconds of evaluation over rounds of w seconds, ⌈t / (b·w)⌉ −
    batch rounds are skipped, b the budget scaled by the learner's weight on the arms evaluation informs (model
    drafters'), down to a quarter of it; the throughput learner reports that weight."""
    from types import SimpleNamespace

    from hedgespec_fast.cost import CostModel
    from hedgespec_fast.feedback import EvaluationSchedule

    costs = SimpleNamespace(eval_forward=0.1, work=0.1)
    skips = {}
    for need in (1.0, 0.5, 0.0):
        schedule = EvaluationSchedule("auto", budget=0.1)
        schedule.evaluated(4, costs, need)
        skips[need] = schedule.skip_left
    assert skips == {1.0: 6, 0.5: 16, 0.0: 36}
    fixed_every = EvaluationSchedule(3)
    fixed_every.evaluated(3, costs, 0.0)
    assert fixed_every.skip_left == 0  # an integer eval_every is a promise: no skipping
    learner = hs.HedgeSpecSelector(2)
    learner.begin(2, 4, costs=CostModel(2), sleepers=(1,))
    assert learner.evaluation_need([False, True]) == pytest.approx(
        float(sum(w for (i, k), w in zip(learner.arms, learner.weights_.tolist()) if k > 0 and i == 0)))
    assert hs.HedgeSpecSelector(2, objective="mat").evaluation_need([False, True]) == 1.0


def test_a_lookup_with_a_1gram_fallback_does_not_define_contexts():
    """A 1-gram fallback has a proposal nearly everywhere: it is no sleeper for the learner's contexts (which would
    then be one), but its arms still sleep where it has none; an explicit ``context`` wins either way."""
    assert NGramDrafter().context and not NGramDrafter((3, 2, 1)).context
    assert NGramDrafter((3, 2, 1), context=True).context and not NGramDrafter(context=False).context
    pool = DrafterPool([NGramDrafter(), NGramDrafter((3, 2, 1), name="ngram-1")])
    assert pool.sleepers == (0,)  # negative control: both would count with the fallback defining contexts
    assert DrafterPool([NGramDrafter(), NGramDrafter((3, 2, 1), context=True)]).sleepers == (0, 1)
    pool.prefill(torch.tensor([[5, 6, 7, 8, 9]]))
    assert pool.awake() == [False, False]  # "9" never occurred before: the fallback has nothing either
    pool.commit(torch.tensor([6]), [6], [0, 0], None)
    assert pool.awake() == [False, True]  # "9 6" is new, "6" was followed by 7


def test_a_1gram_fallback_drafts_where_the_longer_lookup_stops():
    seq = [4, 5, 6, 7, 1, 2, 3, 4, 5, 6, 7, 8, 3]
    ids = torch.zeros((1, 40), dtype=torch.long)
    ids[0, : len(seq)] = torch.tensor(seq)
    drafts = {}
    for sizes in ((3, 2), (3, 2, 1)):
        drafter = NGramDrafter(sizes)
        drafter.prefill(ids[:, : len(seq)])
        drafts[sizes] = drafter.propose(4, DraftContext(ids, len(seq), LogitsWarp(), False, None)).tokens.tolist()
    assert drafts[(3, 2)] == []  # "8 3" never occurred
    assert drafts[(3, 2, 1)] == [4, 5, 6, 7]  # "3" was followed by 4, then "3 4" by 5, …


def _released_rows(stream, gamma, chunks, draft_lens, seconds):
    """Feed γ ``[N, S]`` to ``stream`` in chunks; the loss rows of every release, in order, and the positions seen
    when each window was released."""
    from hedgespec_fast.kernels.host import throughput_rows

    rows, seen, start = [], {}, 0
    for size in chunks:
        window, released = stream.extend(gamma[:, start:start + size])
        start += size
        if released:
            losses, _ = throughput_rows(window.numpy().astype(np.float64), stream.window_awake.numpy(), draft_lens,
                                        seconds)
            assert losses.shape[0] == released
            rows.append(losses)
            first = len(seen)
            seen.update({first + t: start for t in range(released)})
    return np.concatenate(rows), seen


@pytest.mark.parametrize("seed", range(4))
def test_determined_windows_are_released_early_with_the_same_losses(seed):
    """Early release (greedy γ in {0, 1}, NaN where not evaluated): every window's losses equal those of the complete
    window, in the same order, and windows in which every row has met a 0 or a NaN come out before K positions are
    in. Control: with no 0 and no NaN nothing can come early."""
    from hedgespec_fast.feedback import LossStream

    gen = torch.Generator().manual_seed(seed)
    k_max, n, size = 8, 3, 120
    draft_lens = (1, 2, 4, 8)
    gamma = (torch.rand(n, size, generator=gen) < 0.7).float()
    gamma[1, torch.rand(size, generator=gen) < 0.3] = float("nan")  # a drafter evaluated now and then
    gamma = torch.cat([gamma, torch.zeros(n, k_max)], dim=1)  # (the tail lets the complete rule release everything)
    chunks = [int(c) for c in torch.randint(1, 4, (200,), generator=gen)]
    arms = 1 + n * len(draft_lens)
    seconds = np.linspace(0.5, 2.0, arms)
    late, seen_late = _released_rows(LossStream("expected_length", "token", k_max), gamma, chunks, draft_lens, seconds)
    early, seen_early = _released_rows(LossStream("expected_length", "token", k_max, early=True), gamma, chunks,
                                       draft_lens, seconds)
    common = min(len(late), len(early))
    np.testing.assert_allclose(early[:common], late[:common])
    assert all(seen_early[t] <= seen_late[t] for t in range(common))
    assert sum(seen_early[t] < seen_late[t] for t in range(common)) > common // 4  # sooner, and often
    ones = torch.ones(n, size)
    _, seen_control = _released_rows(LossStream("expected_length", "token", k_max, early=True), ones, chunks,
                                     draft_lens, seconds)
    _, seen_plain = _released_rows(LossStream("expected_length", "token", k_max), ones, chunks, draft_lens, seconds)
    assert seen_control == seen_plain


def test_an_unknown_gamma_past_a_miss_leaves_the_expected_length_known():
    """A chain ends at its first γ of 0, so a NaN (not evaluated) after it changes no ÂL; a NaN before it does (those
    arms are asleep). Host (NumPy) and reference (torch) alike."""
    from hedgespec_fast.kernels import throughput_losses
    from hedgespec_fast.kernels.host import throughput_rows

    nan = float("nan")
    gamma = torch.tensor([[1.0, 0.0, nan, nan], [1.0, nan, 0.0, 1.0]])
    lens = (1, 2, 4)
    seconds = torch.linspace(1.0, 2.0, 1 + 2 * len(lens))
    reference = throughput_losses(gamma, lens, seconds)[0]
    host, _ = throughput_rows(gamma.double().numpy(), np.ones((2, 4), dtype=bool), lens, seconds.double().numpy())
    assert not reference[1:4].isnan().any()  # drafter 0: ÂL = 2 for every K
    assert not reference[4:5].isnan().any() and reference[5:7].isnan().all()  # drafter 1: K = 1 known, longer not
    np.testing.assert_allclose(host[0, 1:4], reference[1:4].numpy(), rtol=1e-6)
    assert (host[0, 5:7] == 0).all()  # (the host rows put 0 where asleep, with a mask)

