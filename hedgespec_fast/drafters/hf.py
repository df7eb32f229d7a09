"""HFDrafter: any ``AutoModelForCausalLM`` as a drafter, with its own KV cache."""
from __future__ import annotations

import torch

from ..cache import gather, new_cache, truncate
from ..modeling import context_length, forward_logits, param_device_dtype, vocab_size
from ..trees import TokenTree, check_tree_attention
from .base import Beliefs, DraftContext, Proposal
from .tree_growth import grow


class HFDrafter:
    """A causal LM that drafts from its warped distribution and reports its beliefs on the verified text.

    State between rounds: the cache holds ``fed`` committed tokens (plus, right after ``propose``, the draft tokens it
    fed to draft further); ``pending`` holds the logits after the last committed token. Committed tokens the drafter
    was not asked to evaluate wait in ``backlog`` and are fed in one forward when next needed (lazy catch-up), so a
    drafter that is neither chosen nor evaluated costs nothing.

    Parameters
    ----------
    model : a transformers causal LM sharing the target's vocabulary.
    name : label in stats (defaults to the model's class name).
    """

    def __init__(self, model, name: str | None = None):
        self.model = model
        self.name = name or type(model).__name__
        self.vocab_size = vocab_size(model)
        self.max_context = context_length(model)
        self.device, self.dtype = param_device_dtype(model)
        self.cache = None

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    def prefill(self, ids: torch.Tensor) -> None:
        self.cache = new_cache()
        self.fed = 0
        self.backlog: list[torch.Tensor] = []
        self.draft_rows: torch.Tensor | None = None
        self.tree_rows: torch.Tensor | None = None  # [F, V] after propose_tree, until settle_tree
        self.pending = None
        self.owed: list[torch.Tensor] = []  # logit rows of committed positions not yet reported, in order
        self.owed_positions = 0
        self._feed(ids.reshape(-1), keep=1)

    def _feed(self, tokens: torch.Tensor, keep: int) -> torch.Tensor:
        """Feed committed tokens; returns the last ``keep`` logit rows and updates ``pending``."""
        rows = forward_logits(self.model, tokens, self.cache, keep)
        self.fed += int(tokens.shape[0])
        self.pending = rows[-1:]
        return rows

    def _catch_up(self) -> None:
        """Feed the backlog in one forward. Its rows are owed beliefs (but the last, which is ``pending``) when
        positions are owed; otherwise only the last row is computed."""
        if not self.backlog:
            return
        tokens = torch.cat(self.backlog)
        self.backlog = []
        if self.owed_positions:
            rows = self._feed(tokens, keep=int(tokens.shape[0]))
            self.owed.append(rows[:-1])  # the last row is ``pending``: it belongs to the next committed position
        else:
            self._feed(tokens, keep=1)

    # -- a round -----------------------------------------------------------------------------------------------------
    def propose(self, k: int, ctx: DraftContext) -> Proposal:
        self._catch_up()
        start = ctx.length
        rows = [self.pending]
        probs = []
        drafted = 0
        for j in range(k):
            warped = ctx.warp(ctx.ids, rows[j], start + j)  # [1, V]
            if ctx.do_sample:
                p = warped.softmax(dim=-1)
                token = self._sample(p, ctx.generator)
                probs.append(p)
            else:
                token = warped.argmax(dim=-1)
            ctx.ids[0, start + j] = token[0]
            drafted = j + 1
            if ctx.stop is not None and ctx.stop(warped[0]):
                break
            if j < k - 1:
                rows.append(forward_logits(self.model, token, self.cache, keep=1))
        self.draft_rows = torch.cat(rows[:drafted]) if drafted else None
        tokens = ctx.ids[0, start : start + drafted].clone()
        return Proposal(tokens=tokens, probs=torch.cat(probs) if probs else None, logits=self.draft_rows)

    def _sample(self, probs: torch.Tensor, generator) -> torch.Tensor:
        try:
            return torch.multinomial(probs, 1, generator=generator).view(1)
        except RuntimeError as err:  # NaN / inf logits make an invalid distribution
            raise ValueError(
                f"drafter {self.name!r} produced an invalid distribution (NaN or inf logits?): {err}"
            ) from err

    def propose_tree(self, shape, depth: int, ctx: DraftContext) -> TokenTree:
        """Grow a draft tree (``DynamicTree``, ``StaticTree`` or ``SampledChains``) of at most ``depth`` levels.

        The tree's nodes stay in the cache (one slot per fed node) until :meth:`settle_tree` keeps the accepted path.
        """
        self._catch_up()
        check_tree_attention(self.model, f"drafter {self.name!r}")
        tree, self.tree_rows = grow(self, shape, depth, ctx)
        self.draft_rows = None
        return tree

    def settle_tree(self, slots: list[int]) -> int:
        """Keep the accepted path of the last tree: ``slots`` are the cache slots of the accepted nodes, root excluded
        (−1 = a node this drafter never fed). Afterwards the drafter is in the state of a chain proposal whose fed
        draft tokens are that path, so :meth:`commit` proceeds as for chains. Returns the path nodes kept."""
        kept = 0
        while kept < len(slots) and slots[kept] >= 0:
            kept += 1
        keep = torch.tensor(slots[:kept], dtype=torch.long, device=self.device)
        gather(self.cache, self.fed, keep)
        self.draft_rows = torch.cat([self.pending, self.tree_rows[keep]])
        self.tree_rows = None
        return kept

    def commit(self, emitted: torch.Tensor, emitted_list: list[int], n_accepted: int, want_beliefs: bool | None):
        """Append the round's emitted tokens.

        ``want_beliefs``: True → :class:`Beliefs` for every position committed since beliefs were last returned (this
        round's and any deferred ones, in order); False → defer them (keep what reporting them later needs);
        None → nobody will ask (keep nothing).
        """
        if self.tree_rows is not None:
            raise RuntimeError(f"drafter {self.name!r} grew a tree that was never settled: call settle_tree first")
        m = int(emitted.shape[0])
        if self.draft_rows is not None:
            # Draft rows 0..n_accepted were computed on the true prefix; so were the first c fed draft tokens.
            valid = min(n_accepted + 1, self.draft_rows.shape[0], m)
            truncate(self.cache, self.fed + valid - 1)
            self.fed += valid - 1
            known, to_feed = self.draft_rows[:valid], emitted[valid - 1 :]
            self.draft_rows = None
        else:
            known, to_feed = (self.pending if not self.backlog else None), emitted
        self.backlog.append(to_feed)
        if want_beliefs is None:
            self.owed, self.owed_positions = [], 0
            return None
        if known is not None:
            self.owed.append(known)
        self.owed_positions += m
        if not want_beliefs:
            return None
        self._catch_up()
        beliefs = torch.cat(self.owed)
        assert beliefs.shape[0] == self.owed_positions, "owed belief rows out of step with committed positions"
        self.owed, self.owed_positions = [], 0
        return Beliefs(logits=beliefs)

    def check_compatible(self, target_vocab: int, device: torch.device, dtype: torch.dtype, needed_len: int) -> None:
        """Raise a clear error when this drafter cannot serve the target and prompt at hand."""
        if self.vocab_size != target_vocab:
            raise ValueError(
                f"drafter {self.name!r} has a vocabulary of {self.vocab_size} tokens "
                f"but the target has {target_vocab}: "
                "drafters must share the target's tokenizer and output vocabulary"
            )
        if self.device != device:
            raise ValueError(
                f"drafter {self.name!r} is on {self.device} but the target is on {device}: move it with .to()"
            )
        if self.dtype != dtype:
            raise ValueError(
                f"drafter {self.name!r} has dtype {self.dtype} but the target has {dtype}: "
                f"cast it with .to({dtype}) so both score tokens in the same precision"
            )
        if self.max_context is not None and needed_len > self.max_context:
            raise ValueError(
                f"drafter {self.name!r} supports {self.max_context} positions but this generation needs {needed_len} "
                "(prompt + max_new_tokens): shorten the prompt, lower max_new_tokens or drop this drafter"
            )

