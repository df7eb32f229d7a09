"""NGramDrafter: prompt lookup. Proposes the token that followed the latest earlier occurrence of the current suffix."""
from __future__ import annotations

from typing import Sequence

import torch

from .base import Beliefs, DraftContext, Proposal


class NGramDrafter:
    """Deterministic drafter over the sequence itself (prompt + generated text); no model, no vocabulary.

    An index maps each n-gram (for every n in ``ngram_sizes``) to the position right after its latest occurrence, so
    a lookup is O(len(ngram_sizes)) whatever the sequence length. The longest matching n wins; with no match the
    drafter proposes nothing (the round becomes a plain target step, and its γ is 0). Drafting indexes its own draft
    tokens as it goes (and undoes that afterwards), so the proposal at every position is the same function of the
    prefix as the beliefs ``commit`` reports: the counterfactual feedback is exact.

    Parameters
    ----------
    ngram_sizes : n-gram lengths to match, tried longest first. ``(3, 2, 1)`` adds HF prompt lookup's 1-gram
        fallback: a proposal almost everywhere, nearly free where verifying more tokens costs nothing (a GPU, a bf16
        CPU), a weak guess that costs a verified token each where it does not (an fp32 CPU).
    name : label in stats.
    context : whether having a proposal or not says something about the text, so that the throughput learner splits
        its arms into specialists for "some lookup matches" and "none does" (``ExpertPolicy``'s contexts). Default:
        only when every n is at least 2 (a 1-gram fallback matches nearly everywhere, so it would leave one context
        only and take the split's information away from the other drafters).
    """

    vocab_size = None  # proposes token ids from the sequence: compatible with any vocabulary
    free_beliefs = True  # its beliefs cost a dictionary lookup: evaluated every round, whatever the schedule

    def __init__(self, ngram_sizes: Sequence[int] = (3, 2), name: str = "ngram", context: bool | None = None):
        sizes = sorted({int(n) for n in ngram_sizes}, reverse=True)
        if not sizes or sizes[-1] < 1:
            raise ValueError(f"ngram_sizes must be positive integers, got {ngram_sizes!r}")
        self.sizes = sizes
        self.name = name
        self.context = sizes[-1] >= 2 if context is None else bool(context)
        self.seq: list[int] = []
        self.index: dict[int, dict[tuple, int]] = {}

    def prefill(self, ids: torch.Tensor, beliefs: int = 0) -> torch.Tensor | None:
        """Index the prompt; with ``beliefs = P``, return the proposals ``[P]`` (−1 = none) it would have made at the
        prompt's last P positions (the prompt warm start)."""
        self.owed: list[int] = []  # proposals at committed positions not yet reported
        self.seq = []
        self.index = {n: {} for n in self.sizes}
        tokens = ids.reshape(-1).tolist()
        first = len(tokens) - min(beliefs, len(tokens) - 1)
        guesses = []
        for j, token in enumerate(tokens):
            if beliefs and j >= first:
                guess = self.lookup()
                guesses.append(-1 if guess is None else guess)
            self._append(token)
        return torch.tensor(guesses, dtype=torch.long, device=ids.device) if beliefs else None

    def _append(self, token: int, undo: list | None = None) -> None:
        length = len(self.seq)
        for n in self.sizes:
            if length >= n:
                key = tuple(self.seq[length - n :])
                table = self.index[n]
                if undo is not None:
                    undo.append((table, key, table.get(key)))
                table[key] = length
        self.seq.append(token)

    def lookup(self) -> int | None:
        """The proposal after the current sequence, or None."""
        for n in self.sizes:
            if len(self.seq) >= n:
                pos = self.index[n].get(tuple(self.seq[-n:]))
                if pos is not None:
                    return self.seq[pos]
        return None

    def has_proposal(self) -> bool:
        """Whether the current suffix matches anything (else :meth:`propose` drafts nothing)."""
        return self.lookup() is not None

    def propose(self, k: int, ctx: DraftContext) -> Proposal:
        undo: list = []
        draft: list[int] = []
        for _ in range(k):
            token = self.lookup()
            if token is None:
                break
            draft.append(token)
            self._append(token, undo)
        for table, key, old in reversed(undo):
            if old is None:
                del table[key]
            else:
                table[key] = old
        del self.seq[len(self.seq) - len(draft) :]
        tokens = torch.tensor(draft, dtype=torch.long, device=ctx.ids.device)
        if draft:
            ctx.ids[0, ctx.length : ctx.length + len(draft)] = tokens
        return Proposal(tokens=tokens, probs=None)

    def commit(self, emitted: torch.Tensor, emitted_list: list[int], n_accepted: int, want_beliefs: bool | None):
        """Append the emitted tokens; ``want_beliefs`` as for :meth:`HFDrafter.commit` (True: every position since the
        last report, False: defer, None: keep nothing)."""
        for token in emitted_list:
            guess = self.lookup() if want_beliefs is not None else None
            self.owed.append(-1 if guess is None else guess)
            self._append(token)
        if want_beliefs is None:
            self.owed = []
        if not want_beliefs:
            return None
        beliefs, self.owed = self.owed, []
        return Beliefs(tokens=torch.tensor(beliefs, dtype=torch.long, device=emitted.device))

    def check_compatible(self, target_vocab: int, device: torch.device, dtype: torch.dtype, needed_len: int,
                         real_vocab: int | None = None) -> None:
        return None
