"""SpecConfig: every knob of a speculative generation that is not a model or a sampling parameter."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .trees import parse_tree

LOSSES = ("expected_length", "acceptance")
OBJECTIVES = ("throughput", "mat")
DEFAULT_OBJECTIVE = "throughput"
DEFAULT_DRAFT_LEN = {"mat": 5, "throughput": 8}  # K, or K_max when the learner chooses K
# Prompt positions a learner scores before round one, by its objective. The prompt ranks drafters well (MAT: the
# zoo's short-horizon oracle share 87 % → 95 %), but on chat prompts its γ is the user's text, lower than on the
# answer: the throughput learner then rates drafting below plain steps and stops drafting (Qwen, 2026-12-01:
# 1.22 vs 1.46 tok/s on writing with / without it), so there it is off unless asked for.
DEFAULT_PROMPT_WARMUP = {"mat": 32, "throughput": 0}
LEVELS = ("token", "chunk")
CHOICES = ("sample", "argmax")
STOPPING = ("static", "tapout")


@dataclass
class SpecConfig:
    """How to speculate.

    Parameters
    ----------
    draft_len : K, tokens drafted per round (the most; stopping rules may draft fewer). Under the throughput
        objective the upper bound K_max of the lengths the learner chooses from. Default: 5 (``"mat"``), 8
        (``"throughput"``).
    objective : what the full-information learners maximise. ``"throughput"`` (default): expected tokens per second
        of every (drafter, draft length) arm, from γ and the measured costs of drafting, verifying, evaluating and the
        round's overhead (:mod:`hedgespec_fast.cost`); ``"mat"``: HedgeSpec's mean accepted tokens per target call,
        at the fixed ``draft_len``. Bandit and fixed policies are not affected.
    policy : a name from ``hs.POLICIES`` (``"hedgespec"``, ``"fixed:1"``, ``"ucbspec+tapout"``, …) or a policy object
        (e.g. a ``HedgeSpecSelector`` reused across calls for a warm start).
    tree : ``None`` (a chain of ``draft_len`` tokens), a draft-tree spec string (``"depth=5,topk=4,total=32"``,
        ``"static:depth=3,topk=2"``, ``"paths:[[0],[1],[0,0]]"``, ``"chains:k=4,depth=5"``, ``"drafters:k=3,depth=5"``,
        ``"shared:depth=5,topk=4,total=32"``) or a shape object from :mod:`hedgespec_fast.trees`; see that module.
        A tree without ``depth=`` takes ``draft_len`` as its depth.
    loss : full-information loss, ``"expected_length"`` (HedgeSpec's default, delayed by up to K positions) or
        ``"acceptance"`` (1 − γ, no delay).
    level : ``"token"`` (one learner round per verified position, the paper's default) or ``"chunk"`` (one per
        draft–verify cycle, with the chunk's mean loss).
    choice : ``"sample"`` from the weights (the no-regret guarantee) or ``"argmax"``.
    eval_every : evaluate all drafters every this many rounds (1 = always), or ``"auto"`` (the default under the
        throughput objective, unless ``record_gamma``): in batches of a few rounds, skipping as many rounds after each
        as keeps the measured evaluation time within ``eval_budget`` of the round time, scaled by the learner's
        weight on the arms evaluation informs (down to a quarter; the first batch always runs; free drafters such as
        n-gram lookup are evaluated every round; see ``feedback.EvaluationSchedule``); under the throughput
        objective an evaluation scores only the drafters whose arms carry weight, and one other in turn
        (``ExpertPolicy.evaluation_targets``), while a chain round scores the arm it played (greedy: its drafter's γ at
        every position of the round, read off the verification). A learner made for one call
        skips the final round's evaluation (nobody would learn from it; ``record_gamma`` keeps it). With
        an int, rounds in between feed no learner round yet (their positions are evaluated later, nothing is lost)
        and other drafters catch up lazily (HedgeSpec App. B.5's system-efficient variant, **[reconstructed]**).
    eval_budget : with ``eval_every="auto"``, the share of round time that evaluation may take. Under the throughput
        objective it also decides which model drafters a generation brings in: one whose catch-up on the prompt
        (its measured ratio to the target's prompt forward × the target's on this prompt) exceeds this share of the
        generation at plain-step speed is left out (``stats.left_out``); the others join by the break-even rule of
        :class:`~.joining.Joining`.
    draft_stop : a confidence stop for model drafters' chains (HF assisted generation's
        ``assistant_confidence_threshold`` is 0.4): a chain ends before the first position where the drafter's top
        probability is below this, so a draft is cut where it turns to guessing and no drafting step is spent past
        it. Feedback counts the stop (γ is 0 past it, see ``feedback.Evaluator``), so the learner scores the chains
        it really gets. Chains only (trees ignore it); one host read per drafted token on CUDA. None: off.
    join : ``"auto"`` (that rule, where it applies) or ``"eager"`` (every drafter the policy may choose takes the
        prompt in before round one and stays in: a server that wants every drafter scored, an ablation).
    prompt_warmup : the prompt warm start: full-information learners first see γ of every drafter at the prompt's
        last this many positions (the target and the drafters compute those logits during prefill anyway; only that
        many rows of their LM heads are added). 0 turns it off; None (default): 32 for a learner with the MAT
        objective, 0 under the throughput objective (``DEFAULT_PROMPT_WARMUP``: why). See ``feedback.PromptScores``.
    skip_eval_above : skip the evaluation while the learner's top weight is above this (1.0 = never skip).
    seed : seeds the sampling generator and, through a derived seed (a different stream: the policy's draws must not
        be the ones that draft and accept tokens), the policy's own randomness; ``None`` uses torch's global RNG.
    backend : kernel backend for γ and the learner update (``"auto" | "triton" | "torch"``).
    record_gamma : evaluate every drafter every round even when the policy does not learn from it (bandits, fixed),
        so the records hold γ for analysis (costs the evaluation forwards).
    timings : ``"auto"`` (CUDA events on GPU, ``perf_counter`` on CPU), ``"sync"`` (synchronise at every phase
        boundary: exact per-phase wall time, extra host syncs) or ``"off"``.
    stack_drafters : run drafters of one architecture and shape as one stacked model (one forward evaluates them
        all, :mod:`hedgespec_fast.drafters.stacked`): ``"auto"`` (small models on CUDA), True or False. Chains only.
    cache_implementation : ``"static"`` for static KV caches (target and drafters; rollback in place, the layout
        CUDA graphs need), None / ``"dynamic"`` otherwise. ``generate(cache_implementation="static")`` sets it, as
        transformers' own option.
    cuda_graphs : with a static cache on a CUDA device, replay the target's verification forward as one CUDA graph
        per number of verified tokens (captured on first use, kept with the target's static cache across calls;
        a bucket whose capture fails runs eagerly, saying why). Ignored on CPU.
    """

    draft_len: int | None = None
    policy: Any = "hedgespec"
    tree: Any = None
    objective: str = DEFAULT_OBJECTIVE
    loss: str = "expected_length"
    level: str = "token"
    choice: str = "sample"
    eval_every: Any = None
    eval_budget: float = 0.1
    join: str = "auto"
    draft_stop: float | None = None
    prompt_warmup: int | None = None
    skip_eval_above: float = 1.0
    seed: int | None = None
    backend: str = "auto"
    record_gamma: bool = False
    timings: str = "auto"
    stack_drafters: Any = "auto"
    cache_implementation: str | None = None
    cuda_graphs: bool = True
    policy_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        for name, allowed in (("objective", OBJECTIVES), ("loss", LOSSES), ("level", LEVELS), ("choice", CHOICES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.draft_len is None:
            self.draft_len = DEFAULT_DRAFT_LEN[self.objective]
        if isinstance(self.draft_len, bool) or not isinstance(self.draft_len, int) or self.draft_len < 0:
            raise ValueError(f"draft_len must be an int >= 0, got {self.draft_len!r}")
        if self.eval_every is None:  # analysis runs (record_gamma) want γ every round
            self.eval_every = "auto" if self.objective == "throughput" and not self.record_gamma else 1
        if self.eval_every != "auto" and (isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int)
                                          or self.eval_every < 1):
            raise ValueError(f"eval_every must be an int >= 1 or 'auto', got {self.eval_every!r}")
        if self.cache_implementation not in (None, "dynamic", "static"):
            raise ValueError("cache_implementation must be 'static', 'dynamic' or None, "
                             f"got {self.cache_implementation!r}")
        if self.prompt_warmup is not None and (isinstance(self.prompt_warmup, bool) or
                                               not isinstance(self.prompt_warmup, int) or self.prompt_warmup < 0):
            raise ValueError(f"prompt_warmup must be an int >= 0 or None, got {self.prompt_warmup!r}")
        if self.draft_stop is not None and (isinstance(self.draft_stop, bool) or
                                            not isinstance(self.draft_stop, (int, float)) or
                                            not 0.0 <= self.draft_stop < 1.0):
            raise ValueError(f"draft_stop must be a probability in [0, 1) or None, got {self.draft_stop!r}")
        if self.join not in ("auto", "eager"):
            raise ValueError(f"join must be 'auto' or 'eager', got {self.join!r}")
        if not 0.0 < self.eval_budget <= 1.0:
            raise ValueError(f"eval_budget must be in (0, 1], got {self.eval_budget!r}")
        parse_tree(self.tree)  # a bad tree spec fails here, with the reason
        if self.timings not in ("auto", "sync", "off"):
            raise ValueError(f"timings must be 'auto', 'sync' or 'off', got {self.timings!r}")
        if self.timings == "off" and (self.objective == "throughput" or self.eval_every == "auto"):
            raise ValueError("timings='off' leaves the throughput objective and eval_every='auto' without measured "
                             "costs: use objective='mat' with an integer eval_every, or timings='auto'")

    @classmethod
    def from_kwargs(cls, base: "SpecConfig | None" = None, **kwargs) -> "SpecConfig":
        """A config from ``base`` (or the defaults) with the given fields replaced; unknown names are an error."""
        names = {f.name for f in fields(cls)}
        unknown = set(kwargs) - names
        if unknown:
            raise TypeError(f"unknown speculative option(s) {sorted(unknown)}; known: {sorted(names)}")
        if base is not None and "objective" in kwargs:
            # draft_len / eval_every that were filled in from the old objective's defaults follow the new one
            auto = base.objective == "throughput" and not base.record_gamma
            defaults = (("draft_len", DEFAULT_DRAFT_LEN[base.objective]), ("eval_every", "auto" if auto else 1))
            for name, default in defaults:
                if name not in kwargs and getattr(base, name) == default:
                    kwargs[name] = None
        return replace(base, **kwargs) if base is not None else cls(**kwargs)


def split_policy_options(policy) -> tuple[Any, dict]:
    """``"hedgespec@objective=mat,draft_len=16"`` → ``("hedgespec", {"objective": "mat", "draft_len": 16})``.

    Values are read as JSON where they parse (numbers, booleans), as strings otherwise. Non-strings pass through.
    """
    if not isinstance(policy, str) or "@" not in policy:
        return policy, {}
    name, _, options = policy.partition("@")
    overrides = {}
    for item in filter(None, options.split(",")):
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"bad policy option {item!r} in {policy!r}: write name@key=value,key=value")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw.strip()
    return name, overrides
