"""Which drafters a generation brings in: lazy prefill (a drafter takes the prompt in with the first forward that
needs it), a fixed policy's other drafters never run, and the throughput learner leaves out a drafter whose catch-up
on the prompt would cost more than the evaluation budget of the whole generation."""
from __future__ import annotations

import pytest
import torch
from test_throughput import fixed_costs
from tiny import noisy_copy, tiny_model

import hedgespec_fast as hs
from hedgespec_fast.cost import CostModel, shared_cost_model
from hedgespec_fast.drafters.base import DraftContext
from hedgespec_fast.drafters.hf import HFDrafter
from hedgespec_fast.joining import Joining
from hedgespec_fast.learners.static import Fixed
from hedgespec_fast.logits import LogitsWarp
from hedgespec_fast.pool import DrafterPool

PROMPT = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])


@pytest.fixture(scope="module")
def pool():
    target = tiny_model("llama", vocab=128, hidden=32, layers=2, seed=3)
    return target, [noisy_copy(target, 0.05, 1), noisy_copy(target, 0.3, 2), hs.NGramDrafter()]


def counting(models):
    calls = [0] * len(models)
    hooks = [m.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1)) for i, m in enumerate(models)]
    return calls, hooks


def test_lazy_prefill_drafts_and_reports_what_an_eager_one_does(pool):
    target, drafters = pool
    eager, lazy = HFDrafter(drafters[0]), HFDrafter(drafters[0])
    eager.prefill(PROMPT)
    lazy.prefill(PROMPT, lazy=True)
    assert lazy.lag == PROMPT.shape[1] and lazy.pending_rows is None  # nothing computed yet
    emitted = torch.tensor([12, 13, 14])
    for d in (eager, lazy):
        d.commit(emitted, emitted.tolist(), 0, False)  # deferred: the lazy one still computes nothing
    assert lazy.pending_rows is None
    a, b = (d.commit(emitted, emitted.tolist(), 0, True) for d in (eager, lazy))
    assert a.logits.shape == b.logits.shape == (6, 128)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    proposals = []
    for d in (eager, lazy):
        ids = torch.zeros((1, 32), dtype=torch.long)
        ids[0, :13] = torch.cat([PROMPT[0], emitted, emitted])
        proposals.append(d.propose(4, DraftContext(ids, 13, LogitsWarp(), False, None, None)))
    assert torch.equal(proposals[0].tokens, proposals[1].tokens)
    torch.testing.assert_close(proposals[0].logits, proposals[1].logits, atol=1e-5, rtol=1e-5)


def test_a_drafter_joining_inside_a_batch_owes_its_rows(pool):
    """A lazy drafter that joins after two deferred rounds owes their 5 positions: at the evaluation it reports the
    same rows as a drafter that was in all along (the catch-up computes them). One that has drafted since its prefill
    can no longer owe them (they were fed), and says so instead of returning too few rows."""
    target, drafters = pool
    eager, joining = HFDrafter(drafters[0]), HFDrafter(drafters[0])
    eager.prefill(PROMPT)
    joining.prefill(PROMPT, lazy=True)
    rounds = [torch.tensor([12, 13]), torch.tensor([14, 15, 16])]
    for emitted in rounds:
        eager.commit(emitted, emitted.tolist(), 0, False)  # an evaluation batch under way
        joining.commit(emitted, emitted.tolist(), 0, None)  # out of play: nobody asks
    assert joining.can_owe(5) and not joining.can_owe(PROMPT.shape[1] + 5)  # (the row before them must be unfed)
    joining.owe(5)
    last = torch.tensor([17])
    a, b = (d.commit(last, last.tolist(), 0, True) for d in (eager, joining))
    assert a.logits.shape == b.logits.shape == (6, 128)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)

    drafted = HFDrafter(drafters[0])
    drafted.prefill(PROMPT, lazy=True)
    ids = torch.zeros((1, 32), dtype=torch.long)
    ids[0, :9] = torch.cat([PROMPT[0], rounds[0]])
    drafted.commit(rounds[0], rounds[0].tolist(), 0, None)
    drafted.propose(2, DraftContext(ids, 9, LogitsWarp(), False, None, None))  # e.g. chosen by a deferred choice
    drafted.commit(rounds[1], rounds[1].tolist(), 0, None)
    assert not drafted.can_owe(5) and drafted.can_owe(0)
    with pytest.raises(RuntimeError, match="cannot owe 5 positions"):
        drafted.owe(5)


def test_pool_times_eager_prefills_only():
    target = tiny_model("llama", vocab=128, hidden=32, layers=2, seed=3)
    models = [noisy_copy(target, 0.05, 1), noisy_copy(target, 0.3, 2)]
    seen = []
    calls, hooks = counting(models)
    try:
        DrafterPool(models).prefill(PROMPT, lazy=[1], on_prefill=lambda *args: seen.append(args))
    finally:
        for h in hooks:
            h.remove()
    assert calls == [1, 0]
    assert [(i, n) for i, n, _ in seen] == [(0, PROMPT.shape[1])] and seen[0][2] > 0


class FixedAskingForAll(Fixed):
    """The negative control: a fixed policy that does not say which drafters it uses."""

    def drafters_used(self):
        return None


def test_a_fixed_policy_never_runs_the_other_drafters(pool):
    target, drafters = pool
    ref = target.generate(PROMPT, do_sample=False, max_new_tokens=16, eos_token_id=None)
    runs = {}
    for label, policy in (("fixed", Fixed(3, 0)), ("control", FixedAskingForAll(3, 0))):
        calls, hooks = counting(drafters[:2])
        try:
            out = hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=16, policy=policy, eos_token_id=None)
        finally:
            for h in hooks:
                h.remove()
        assert torch.equal(out.sequences, ref)
        runs[label] = calls
    assert runs["fixed"][0] > 0 and runs["fixed"][1] == 0
    assert runs["control"][1] > 0, "the control prefills every drafter: the check cannot tell the two apart"


def test_a_drafter_too_dear_to_bring_in_is_left_out(pool):
    """Catch-up (prefill seconds per token × prompt) over eval_budget × new tokens × verify[1]: left out of the whole
    generation, never run. With twice the new tokens (so the budget covers it) the same drafter waits instead (the
    boundary is the stated rule), and whether or when it joins, the output is target.generate()'s."""
    target, drafters = pool
    hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=16, eos_token_id=None, seed=0)  # calibrates
    costs = shared_cost_model(target, DrafterPool(drafters).key, len(drafters))
    names = DrafterPool(drafters).names
    results = {}
    for new in (16, 32):
        step = costs.verify_seconds(1)
        budget_16 = 0.1 * 16 * step  # eval_budget (default 0.1) × 16 new tokens × a plain step
        costs.prefill[1] = 1.5 * budget_16 / PROMPT.shape[1]  # catch-up = 1.5 × the 16-token budget
        costs.prefill[0] = 0.0  # drafter 0 (as large as the target here) joins at once, whatever the clocks said
        costs.prefill_ratio = [None] * len(drafters)  # (else the measured ratios would price this prompt)
        policy = hs.HedgeSpecSelector(len(drafters))
        policy.begin(len(drafters), 8, costs=costs)
        plan = Joining.plan(policy, costs, len(drafters), PROMPT.shape[1], PROMPT.shape[1] + new, 0.1, True)
        assert (plan.never, set(plan.waiting)) == (({1}, set()) if new == 16 else (set(), {1}))  # 0: in at once
        calls, hooks = counting(drafters[:2])
        try:
            out = hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=new, eos_token_id=None, seed=0)
        finally:
            for h in hooks:
                h.remove()
        assert torch.equal(out.sequences, target.generate(PROMPT, do_sample=False, max_new_tokens=new,
                                                          eos_token_id=None))
        results[new] = (out.stats, calls)
    stats, calls = results[16]
    assert stats.left_out == [names[1]] and calls[1] == 0 and stats.drafter_counts[1] == 0
    assert names[0] not in [*stats.joined, *stats.left_out] and calls[0] > 0  # free to join: in from the start
    stats, calls = results[32]
    # it ran only if it joined (once in, its first forward waits for an evaluation that wants it)
    assert (calls[1] == 0 or names[1] in stats.joined) and (names[1] in stats.left_out) != (names[1] in stats.joined)


def test_a_waiting_drafter_joins_when_what_it_could_have_saved_reaches_its_price():
    """The ski-rental rule on known costs: verify(n) = 1 + 0.02 n s, a round's overhead 0.1 s, drafter 0 drafts at
    0.1 s a token and drafter 1 at 0.05 s, so drafter 0's best conceivable seconds per token is min_K C(0, K) / (K + 1)
    (at K = 8: (1.18 + 0.8 + 0.1) / 9). Each round adds the round's seconds, priced like C(i, K) (verification, the
    played drafter's drafting, the overhead), minus its tokens at that rate. It joins at the first round whose rent
    reaches prefill rate × length; never before, and a round that emitted as fast as the drafter conceivably could
    adds nothing."""
    costs = fixed_costs(2, [0.1, 0.05])
    costs.prefill[0] = 0.01  # catch-up: 10 ms per committed token
    policy = hs.HedgeSpecSelector(2)
    policy.begin(2, 8, costs=costs)
    plan = Joining.plan(policy, costs, 2, 100, 200, 0.1, True)
    best = min(float(costs.arm_seconds([(0, k)])[0]) / (k + 1) for k in policy.draft_lens)
    assert plan.waiting == {0: (0.01, pytest.approx(best))} and plan.out == {0} and plan.lazy == {0}
    assert best == pytest.approx((1.0 + 0.02 * 9 + 0.8 + 0.1) / 9)
    assert Joining.plan(policy, costs, 2, 1, 200, 0.1, True).out == set()  # a price one plain step repays: in
    length, rent = 100, 0.0
    assert plan.after_round(costs, 9, 9, length + 9, chosen=0, drafted=8) == []  # 9 tokens in 2.08 s: its best
    length += 9
    assert plan.rent[0] == pytest.approx(0.0, abs=1e-6)  # (the arms' prices are fp32)
    length += 2  # drafter 1 drafted 4, the target took 1 and its own: 1.1 s of verification, 0.2 of drafting
    rent += 1.1 + 0.1 + 4 * 0.05 - 2 * best
    assert plan.after_round(costs, 5, 2, length, chosen=1, drafted=4) == []
    assert plan.rent[0] == pytest.approx(rent, abs=1e-6)
    while True:  # plain steps: each could at best have been 1 token at `best` instead of a 1.12 s round
        length += 1
        rent += 1.02 + 0.1 - best
        joined = plan.after_round(costs, 1, 1, length)
        assert plan.rent[0] == pytest.approx(rent, abs=1e-6)
        if joined:
            break
        assert plan.out == {0} and rent < 0.01 * length
    assert joined == [0] and plan.out == set() and plan.joined == {0: length}
    assert rent >= 0.01 * length  # the rule
    assert plan.after_round(costs, 1, 1, length + 1) == []  # once in, in


def test_a_drafter_that_joins_mid_generation_is_exact_and_scored(pool, monkeypatch):
    """Joining after some rounds, with evaluation batches under way: the drafter catches up on the text it sat out
    (one forward), then drafts and is evaluated like the others; the output is target.generate()'s. A join inside a
    batch owes the batch's positions (without that the drafter returned too few belief rows); the test checks that
    such a join happened."""
    target, drafters = pool
    owed = []
    real_owe = DrafterPool.owe
    monkeypatch.setattr(DrafterPool, "owe", lambda self, i, n: (owed.append(n), real_owe(self, i, n))[1])
    hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=8, eos_token_id=None, seed=0)  # calibrates
    costs = shared_cost_model(target, DrafterPool(drafters).key, len(drafters))
    ref = target.generate(PROMPT, do_sample=False, max_new_tokens=40, eos_token_id=None)
    names = DrafterPool(drafters).names
    joined_at = []
    for scale in (0.0, 2.0, 3.5):  # catch-up prices from nothing to several plain steps (the budget: 4)
        step = costs.verify_seconds(1)
        costs.prefill[0] = costs.prefill[1] = scale * step / PROMPT.shape[1]
        costs.prefill_ratio = [None] * len(drafters)
        # drafting priced at a twentieth of a step, whatever the clocks said (these drafters are as large as the
        # target): a round can then repay the price, so the rule is exercised, not the machine's timings
        costs.draft[0] = costs.draft[1] = 0.05 * step
        costs.excess[0] = costs.excess[1] = 0.0
        out = hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=40, eos_token_id=None, seed=0)
        assert torch.equal(out.sequences, ref), scale
        joined_at.append(out.stats.joined.get(names[0]))
        if joined_at[-1]:  # scored by the next evaluation, though its arms have no weight: a batch is 4 rounds and
            # the window's 8 positions, so at most 8 rounds of one token each
            made, rounds_after = 0, []
            for record in out.stats.records:
                if made >= joined_at[-1]:
                    rounds_after.append(record.gamma is not None and not torch.tensor(record.gamma[0]).isnan().all())
                made += record.emitted
            assert any(rounds_after[:8]) or len(rounds_after) < 8, (scale, rounds_after)
        assert scale == 0.0 or set(out.stats.joined) | set(out.stats.left_out) >= {names[0], names[1]}
        if scale == 0.0:  # a free catch-up: in from the start, never waiting
            assert out.stats.joined == {} and out.stats.left_out == []
    assert any(at is not None and at > 0 for at in joined_at[1:]), joined_at  # a dear one later, mid-generation
    assert any(n > 0 for n in owed), owed  # and inside an evaluation batch


def test_nothing_is_left_out_where_the_rule_does_not_apply(pool):
    """An explicit eval_every, the MAT objective, record_gamma or join="eager": every drafter is brought in, whatever it
    costs."""
    target, drafters = pool
    costs = shared_cost_model(target, DrafterPool(drafters).key, len(drafters))
    for kwargs in (dict(spec_config=hs.SpecConfig(eval_every=2)), dict(objective="mat"),
                   dict(spec_config=hs.SpecConfig(record_gamma=True)), dict(policy="hedgespec@join=eager")):
        hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=8, eos_token_id=None, **kwargs)
        costs.prefill[1], costs.prefill_ratio = 1e6, [None] * len(drafters)  # far beyond any budget
        out = hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=8, eos_token_id=None, **kwargs)
        assert out.stats.left_out == [] and out.stats.joined == {}, kwargs


def test_cost_model_prefill_rate():
    costs = CostModel(2)
    assert costs.catch_up_seconds(0, 100) is None
    costs.observe_prefill(0, 100, 0.5)
    assert costs.catch_up_seconds(0, 200) == pytest.approx(1.0)
    costs.observe_prefill(0, 0, 3.0)  # an empty prompt says nothing
    assert costs.summary()["prefill_ms_per_token"] == [pytest.approx(5.0), None]


def test_a_drafter_is_priced_against_the_target_on_the_same_prompt():
    """A prompt forward's seconds per token fall with its length (fixed costs), so a rate measured on a short prompt
    overprices a long one; the drafter's ratio to the target's forward on the same prompt does not. Readings are
    noisy upwards: a lower one is taken at once, a higher one moves the estimate by the decay."""
    costs = CostModel(2, decay=0.2)
    costs.observe_target_prefill(30, 0.30)  # 10 ms a token on a short prompt
    costs.observe_prefill(0, 30, 0.09)  # the drafter: 0.3 of the target
    assert costs.prefill_ratio == [pytest.approx(0.3), None]
    costs.observe_target_prefill(500, 2.0)  # 4 ms a token on a long one
    assert costs.catch_up_seconds(0, 500) == pytest.approx(0.3 * 2.0)  # not 0.09 / 30 × 500 = 1.5 s
    assert costs.prefill[1] is None and costs.catch_up_seconds(1, 500) is None  # never measured: unpriced
    costs.observe_prefill(0, 500, 1.2)  # a slow reading (0.6 of the target): moves the estimate by the decay
    assert costs.prefill_ratio[0] == pytest.approx(0.3 + 0.2 * 0.3)
    costs.observe_prefill(0, 500, 0.4)  # a faster one (0.2): taken at once
    assert costs.prefill_ratio[0] == pytest.approx(0.2) and costs.prefill[0] == pytest.approx(0.2 * 2.0 / 500)
    costs.observe_target_prefill(500, None)  # a prompt the target was not timed on (a GPU): no price from it
    assert costs.target_prefill is None
    costs.observe_target_prefill(0, 0.01)  # a one-token prompt: no forward to compare with
    assert costs.target_prefill is None
    costs.observe_prefill(1, 100, 0.5)  # without the target's timing: seconds per token, as before
    assert costs.prefill[1] == pytest.approx(0.005) and costs.prefill_ratio[1] is None


@pytest.mark.parametrize("beliefs", [0, 1, 2, 5])
def test_a_calibrated_prefill_times_two_steps_and_keeps_the_lower(pool, monkeypatch, beliefs):
    """The first one-token forward after a prompt can run cold, and a price that keeps a drafter out is never measured
    again: the last two prompt tokens go in one at a time and the lower reading is the step's cost. The prompt's
    beliefs (the warm start's rows) and the pending row are those of an uncalibrated prefill."""
    import hedgespec_fast.drafters.hf as hf_module

    target, drafters = pool
    plain, timed_one = HFDrafter(drafters[0]), HFDrafter(drafters[0])
    _, rows = plain.prefill(PROMPT, beliefs=beliefs)
    readings = iter([0.5, 0.1])
    real_timed = hf_module.timed
    monkeypatch.setattr(hf_module, "timed", lambda fn, device: (real_timed(fn, device)[0], next(readings)))
    seconds, timed_rows = timed_one.prefill(PROMPT, calibrate=True, beliefs=beliefs)
    assert seconds == 0.1 and timed_one.fed == plain.fed == PROMPT.shape[1]
    torch.testing.assert_close(timed_one.pending_rows, plain.pending_rows)
    if beliefs:
        assert timed_rows.shape == rows.shape == (1, beliefs, rows.shape[-1])
        torch.testing.assert_close(timed_rows, rows)
    else:
        assert rows is None and timed_rows is None


def test_a_drafter_that_joins_is_scored_by_the_next_evaluation(pool, monkeypatch):
    """Joining ends the schedule's skip and the next evaluation scores the new drafter whatever its weight. Forced
    here: every evaluation plans a skip longer than the generation and asks for no model drafter; the drafter that
    joins is still scored within a batch (4 rounds and the window's 8 positions: at most 8 rounds)."""
    from hedgespec_fast.feedback import EvaluationSchedule
    from hedgespec_fast.learners.full import ExpertPolicy

    target, drafters = pool
    monkeypatch.setattr(EvaluationSchedule, "evaluated", lambda self, *a, **k: setattr(self, "skip_left", 10_000))
    monkeypatch.setattr(ExpertPolicy, "evaluation_targets", lambda self, free: [bool(f) for f in free])
    hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=8, eos_token_id=None, seed=0)  # calibrates
    costs = shared_cost_model(target, DrafterPool(drafters).key, len(drafters))
    name = DrafterPool(drafters).names[0]
    joins = 0
    for scale in (2.0, 3.0, 3.5):
        step = costs.verify_seconds(1)
        costs.prefill[0] = costs.prefill[1] = scale * step / PROMPT.shape[1]
        costs.prefill_ratio = [None] * len(drafters)
        costs.draft[0] = costs.draft[1] = 0.05 * step  # (see the test above)
        costs.excess[0] = costs.excess[1] = 0.0
        out = hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=40, eos_token_id=None, seed=0)
        at = out.stats.joined.get(name)
        if not at:
            continue
        joins += 1
        made, scored = 0, []
        for record in out.stats.records:
            if made >= at:
                scored.append(record.gamma is not None and not torch.tensor(record.gamma[0]).isnan().all())
            made += record.emitted
        assert any(scored[:8]) or len(scored) < 8, (scale, scored)
    assert joins, "no drafter joined mid-generation: the check proves nothing"
