"""The policy interface the decoder talks to, and the record of a round it hands back."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass
class RoundOutcome:
    """What one draft–verify round showed.

    Attributes
    ----------
    chosen : drafter that drafted.
    drafted, accepted, emitted : draft length, accepted draft tokens, tokens committed (accepted + correction/bonus,
        fewer when generation stopped inside the round).
    draft_len : the configured K.
    gamma : ``[N, m]`` fp32 γ of every drafter at the ``m`` emitted positions (full information), or None when the
        round was not evaluated.
    awake : ``[N, m]`` bool beside ``gamma``: where each drafter had a proposal (None: everywhere).
    skipped : the round's positions will never be evaluated (the evaluation schedule skipped them): a gap in the
        positions the learner sees.
    block_reward : MetaSD's block-divergence reward of the chosen drafter (mean 1 − TV over all drafted positions), or
        None when the policy did not ask for it.
    start : sequence index of the round's first emitted position, for a chain round (None otherwise): where the
        drafted chain's own outcome is an observation of the played arm (see ``ExpertPolicy``).
    gamma_start : sequence index of ``gamma``'s first column (earlier than ``start`` when deferred rounds are
        evaluated with this one).
    asked : the draft length the policy asked for (None: ``drafted``). A chain that ended earlier by a rule of its
        prefix alone (the lookup ran out of matches, the drafter's confidence fell) is what every shorter ask at
        least ``drafted`` long would have drafted too.
    """

    chosen: int
    drafted: int
    accepted: int
    emitted: int
    draft_len: int
    gamma: torch.Tensor | None = None
    block_reward: float | None = None
    awake: torch.Tensor | None = None
    skipped: bool = False
    start: int | None = None
    gamma_start: int | None = None
    asked: int | None = None


class Policy(nn.Module):
    """Chooses a drafter each round and learns from the outcome. State lives in buffers (``state_dict`` / ``.to``).

    Class attributes tell the decoder what to compute for it: ``full_information`` (γ of every drafter each round),
    ``partial_information`` (γ of only the free drafters is also welcome), ``needs_block_reward`` (MetaSD's reward).
    ``stop_rule()`` may return a per-token stopping rule for drafting.
    """

    full_information = False
    needs_block_reward = False
    partial_information = False  # learns from rounds where only some drafters were evaluated (γ rows NaN = unknown)

    def __init__(self, n_drafters: int):
        super().__init__()
        if n_drafters < 1:
            raise ValueError("a policy needs at least one drafter")
        self.n_drafters = n_drafters
        self.generator = torch.Generator()
        self.generator.manual_seed(0)

    def begin(self, n_drafters: int, draft_len: int, seed: int | None = None, costs=None, sleepers=()) -> None:
        """Start a new prompt. Learned state is kept (warm start); per-prompt state is reset.

        ``draft_len`` is K (the upper bound K_max for policies that choose the length); ``costs`` is the generation's
        :class:`~hedgespec_fast.cost.CostModel`, for policies that weigh arms by their measured cost; ``sleepers``
        the drafters that can have no proposal (n-gram lookup), for policies that treat them as sleeping experts.
        """
        if n_drafters != self.n_drafters:
            raise ValueError(f"this policy was built for {self.n_drafters} drafters but the pool has {n_drafters}")
        self.draft_len = draft_len
        if seed is not None:
            self.generator.manual_seed(seed)

    def uniform(self) -> torch.Tensor:
        """A U[0, 1) draw from the policy's own generator (CPU)."""
        return torch.rand(1, generator=self.generator)

    def choose(self, awake=None) -> int:
        """The drafter for the next round. ``awake`` (list of bool per drafter, or None) says which drafters have a
        proposal now; policies that treat drafters as sleeping experts choose among those."""
        raise NotImplementedError

    def update(self, outcome: RoundOutcome) -> None:
        raise NotImplementedError

    def draft_length(self) -> int:
        """K for the round just chosen (policies over (drafter, K) arms choose it; the others draft ``draft_len``)."""
        return self.draft_len

    def observe_prompt(self, gamma: torch.Tensor, awake: torch.Tensor | None = None) -> None:
        """γ ``[N, P]`` of every drafter at the prompt's last P positions (the prompt warm start), before round one.
        Policies that learn only from what they play ignore it."""
        return None

    def stop_rule(self) -> Callable | None:
        return None

    def evaluation_need(self, free) -> float:
        """The share of the policy's weight on arms whose drafters need evaluation (``free[i]``: drafter i's beliefs
        cost nothing), read by the evaluation schedule; 1.0 when the policy cannot tell."""
        return 1.0

    def evaluation_targets(self, free) -> list[bool] | None:
        """Which drafters an evaluation due now should score (``True``; the others are left unscored there, their γ
        unknown), or None for all of them. Only policies that learn from partial information may leave some out."""
        return None

    def drafters_used(self) -> list[int] | None:
        """The drafters this policy can ever choose (None: any). The others are never prefilled: with nobody asking
        for their beliefs they compute nothing in the generation."""
        return None

    def weights(self) -> torch.Tensor | None:
        """The current distribution over drafters, when the policy has one."""
        return None

    def pending_choice(self) -> torch.Tensor | None:
        """A device tensor to read back with the round's packed read (policies that choose from it), or None."""
        return None

    def receive_choice(self, value: int) -> None:
        return None

    @property
    def host_syncs_per_choice(self) -> int:
        """Device→host syncs a ``choose()`` costs (1 when the state lives on a GPU)."""
        buf = next(self.buffers(), None)
        return int(buf is not None and buf.device.type == "cuda")
