"""DrafterPool: propose with the chosen drafter; commit verified tokens to every drafter and collect their beliefs."""
from __future__ import annotations

import logging
import time
from typing import Sequence

import torch

from .drafters import as_drafter
from .drafters.base import Beliefs, DraftContext, Proposal
from .drafters.hf import HFDrafter
from .drafters.ngram import NGramDrafter
from .drafters.stacked import AUTO_MAX_PARAMS, StackedDrafters, StackedMember, StackingError, stack_signature

logger = logging.getLogger(__name__)


class DrafterPool:
    """The drafters of one generation, in the order the policy indexes them.

    Parameters
    ----------
    drafters : models (wrapped as :class:`HFDrafter`) and/or drafter objects; at least one.
    stack : run models of one architecture and shape as one stacked model (:mod:`~.drafters.stacked`): ``"auto"``
        (on CUDA, those of at most ``AUTO_MAX_PARAMS`` parameters, two or more alike), True (any two or more alike)
        or False. Not on CPU by default: there the small GEMMs of a stack cost as much as the members' forwards
        (measured in bench/RESULTS.md), and drafting with a member would run every row.
    """

    def __init__(self, drafters: Sequence, stack="auto"):
        if drafters is None or len(drafters) == 0:
            raise ValueError("the drafter pool is empty: pass at least one drafter (a model or hs.NGramDrafter())")
        items = list(drafters)
        self.drafters: list = [None] * len(items)
        self.units: list[tuple] = []  # (drafter state, the pool indices it serves)
        for indices in _stack_groups(items, stack):
            try:
                group = StackedDrafters([items[i] for i in indices])
            except StackingError as err:
                logger.info("not stacking drafters %s: %s", indices, err)
                continue
            self.units.append((group, indices))
            for member, i in zip(group.members, indices):
                self.drafters[i] = member
        for i, item in enumerate(items):
            if self.drafters[i] is None:
                self.drafters[i] = as_drafter(item)
                self.units.append((self.drafters[i], [i]))
        self.units.sort(key=lambda unit: unit[1][0])
        seen: dict[str, int] = {}
        self.names = []
        for d in self.drafters:  # unique labels for stats, in pool order
            count = seen.get(d.name, 0)
            seen[d.name] = count + 1
            self.names.append(d.name if count == 0 else f"{d.name}#{count}")

    @property
    def stacked(self) -> list[list[int]]:
        """The groups of pool indices that run as one stacked model."""
        return [indices for unit, indices in self.units if isinstance(unit, StackedDrafters)]

    def __len__(self) -> int:
        return len(self.drafters)

    def check_compatible(self, target_vocab: int, device: torch.device, dtype: torch.dtype, needed_len: int,
                         real_vocab: int | None = None) -> None:
        """Every drafter can serve this target (vocabulary up to padding, device, context); ``real_vocab``: the
        tokenizer's size when known."""
        for d in self.drafters:
            try:
                d.check_compatible(target_vocab, device, dtype, needed_len, real_vocab)
            except TypeError:  # a user drafter written against the four-argument protocol
                d.check_compatible(target_vocab, device, dtype, needed_len)

    def prefill(self, ids: torch.Tensor, calibrate: Sequence[int] = (), beliefs: int = 0,
                on_beliefs=None, cache_len: int | None = None, lazy: Sequence[int] = (),
                on_prefill=None) -> dict[int, float]:
        """Feed the prompt to every drafter; the drafters in ``calibrate`` also time one drafting step (their prompt's
        last token fed alone). Returns those seconds by pool index (model drafters only).

        Model drafters in ``lazy`` (a stack: when all its members are) compute nothing now: they take the prompt in
        with the first forward that needs them (:meth:`HFDrafter.prefill`), possibly never. ``on_prefill(index,
        tokens, seconds)`` gets the wall seconds of each model drafter's prompt forward, on CPU only (timing a CUDA
        forward would need a host sync).

        With ``beliefs = P``, ``on_beliefs(indices, [Beliefs, …])`` is called after each drafter (or stack) with its
        beliefs at the prompt's last P positions, so a caller can score them and let them go before the next drafter
        keeps its own: at most one drafter's ``[rows, P, V]`` logits are alive at a time. ``cache_len``: model
        drafters use static KV caches of that many positions.
        """
        steps: dict[int, float] = {}
        for unit, indices in self.units:
            if isinstance(unit, HFDrafter):
                if all(i in lazy for i in indices):
                    unit.prefill(ids, cache_len=cache_len, lazy=True)
                    if on_beliefs is not None and beliefs:
                        on_beliefs(indices, None)
                    continue
                start = time.perf_counter()
                seconds, rows = unit.prefill(ids, calibrate=any(i in calibrate for i in indices), beliefs=beliefs,
                                             cache_len=cache_len)
                if on_prefill is not None and unit.device.type == "cpu":
                    for i in indices:
                        on_prefill(i, int(ids.shape[-1]), time.perf_counter() - start)
                if seconds is not None:
                    steps.update({i: seconds for i in indices})
                found = None if rows is None else [Beliefs(logits=r) for r in rows]
            elif isinstance(unit, NGramDrafter):
                tokens = unit.prefill(ids, beliefs=beliefs)
                found = None if tokens is None else [Beliefs(tokens=tokens)]
            else:  # a user drafter: the protocol's prefill(ids), no prompt beliefs
                unit.prefill(ids)
                found = None
            if on_beliefs is not None and beliefs:
                on_beliefs(indices, found)
        return steps

    @property
    def key(self) -> tuple:
        """The drafters' identities (model objects; the class and name of other drafters), for caches of costs."""
        return tuple(id(d.model) if isinstance(d, HFDrafter) else
                     (id(d.group.model), d.row) if isinstance(d, StackedMember) else (type(d).__name__, d.name)
                     for d in self.drafters)

    def owe(self, index: int, positions: int) -> None:
        """Model drafter ``index`` (joining mid-batch) reports the batch's last ``positions`` positions at the next
        evaluation (:meth:`HFDrafter.owe`; a stack owes for all its members)."""
        for unit, indices in self.units:
            if index in indices:
                unit.owe(positions)

    def can_owe(self, index: int, positions: int) -> bool:
        """Whether model drafter ``index`` can still compute the batch's last ``positions`` rows (:meth:`owe`)."""
        return all(getattr(unit, "can_owe", lambda n: n <= 0)(positions) for unit, indices in self.units
                   if index in indices)

    def lag(self, index: int) -> int:
        """Committed tokens drafter ``index`` has not processed yet (0 for drafters that keep no such backlog)."""
        return int(getattr(self.drafters[index], "lag", 0))

    @property
    def sleepers(self) -> tuple[int, ...]:
        """Drafters that can have no proposal for the next position (n-gram lookup; see :meth:`awake`) and whose having
        one defines the learner's contexts (``context``: not a lookup with a 1-gram fallback, which nearly always has
        one; its arms are still asleep where it has none)."""
        return tuple(i for i, d in enumerate(self.drafters)
                     if getattr(d, "has_proposal", None) is not None and getattr(d, "context", True))

    def awake(self) -> list[bool] | None:
        """Which drafters have a proposal for the next position (None: all of them, as model drafters always do)."""
        states = [getattr(d, "has_proposal", None) for d in self.drafters]
        if all(s is None for s in states):
            return None
        return [True if s is None else bool(s()) for s in states]

    def propose(self, index: int, k: int, ctx: DraftContext) -> Proposal:
        return self.drafters[index].propose(k, ctx)

    @property
    def free(self) -> list[bool]:
        """Drafters whose beliefs cost nothing worth scheduling (n-gram lookup): evaluated every round."""
        return [bool(getattr(d, "free_beliefs", False)) for d in self.drafters]

    def commit(self, emitted: torch.Tensor, emitted_list: list[int], accepted: Sequence[int],
               evaluate) -> list[Beliefs | None]:
        """Append the emitted tokens to every drafter; with ``evaluate``, return each one's beliefs on every position
        since the last evaluation (False defers them to a later evaluation, None drops them). ``evaluate`` may also
        be a list with one of those per drafter.

        ``accepted[i]``: how many of drafter i's own draft tokens the round accepted (0 for drafters that did not draft;
        with multi-draft several drafters drafted).
        """
        wants = evaluate if isinstance(evaluate, list) else [evaluate] * len(self.drafters)
        beliefs: list[Beliefs | None] = [None] * len(self.drafters)
        for unit, indices in self.units:
            if isinstance(unit, StackedDrafters):  # at most one member drafted: its count is the group's
                want = True if any(wants[i] is True for i in indices) else wants[indices[0]]  # one forward for all
                rows = unit.commit_rows(emitted, max(accepted[i] for i in indices), want)
                for row, i in enumerate(indices):
                    beliefs[i] = None if rows is None else Beliefs(logits=rows[row])
            else:
                beliefs[indices[0]] = unit.commit(emitted, emitted_list, accepted[indices[0]], wants[indices[0]])
        return beliefs


def _stack_groups(items: list, stack) -> list[list[int]]:
    """Indices of the transformers models that can share one stacked forward, in groups of two or more."""
    if not stack:
        return []
    groups: dict = {}
    for i, item in enumerate(items):
        if not isinstance(item, torch.nn.Module) or not hasattr(item, "config"):
            continue  # drafter objects (HFDrafter, n-gram, user classes) are used as they are
        if stack == "auto":
            first = next(item.parameters(), None)
            if first is None or first.device.type != "cuda" or sum(p.numel() for p in item.parameters()) > \
                    AUTO_MAX_PARAMS:
                continue
        signature = stack_signature(item)
        if signature is not None:
            groups.setdefault(signature, []).append(i)
    return [indices for indices in groups.values() if len(indices) > 1]
