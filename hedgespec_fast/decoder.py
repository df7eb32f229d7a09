"""SpeculativeDecoder: the round select → draft → verify → commit → evaluate → update, batch size 1."""
from __future__ import annotations

import time
from functools import partial

import torch

from .cache import new_cache
from .config import DEFAULT_PROMPT_WARMUP, SpecConfig
from .cost import CostModel, shared_cost_model
from .drafters.base import DraftContext
from .feedback import EvaluationSchedule, Evaluator, PromptScores, chain_gamma, fill_chain_gamma
from .graphs import static_cache_for
from .joining import Joining
from .learners.base import Policy, RoundOutcome
from .logits import LogitsWarp
from .modeling import forward_logits
from .pool import DrafterPool
from .speculation import ChainSpeculation, make_speculation
from .stats import PHASES, GenerationStats, PhaseTimer, RoundRecord


MAX_DEFERRED_ROUNDS = 32
MAX_DEFERRED_POSITIONS = 128  # owed target rows: 128 × V × 8 bytes (warped + raw), 156 MB at V = 152k


def policy_seed(seed: int | None) -> int | None:
    """The policy's seed for a generation seeded with ``seed``: a different stream from the sampling generator's.
    With the same seed the policy's uniform draws would be the very numbers that draft and accept this round's
    tokens, so the drafter chosen would depend on the randomness that decides the output, and sampling would no
    longer follow the target (the χ² tests catch it)."""
    return None if seed is None else (seed * 0x9E3779B1 + 0x5EED) % (1 << 62)


class SpeculativeDecoder:
    """Runs one speculative generation. Data flows one way: the policy sees outcomes, never models.

    Parameters
    ----------
    target : the HF causal LM whose output must be reproduced.
    pool : the drafters.
    policy : chooses the drafter each round and learns.
    config : draft length or tree, evaluation schedule, timings, seed.
    warp : the logits processing shared by target and drafters.
    do_sample : speculative sampling (True) or greedy verification.
    max_length : total length (prompt + new tokens) not to exceed.
    eos_ids : tokens that end the generation (emitted, then stop).
    stopping : other stopping criteria, checked after every emitted token (``crit(ids, None) -> bool tensor``).
    streamer : gets each round's emitted tokens (``put``) and ``end()``.
    policy_outlives_call : the policy learns on after this generation (a selector reused across calls). When not,
        feedback that could only reach it after the last round is not computed: the final evaluation is skipped
        (``record_gamma`` still gets every position).
    """

    def __init__(self, target, pool: DrafterPool, policy: Policy, config: SpecConfig, warp: LogitsWarp,
                 do_sample: bool, max_length: int, eos_ids=(), stopping=(), streamer=None, nvtx: bool = False,
                 policy_outlives_call: bool = True):
        self.target, self.pool, self.policy, self.config, self.warp = target, pool, policy, config, warp
        self.flush_at_end = policy_outlives_call or config.record_gamma
        self.do_sample, self.max_length, self.streamer = do_sample, max_length, streamer
        self.eos_ids, self.stopping, self.nvtx = set(eos_ids), list(stopping), nvtx
        # The seam between the round and its shape: a chain, a draft tree, or several drafts merged into a tree.
        self.speculation = make_speculation(config.tree, config.draft_len, target, pool, warp, do_sample)
        # the confidence stop cuts chains (trees have their own budget rules)
        self.draft_stop = config.draft_stop if isinstance(self.speculation, ChainSpeculation) else None
        # greedy chains show their own drafter's γ at the round's positions: feedback without an evaluation
        self.chain_feedback = not do_sample and isinstance(self.speculation, ChainSpeculation)
        self.evaluator = Evaluator(warp, do_sample, config.backend, top_l=self.speculation.top_l,
                                   min_confidence=self.draft_stop)
        self.schedule = EvaluationSchedule(config.eval_every, config.eval_budget, max_rounds=MAX_DEFERRED_ROUNDS,
                                           max_positions=MAX_DEFERRED_POSITIONS)

    @torch.no_grad()
    def run(self, prompt: torch.Tensor) -> tuple[torch.Tensor, GenerationStats]:
        cfg, pool, policy, spec = self.config, self.pool, self.policy, self.speculation
        device, start_len, draft_len = prompt.device, prompt.shape[1], spec.depth
        generator = None
        if cfg.seed is not None and self.do_sample:
            generator = torch.Generator(device=device).manual_seed(cfg.seed)
        stats = GenerationStats(policy=str(cfg.policy if isinstance(cfg.policy, str) else type(policy).__name__),
                                drafter_names=list(pool.names), drafter_counts=[0] * len(pool))
        timer = PhaseTimer(device, cfg.timings, nvtx=self.nvtx)
        marks_per_round, unread = [], []  # unread: rounds whose timings the cost model has not seen yet
        t0 = time.perf_counter()

        # Scratch room past max_length for a full draft; ids[:, :length] is always the committed text.
        ids = torch.zeros((1, self.max_length + spec.width + 1), dtype=torch.long, device=device)  # valid ids
        ids[:, :start_len] = prompt
        # Static caches hold the longest sequence a round can feed (the committed text plus a full draft or tree).
        cache_len = self.max_length + spec.width + 1 if cfg.cache_implementation == "static" else None
        cache = self._target_cache(cache_len)  # the target's cache holds every committed token but the last
        costs = self._cost_model(policy)
        costs.draft_stop = self.draft_stop  # (its chain-length statistics are kept per stop)
        policy.begin(len(pool), draft_len, policy_seed(cfg.seed), costs=costs, sleepers=pool.sleepers)
        self.schedule.begin(getattr(getattr(policy, "stream", None), "window", draft_len))
        tracks = policy.full_information or cfg.record_gamma
        chain = isinstance(spec, ChainSpeculation)  # a chain's outcome is an observation of the arm it played
        warmup = cfg.prompt_warmup
        if warmup is None:  # by the learner's own objective (a selector object may differ from the config's)
            warmup = DEFAULT_PROMPT_WARMUP.get(getattr(policy, "objective", cfg.objective), 0)
        warm = min(warmup, start_len - 1) if policy.full_information else 0
        prompt_clock = time.perf_counter()
        if start_len > 1:  # with the warm start, the target's logits at the prompt's last `warm` positions are kept
            prompt_rows = forward_logits(self.target, ids[0, : start_len - 1], cache, keep=max(warm, 1))
        # drafters' catch-up prices are ratios to it (CPU clocks; on a GPU it is queued work, so no price from it)
        prompt_seconds = time.perf_counter() - prompt_clock if device.type == "cpu" else None
        costs.observe_target_prefill(start_len - 1, prompt_seconds)
        prompt = PromptScores(self.evaluator, prompt_rows, self.warp, ids, start_len, len(pool)) if warm else None
        joining = Joining.plan(policy, costs, len(pool), start_len, self.max_length, cfg.eval_budget,
                               automatic=cfg.join == "auto" and self.schedule.every == "auto" and not cfg.record_gamma)
        steps = pool.prefill(ids[:, :start_len], calibrate=[i for i in costs.uncalibrated() if i not in joining.lazy],
                             beliefs=warm, on_beliefs=prompt.score if prompt else None, cache_len=cache_len,
                             lazy=joining.lazy, on_prefill=costs.observe_prefill)
        for i, seconds in steps.items():
            costs.observe_draft(i, 1, seconds)
        if prompt is not None:  # full information on the user's own text, before the first draft
            policy.observe_prompt(*prompt.result())
            stats.prompt_positions = warm
        stats.prefill_s = time.perf_counter() - t0
        length, finished = start_len, start_len >= self.max_length
        free_drafters = pool.free  # (n-gram lookup: its chains have no confidence to stop on)
        owed, owed_start = [], start_len  # target rows of rounds whose γ is not computed yet, and where they start
        owed_chains = []  # (first position, drafter, γ) that those rounds' greedy chains showed (chain_gamma)

        while not finished:
            marks = [timer.mark("select")]
            chosen = policy.choose(self._awake(joining.out))
            stats.host_syncs += policy.host_syncs_per_choice
            wanted = policy.draft_length()  # 0: the throughput learner's "no draft" arm
            budget = min(wanted, self.max_length - length - 1)
            clean = pool.lag(chosen) <= 2  # a drafter far behind catches up first: not a drafting cost

            marks.append(timer.mark("draft"))
            stop = self._counting(policy.stop_rule(), stats)
            ctx = DraftContext(ids, length, self.warp, self.do_sample, generator, stop, self.draft_stop)
            k = spec.draft(chosen, budget, ctx, policy.weights)  # draft tokens (chain length or tree nodes)
            if self.draft_stop is not None and budget and not free_drafters[chosen]:  # a read per check
                stats.host_syncs += min(k + 1, budget)

            marks.append(timer.mark("verify"))
            verified = spec.verify(cache, generator)  # one target forward, the lossless rule, packed on device
            d = verified.depth
            block_reward = None
            if policy.needs_block_reward and budget:  # a drafter that proposes nothing aligned nothing
                block_reward = self._block_reward(verified, stats) if k else 0.0
            packed = verified.packed
            ids[0, length : length + d + 1] = packed[2 : 3 + d]
            arm = policy.pending_choice()  # the next round's choice rides along (device learners)
            host = (packed if arm is None else torch.cat([packed, arm.view(1)])).tolist()  # the round's one sync
            if arm is not None:
                policy.receive_choice(host.pop())
            stats.host_syncs += 1 + spec.host_syncs
            if host[1]:
                raise FloatingPointError(f"the target produced NaN logits at positions {length}..{length + d}")
            n_accepted = host[0]
            emitted_list, finished = self._stop_within(host[2 : 3 + n_accepted], ids, length, stats)
            m = len(emitted_list)
            n_accepted = min(n_accepted, m)
            emitted = packed[2 : 2 + m]
            accepted_by = spec.settle(cache, verified, host, n_accepted)  # crop / gather caches to the accepted path
            if self.streamer is not None:
                self.streamer.put(torch.tensor(emitted_list))
            shown = (length, chosen, chain_gamma(n_accepted, k, m)) \
                if self.chain_feedback and k and not free_drafters[chosen] else None

            marks.append(timer.mark("evaluate"))
            finished = finished or length + m >= self.max_length
            gamma = awake = None
            decision = self._evaluation(owed, m, finished, stats, costs) if tracks else "skip"
            gamma_start = length if decision == "skip" else owed_start
            if decision == "skip":  # no model drafter computes beliefs here; free ones (n-gram) still may
                scored = tracks and policy.partial_information and not owed  # (owed: the final round, skipped)
                free = [True if f else None for f in pool.free] if scored else None
                beliefs = pool.commit(emitted, emitted_list, accepted_by, free)
                if free and any(free):
                    gamma = self.evaluator.gamma(verified.target_warped[:m], verified.target_raw[:m], beliefs, ids,
                                                 length)
                    awake = self.evaluator.awake(beliefs)
                if scored and shown is not None:  # the chosen drafter's γ, from its own chain
                    if gamma is None:
                        gamma = torch.full((len(pool), m), float("nan"), device=device)
                    fill_chain_gamma(gamma, length, [shown])
                owed, owed_start, owed_chains = [], length + m, []
            else:  # full information, possibly deferred: γ covers every position since the last evaluation
                owed.append((verified.target_warped[:m], verified.target_raw[:m]))
                owed_chains += [shown] if shown is not None else []
                wants = decision == "evaluate"  # the drafters the learner has no use for now may be left out
                if wants and self.schedule.every == "auto" and not cfg.record_gamma:  # (an explicit eval_every: all)
                    targets, joined = policy.evaluation_targets(pool.free), joining.take_unscored()
                    wants = wants if targets is None else [True if t or i in joined else None
                                                           for i, t in enumerate(targets)]
                if joining.out:  # nobody asks for their beliefs: they stay out, computing nothing
                    wants = [None if i in joining.out else (wants[i] if isinstance(wants, list) else wants)
                             for i in range(len(pool))]
                beliefs = pool.commit(emitted, emitted_list, accepted_by, wants)
                if decision == "evaluate":
                    gamma = self.evaluator.gamma(torch.cat([w for w, _ in owed]), torch.cat([r for _, r in owed]),
                                                 beliefs, ids, owed_start)
                    gamma = fill_chain_gamma(gamma, owed_start, owed_chains)  # where a drafter was left out
                    awake = self.evaluator.awake(beliefs)
                    batch, owed, owed_start, owed_chains = len(owed), [], length + m, []
                    stats.evaluations += 1
                    if self.draft_stop is not None:
                        self._observe_confident(costs, stats)

            marks.append(timer.mark("update"))
            policy.update(RoundOutcome(chosen, k, n_accepted, m, draft_len, gamma, block_reward, awake,
                                       skipped=tracks and gamma is None and decision == "skip",
                                       start=length if chain else None, gamma_start=gamma_start, asked=budget))
            if tracks and decision == "evaluate":  # the next evaluation, planned from what this one taught
                self.schedule.evaluated(batch, costs, policy.evaluation_need(pool.free))
            marks.append(timer.mark(None))

            marks_per_round.append(marks)
            unread.append((marks, chosen, k, d + 1, tracks and decision == "evaluate", clean, m))
            self._read_costs(timer, unread, costs)
            stats.records.append(RoundRecord(chosen, k, n_accepted, m, gamma))
            stats.rounds += 1
            if wanted == 0:  # nobody drafted, whatever the label says
                stats.no_draft_rounds += 1
            else:
                stats.drafter_counts[chosen] += 1
            stats.drafted_tokens += k
            stats.accepted_tokens += n_accepted
            length += m
            in_batch = length - owed_start if owed else 0  # a join inside a batch owes the batch's rows
            # (a tree's drafting is not priced per node: its rounds charge verification and overhead only)
            for i in joining.after_round(costs, d + 1, m, length, partial(pool.can_owe, positions=in_batch), chosen,
                                         k if chain else 0):
                pool.owe(i, in_batch)
                self.schedule.resume()  # its price is worth paying now: scored in the next batch, not rounds later

        stats.new_tokens = length - start_len
        stats.left_out = [pool.names[i] for i in sorted(joining.out)]
        stats.joined = {pool.names[i]: at - start_len for i, at in joining.joined.items()}
        stats.wall_s = time.perf_counter() - t0 if device.type != "cuda" else self._cuda_wall(t0)
        self._finish_records(stats, timer, marks_per_round)
        stats.costs = costs.summary()
        weights = policy.weights()
        stats.final_weights = weights.tolist() if weights is not None else None
        if self.streamer is not None:
            self.streamer.end()
        return ids[:, :length].clone(), stats

    # -- helpers -------------------------------------------------------------------------------------------------------
    def _stop_within(self, emitted: list[int], ids: torch.Tensor, length: int, stats) -> tuple[list[int], bool]:
        """Cut the round's tokens after the first one that ends the generation (EOS or a stopping criterion)."""
        for j, token in enumerate(emitted):
            if token in self.eos_ids:
                return emitted[: j + 1], True
            if self.stopping:
                prefix = ids[:, : length + j + 1]
                stats.host_syncs += 1
                if any(bool(crit(prefix, None).any()) for crit in self.stopping):
                    return emitted[: j + 1], True
        return emitted, False

    def _awake(self, left_out: set[int]) -> list[bool] | None:
        """Which drafters can be chosen now: those with a proposal (:meth:`DrafterPool.awake`) and not left out."""
        awake = self.pool.awake()
        if not left_out:
            return awake
        return [(awake is None or awake[i]) and i not in left_out for i in range(len(self.pool))]

    def _evaluation(self, owed: list, m: int, finished: bool, stats, costs: CostModel) -> str:
        """``"evaluate" | "defer" | "skip"`` for this round's positions (:class:`EvaluationSchedule`); the last round
        flushes what is owed (or, for a learner that ends with this call, skips it: nobody would learn from it), and
        while the learner is confident (``skip_eval_above``) evaluation waits until the schedule forces it."""
        if finished and not self.flush_at_end:
            return "skip"
        decision = self.schedule.decide(len(owed) + 1, sum(w.shape[0] for w, _ in owed) + m, costs)
        if finished and decision == "defer":
            return "evaluate"
        if decision == "evaluate" and not finished and self.config.skip_eval_above < 1.0 and \
                len(owed) + 1 < self.schedule.max_rounds:
            weights = self.policy.weights()
            if weights is not None:
                stats.host_syncs += int(weights.device.type == "cuda")
                if float(weights.max()) > self.config.skip_eval_above:
                    return "defer"
        return decision

    def _target_cache(self, cache_len: int | None):
        """A fresh dynamic cache; or the target's static cache for this length, reused (rewound) across calls together
        with its CUDA graphs (``cuda_graphs``), so capture happens once per bucket, not once per generation."""
        if cache_len is None:
            return new_cache()
        cache, self.speculation.graphed = static_cache_for(self.target, cache_len, self.config.cuda_graphs)
        return cache

    def _cost_model(self, policy) -> CostModel:
        """The policy's cost model when it carries one over (a selector reused across calls), else the one shared by
        every call with this target and pool."""
        model = getattr(policy, "cost_model", None)
        if isinstance(model, CostModel) and model.n_drafters == policy.n_drafters:
            return model
        return shared_cost_model(self.target, self.pool.key, len(self.pool))

    def _observe_confident(self, costs: CostModel, stats) -> None:
        """Hand the cost model the evaluated drafters' confidence at the positions (how far a stopped chain gets)."""
        if self.evaluator.confident is None:
            return
        rows, confident = self.evaluator.confident
        self.evaluator.confident = None
        stats.host_syncs += int(confident.device.type == "cuda")
        for i, row in zip(rows, confident.tolist()):
            costs.observe_confident(i, row)

    @staticmethod
    def _read_costs(timer: PhaseTimer, unread: list, costs: CostModel) -> None:
        """Feed the cost model every finished round whose timings can be read without waiting (CPU clocks at once,
        CUDA events once they completed: never a host sync)."""
        while unread and timer.ready(unread[0][0]):
            marks, chosen, drafted, verified, evaluated, clean, emitted = unread.pop(0)
            times = dict(zip(PHASES, timer.durations(marks)))
            costs.observe_round(chosen, drafted, verified, times, evaluated, clean, emitted)

    def _block_reward(self, verified, stats) -> float:
        """MetaSD's block divergence: mean γ of the chosen draft over every drafted position (same draft prefix)."""
        stats.host_syncs += 1
        return float(self.speculation.block_gamma(self.evaluator, verified).mean())

    @staticmethod
    def _counting(rule, stats):
        if rule is None:
            return None

        def stop(logits):
            stats.host_syncs += 1
            return rule(logits)

        return stop

    @staticmethod
    def _cuda_wall(t0: float) -> float:
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    @staticmethod
    def _finish_records(stats, timer, marks_per_round) -> None:
        for record, marks in zip(stats.records, marks_per_round):
            record.times = dict(zip(PHASES, timer.durations(marks)))
            if record.gamma is not None:
                record.gamma = record.gamma.tolist()
