"""Which model drafters a generation brings in, and when: a drafter's first cost is catching up on the text, and a
drafter that could never repay it should not pay it."""
from __future__ import annotations

from .cost import CostModel


class Joining:
    """The drafters out of play in a generation, and the rule that brings them in.

    Under the throughput objective with the automatic evaluation schedule (and not ``record_gamma``), a model drafter
    whose catch-up price is known (``CostModel.prefill``: its measured ratio to the target's prompt forward, which
    every generation times, CPU clocks) starts out of play:

    - **never** in this generation when catching up on the prompt would cost more than ``eval_budget`` of the whole
      generation at plain-step speed (``eval_budget × new tokens × verify[1]``): the budget is what the user allows
      evaluation, and bringing a drafter in is its first and largest cost;
    - otherwise **waiting**, and it joins by the ski-rental break-even rule. Each round adds to drafter i's rent what
      it could at most have saved there: the round's verification seconds minus its emitted tokens at drafter i's
      best conceivable seconds per token, ``c_i = min_K C(i, K) / (K + 1)`` (every draft token accepted). The
      round's seconds are priced as the arms' C(i, K) are: its verification, the played drafter's drafting and the
      round's overhead (counting the verification alone made a drafted round look cheaper than the waiting
      drafter's best, and a 1.5B int8 that agreed 14 tokens a round joined only at token 26). It joins
      once the rent reaches its price, the catch-up on the text so far (prefill rate × length); one whose price one
      plain step could repay (``verify[1] − c_i``) is in from the start. Waiting can cost at
      most about the price (what the drafter could have saved before joining), and a drafter that joins has cost at
      most twice what joining at once would have: the deterministic ski-rental bound. Until then it costs nothing.

    A drafter out of play has its arms asleep (never chosen), is never evaluated and keeps only a backlog (lazy
    prefill): when it joins, the evaluation schedule's skip ends and the next evaluation scores it whatever its weight
    (its arms have none yet: without that it waited for its turn among the weightless, and on 64-token answers a
    drafter that joined at token 15 was never scored, nor chosen), its first forward catches up on the text, and the
    sleeping-experts learner scores it from then on. Measured on the Qwen pool (bf16 target, a 2-core CPU):
    prefilling a 0.5B int8 drafter and the target's int8 copy on every prompt cost 0.3–1.1 s a prompt, more than the
    drafters gave back on most of them.

    Drafters the policy never chooses (a fixed policy's others) are lazy and stay out of the rule.
    """

    def __init__(self, lazy: set[int], never: set[int], waiting: dict[int, tuple[float, float]]):
        self.lazy, self.never = lazy, never
        self.waiting = waiting  # drafter → (catch-up seconds per token, best seconds per emitted token)
        self.rent = dict.fromkeys(waiting, 0.0)
        self.joined: dict[int, int] = {}  # drafter → committed length when it joined
        self.unscored: set[int] = set()  # joined, not evaluated yet: the next evaluation takes them, weight or not
        self.out = never | set(waiting)

    @classmethod
    def plan(cls, policy, costs: CostModel, n_drafters: int, prompt_len: int, max_length: int, eval_budget: float,
             automatic: bool) -> Joining:
        used = policy.drafters_used()
        lazy = set() if used is None else set(range(n_drafters)) - set(used)
        step = costs.verify_seconds(1)
        if step is None or not automatic or not policy.full_information or \
                getattr(policy, "objective", None) != "throughput":
            return cls(lazy, set(), {})
        budget = eval_budget * (max_length - prompt_len) * step
        lens = getattr(policy, "draft_lens", ()) or (1,)
        seconds = costs.arm_seconds([(i, k) for i in range(n_drafters) for k in lens])
        never, waiting = set(), {}
        for i in sorted(set(range(n_drafters)) - lazy):
            rate = costs.prefill[i]
            if rate is None:  # never measured (a first call, a CUDA drafter): in at once, and measured
                continue
            best = min(float(seconds[i * len(lens) + j]) / (k + 1) for j, k in enumerate(lens))
            if rate * prompt_len > budget:
                never.add(i)
            elif rate * prompt_len > max(0.0, step - best):  # (else one round could repay it: in at once)
                waiting[i] = (rate, best)
        return cls(lazy | never | set(waiting), never, waiting)

    def take_unscored(self) -> set[int]:
        """The drafters that joined since the last evaluation (which must score them, weight or not); clears them."""
        joined, self.unscored = self.unscored, set()
        return joined

    def after_round(self, costs: CostModel, verified: int, emitted: int, length: int, ready=None,
                    chosen: int | None = None, drafted: int = 0) -> list[int]:
        """Charge the round's rent (a verification of ``verified`` tokens that emitted ``emitted``, after drafter
        ``chosen`` drafted ``drafted`` tokens, at the cost model's prices) and bring in the drafters whose rent reached
        their catch-up on ``length`` committed tokens; returns those. A drafter joining
        inside an evaluation batch owes the batch's positions (the caller's :meth:`DrafterPool.owe`): its catch-up
        forward computes them, so the batch's evaluation has every drafter's rows. ``ready(i)``: whether drafter i
        can join now (False when it can no longer compute the batch's rows: it waits for a round without a batch)."""
        if not self.waiting:
            return []
        round_seconds = costs.played_seconds(verified, chosen, drafted)
        joined = []
        for i, (rate, best) in list(self.waiting.items()):
            self.rent[i] += max(0.0, round_seconds - emitted * best)
            if self.rent[i] >= rate * length and (ready is None or ready(i)):
                del self.waiting[i]
                self.joined[i] = length
                self.unscored.add(i)
                joined.append(i)
        if joined:
            self.out = self.never | set(self.waiting)
        return joined
