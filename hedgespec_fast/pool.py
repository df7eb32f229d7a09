"""DrafterPool: propose with the chosen drafter; commit verified tokens to every drafter and collect their beliefs."""
from __future__ import annotations

from typing import Sequence

import torch

from .drafters import as_drafter
from .drafters.base import Beliefs, DraftContext, Proposal


class DrafterPool:
    """The drafters of one generation, in the order the policy indexes them.

    Parameters
    ----------
    drafters : models (wrapped as :class:`HFDrafter`) and/or drafter objects; at least one.
    """

    def __init__(self, drafters: Sequence):
        if drafters is None or len(drafters) == 0:
            raise ValueError("the drafter pool is empty: pass at least one drafter (a model or hs.NGramDrafter())")
        self.drafters = [as_drafter(d) for d in drafters]
        seen: dict[str, int] = {}
        self.names = []
        for d in self.drafters:  # unique labels for stats, in pool order
            count = seen.get(d.name, 0)
            seen[d.name] = count + 1
            self.names.append(d.name if count == 0 else f"{d.name}#{count}")

    def __len__(self) -> int:
        return len(self.drafters)

    def check_compatible(self, target_vocab: int, device: torch.device, dtype: torch.dtype, needed_len: int) -> None:
        for d in self.drafters:
            d.check_compatible(target_vocab, device, dtype, needed_len)

    def prefill(self, ids: torch.Tensor) -> None:
        for d in self.drafters:
            d.prefill(ids)

    def propose(self, index: int, k: int, ctx: DraftContext) -> Proposal:
        return self.drafters[index].propose(k, ctx)

    def commit(self, emitted: torch.Tensor, emitted_list: list[int], accepted: Sequence[int],
               evaluate: bool | None) -> list[Beliefs | None]:
        """Append the emitted tokens to every drafter; with ``evaluate``, return each one's beliefs on every position
        since the last evaluation (False defers them to a later evaluation, None drops them).

        ``accepted[i]``: how many of drafter i's own draft tokens the round accepted (0 for drafters that did not draft;
        with multi-draft several drafters drafted).
        """
        return [d.commit(emitted, emitted_list, accepted[i], evaluate) for i, d in enumerate(self.drafters)]
