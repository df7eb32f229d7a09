"""Per-round records, phase timing and the generation summary (MAT, tokens/s, drafter share, …)."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

PHASES = ("select", "draft", "verify", "evaluate", "update")


class PhaseTimer:
    """Marks phase boundaries without host syncs: CUDA events on a GPU (read once at the end), ``perf_counter`` on
    CPU. ``mode="sync"`` synchronises at every mark (exact wall time per phase, one extra sync each); ``"off"`` records
    nothing. With ``nvtx=True`` each phase is also an NVTX range, for Nsight.
    """

    def __init__(self, device: torch.device, mode: str = "auto", nvtx: bool = False):
        self.cuda = device.type == "cuda"
        self.mode = mode
        self.nvtx = nvtx and self.cuda
        self._open = False

    def mark(self, phase: str | None = None):
        """A time point; ``phase`` names the range that starts here (for NVTX)."""
        if self.nvtx:
            if self._open:
                torch.cuda.nvtx.range_pop()
            self._open = phase is not None
            if phase is not None:
                torch.cuda.nvtx.range_push(phase)
        if self.mode == "off":
            return None
        if self.cuda and self.mode == "auto":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def ready(self, marks) -> bool:
        """Whether ``durations(marks)`` can be read without waiting (CUDA events that have completed)."""
        if self.mode == "off" or not marks or isinstance(marks[-1], float):
            return True
        return bool(marks[-1].query())

    def durations(self, marks) -> list[float]:
        """Seconds between consecutive marks (call after the work is done)."""
        if self.mode == "off" or not marks:
            return [0.0] * max(len(marks) - 1, 0)
        if isinstance(marks[0], float):
            return [b - a for a, b in zip(marks, marks[1:])]
        marks[-1].synchronize()
        return [a.elapsed_time(b) / 1e3 for a, b in zip(marks, marks[1:])]


@dataclass
class RoundRecord:
    """One draft–verify round: who drafted, what happened, γ of every drafter (when evaluated), phase seconds."""

    chosen: int
    drafted: int
    accepted: int
    emitted: int
    gamma: list | None = None  # [N][m] or None
    times: dict = field(default_factory=dict)  # phase -> seconds


@dataclass
class GenerationStats:
    """Summary of one ``generate`` call.

    ``mean_accepted`` (MAT) is tokens emitted per target verification call: accepted draft tokens + the correction
    or bonus token, averaged over rounds (1.0 = no speed-up from drafting).
    """

    policy: str
    drafter_names: list
    rounds: int = 0
    new_tokens: int = 0
    accepted_tokens: int = 0
    drafted_tokens: int = 0
    wall_s: float = 0.0
    prefill_s: float = 0.0
    host_syncs: int = 0
    drafter_counts: list = field(default_factory=list)  # rounds each drafter drafted (was chosen to)
    no_draft_rounds: int = 0  # rounds the throughput learner chose its "no draft" arm (a plain target step)
    records: list = field(default_factory=list)
    final_weights: list | None = None
    oracle_choice: int | None = None
    costs: dict | None = None  # the cost model's estimates at the end (ms), see hedgespec_fast.cost
    evaluations: int = 0  # rounds whose full-information evaluation ran
    prompt_positions: int = 0  # prompt positions the learner saw before round one (the prompt warm start)
    left_out: list = field(default_factory=list)  # drafters never brought in (hedgespec_fast.joining)
    joined: dict = field(default_factory=dict)  # drafters brought in during the generation → new tokens by then

    @property
    def mean_accepted(self) -> float:
        return self.new_tokens / self.rounds if self.rounds else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def drafter_share(self) -> list:
        total = sum(self.drafter_counts)
        return [c / total if total else 0.0 for c in self.drafter_counts]

    @property
    def phase_seconds(self) -> dict:
        totals = {p: 0.0 for p in PHASES}
        for r in self.records:
            for p, s in r.times.items():
                totals[p] += s
        return totals

    def summary(self) -> dict:
        """The headline numbers (JSON-ready)."""
        return {
            "policy": self.policy,
            "mean_accepted": self.mean_accepted,
            "acceptance_rate": self.acceptance_rate,
            "tokens_per_s": self.tokens_per_s,
            "rounds": self.rounds,
            "new_tokens": self.new_tokens,
            "wall_s": self.wall_s,
            "host_syncs": self.host_syncs,
            "drafter_names": list(self.drafter_names),
            "drafter_counts": list(self.drafter_counts),
            "no_draft_rounds": self.no_draft_rounds,
            "phase_seconds": self.phase_seconds,
            "final_weights": self.final_weights,
            "oracle_choice": self.oracle_choice,
            "costs": self.costs,
            "evaluations": self.evaluations,
            "prompt_positions": self.prompt_positions,
        }

    def as_dict(self) -> dict:
        """Everything, per-round records included (JSON-ready)."""
        out = self.summary()
        out["records"] = [asdict(r) for r in self.records]
        return out

    def __repr__(self) -> str:
        return (f"GenerationStats(policy={self.policy!r}, mean_accepted={self.mean_accepted:.3f}, "
                f"rounds={self.rounds}, "
                f"new_tokens={self.new_tokens}, tokens_per_s={self.tokens_per_s:.1f}, "
                f"drafter_counts={self.drafter_counts}, no_draft_rounds={self.no_draft_rounds})")
