"""HFDrafter: any ``AutoModelForCausalLM`` as a drafter, with its own KV cache."""
from __future__ import annotations

import torch

from ..cache import gather, new_cache, truncate
from ..cost import timed
from ..graphs import static_cache_for
from ..modeling import context_length, forward_rows, param_device_dtype, vocab_size
from ..trees import TokenTree, check_tree_attention
from .base import Beliefs, DraftContext, Proposal
from .tree_growth import grow

PADDING_TOLERANCE = 0.01  # output sizes within 1 % of the target's count as one tokenizer, padded differently


class HFDrafter:
    """A causal LM that drafts from its warped distribution and reports its beliefs on the verified text.

    State between rounds: the cache holds ``fed`` committed tokens (plus, right after ``propose``, the draft tokens it
    fed to draft further); ``pending`` holds the logits after the last committed token. Committed tokens the drafter
    was not asked to evaluate wait in ``backlog`` and are fed in one forward when next needed (lazy catch-up), so a
    drafter that is neither chosen nor evaluated costs nothing.

    Every logit tensor kept here has a leading row dimension (``[rows, n, V]``): one row for a plain model, one per
    member for :class:`~.stacked.StackedDrafters`, whose batch rows are different models fed the same tokens.

    Parameters
    ----------
    model : a transformers causal LM sharing the target's vocabulary (or a stacked model with ``rows`` batch rows).
    name : label in stats (defaults to the model's class name).
    """

    rows = 1

    def __init__(self, model, name: str | None = None):
        self.model = model
        self.name = name or type(model).__name__
        self.vocab_size = vocab_size(model)
        self.max_context = context_length(model)
        self.device, self.dtype = param_device_dtype(model)
        self.cache, self.graphed = None, None

    @property
    def pending(self) -> torch.Tensor:
        """The logits after the last committed token, ``[1, V]`` (row 0)."""
        return self.pending_rows[0]

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    def prefill(self, ids: torch.Tensor, calibrate: bool = False, beliefs: int = 0, cache_len: int | None = None,
                lazy: bool = False):
        """Feed the prompt ``[1, L]``.

        With ``lazy``, nothing is computed: the prompt waits in the backlog like text the drafter sat out, and the
        first forward that needs this drafter (its first draft or evaluation) feeds it; a drafter never needed costs
        nothing.

        With ``calibrate``, its last token goes in a forward of its own whose seconds are returned: what one drafting
        step costs, measured without an extra token of work. With ``beliefs = P`` (P < L), the logits at the prompt's
        last P positions (L − P … L − 1, each predicted from the prompt before it) are kept too: the prompt warm start.
        With ``cache_len``, the KV cache is a static one of that many positions (``cache_implementation="static"``).

        Returns
        -------
        (seconds or None, Beliefs rows ``[rows, P, V]`` or None)
        """
        if cache_len is None:
            self.cache, self.graphed = new_cache(), None
        else:  # kept with the model across calls, with CUDA graphs of its one-token steps on a GPU
            self.cache, self.graphed = static_cache_for(self.model, cache_len, rows=self.rows, role="drafter")
        self.fed = 0
        self.backlog: list[torch.Tensor] = []
        self.draft_rows: torch.Tensor | None = None  # [rows, k, V] after propose, until commit
        self.tree_rows: torch.Tensor | None = None  # [F, V] after propose_tree, until settle_tree
        self.pending_rows = None  # [rows, 1, V]
        self.owed: list[torch.Tensor] = []  # [rows, n, V] logit rows of committed positions not yet reported, in order
        self.owed_positions = 0
        tokens = ids.reshape(-1)
        if lazy:
            self.backlog.append(tokens.clone())  # the caller's buffer may change
            return None, None
        beliefs = min(beliefs, tokens.shape[0] - 1)
        if not calibrate or tokens.shape[0] < 2:
            out = self._feed(tokens, keep=beliefs + 1)
            return None, (out[:, :-1] if beliefs else None)
        # The last tokens go in one at a time, timed, and the lower reading is the step's cost: the first one-token
        # forward after a prompt can run cold (a 1.5B int8 drafter's read 2.5× its steady step), and a price that
        # keeps a drafter out of play is never measured again.
        timed_steps = 2 if tokens.shape[0] > 2 else 1
        out = self._feed(tokens[:-timed_steps], keep=max(beliefs - timed_steps + 1, 1))
        rows, readings = ([out] if beliefs >= timed_steps else []), []
        for token in tokens[-timed_steps:].split(1):
            step, seconds = timed(lambda token=token: self._feed(token, keep=1), self.device)
            rows.append(step)
            readings.append(seconds)
        rows.pop()  # the last step's row is ``pending``; the others predict prompt positions (the warm start's)
        return min(readings), (torch.cat(rows, dim=1) if beliefs else None)

    def _forward(self, tokens: torch.Tensor, keep: int) -> torch.Tensor:
        if self.graphed is not None and tokens.shape[0] == 1:  # a drafting step: one CUDA graph replay
            return self.fit_vocab(self.graphed(tokens, keep))
        return self.fit_vocab(forward_rows(self.model, tokens, self.cache, keep, self.rows))  # [rows, keep, V]

    def _feed(self, tokens: torch.Tensor, keep: int) -> torch.Tensor:
        """Feed committed tokens; returns the last ``keep`` logit rows ``[rows, keep, V]`` and updates ``pending``."""
        out = self._forward(tokens, keep)
        self.fed += int(tokens.shape[0])
        self.pending_rows = out[:, -1:]
        return out

    def _catch_up(self) -> None:
        """Feed the backlog in one forward, computing logits only where they are needed: the owed positions not known
        yet (the last ones of the backlog; earlier backlog positions were skipped by the evaluation) and ``pending``."""
        if not self.backlog:
            return
        tokens = torch.cat(self.backlog)
        self.backlog = []
        missing = self.owed_positions - sum(int(rows.shape[1]) for rows in self.owed)
        out = self._feed(tokens, keep=missing + 1)
        if missing:
            self.owed.append(out[:, :-1])  # the last row is ``pending``: it belongs to the next committed position

    def owe(self, positions: int) -> None:
        """Report beliefs on the last ``positions`` committed positions at the next evaluation, although they were
        committed with nobody asking (a drafter joining a generation inside an evaluation batch: the batch's other
        drafters report them). They must still be in the backlog, with the token before them: the catch-up computes
        their rows in the forward it runs anyway."""
        if positions <= 0:
            return
        if not self.can_owe(positions):
            raise RuntimeError(f"drafter {self.name!r} cannot owe {positions} positions: it holds {self.lag} "
                               f"unfed tokens and owes {self.owed_positions} already")
        self.owed_positions = positions

    def can_owe(self, positions: int) -> bool:
        """Whether :meth:`owe` can take ``positions``: nothing owed yet, and those positions still unfed (a drafter out
        of play since its lazy prefill; not one that drafted meanwhile, e.g. chosen through a deferred choice)."""
        return positions <= 0 or (not self.owed and not self.owed_positions and self.lag >= positions + 1)

    @property
    def lag(self) -> int:
        """Committed tokens not fed yet (the backlog that the next forward catches up on)."""
        return sum(int(t.shape[0]) for t in self.backlog)

    # -- a round -----------------------------------------------------------------------------------------------------
    def propose(self, k: int, ctx: DraftContext, row: int = 0) -> Proposal:
        """Draft ``k`` tokens from row ``row``'s distributions (every row is fed the same draft tokens)."""
        self._catch_up()
        start = ctx.length
        steps = [self.pending_rows]  # [rows, 1, V] each
        probs = []
        drafted = 0
        for j in range(k):
            warped = ctx.warp(ctx.ids, steps[j][row], start + j)  # [1, V] fp32
            p = warped.softmax(dim=-1) if ctx.do_sample or ctx.min_confidence is not None else None
            if ctx.min_confidence is not None and float(p.max()) < ctx.min_confidence:
                break  # unsure here: the chain ends before this position (a rule of the prefix alone: lossless)
            if ctx.do_sample:
                token = self._sample(p, ctx.generator)
                probs.append(p)
            else:
                token = warped.argmax(dim=-1)
            ctx.ids[0, start + j] = token[0]
            drafted = j + 1
            if ctx.stop is not None and ctx.stop(warped[0]):
                break
            if j < k - 1:
                steps.append(self._forward(token, keep=1))
        self.draft_rows = torch.cat(steps[:drafted], dim=1) if drafted else None
        tokens = ctx.ids[0, start : start + drafted].clone()
        logits = self.draft_rows[row] if drafted else None
        return Proposal(tokens=tokens, probs=torch.cat(probs) if probs else None, logits=logits)

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
        self.draft_rows = torch.cat([self.pending, self.tree_rows[keep]]).unsqueeze(0)
        self.tree_rows = None
        return kept

    def commit(self, emitted: torch.Tensor, emitted_list: list[int], n_accepted: int, want_beliefs: bool | None):
        """Append the round's emitted tokens.

        ``want_beliefs``: True → :class:`Beliefs` for every position committed since beliefs were last returned (this
        round's and any deferred ones, in order); False → defer them (keep what reporting them later needs);
        None → nobody will ask (keep nothing).
        """
        rows = self.commit_rows(emitted, n_accepted, want_beliefs)
        return None if rows is None else Beliefs(logits=rows[0])

    def commit_rows(self, emitted: torch.Tensor, n_accepted: int, want_beliefs: bool | None) -> torch.Tensor | None:
        """:meth:`commit` for every row: the beliefs ``[rows, n, V]`` when ``want_beliefs``, else None."""
        if self.tree_rows is not None:
            raise RuntimeError(f"drafter {self.name!r} grew a tree that was never settled: call settle_tree first")
        m = int(emitted.shape[0])
        if self.draft_rows is not None:
            # Draft rows 0..n_accepted were computed on the true prefix; so were the first c fed draft tokens.
            valid = min(n_accepted + 1, self.draft_rows.shape[1], m)
            truncate(self.cache, self.fed + valid - 1)
            self.fed += valid - 1
            known, to_feed = self.draft_rows[:, :valid], emitted[valid - 1 :]
            self.draft_rows = None
        else:
            known, to_feed = (self.pending_rows if not self.backlog else None), emitted
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
        beliefs = torch.cat(self.owed, dim=1)
        assert beliefs.shape[1] == self.owed_positions, "owed belief rows out of step with committed positions"
        self.owed, self.owed_positions = [], 0
        return beliefs

    def check_compatible(self, target_vocab: int, device: torch.device, dtype: torch.dtype, needed_len: int,
                         real_vocab: int | None = None) -> None:
        """Raise a clear error when this drafter cannot serve the target and prompt at hand.

        Vocabularies: a drafter whose output size differs from the target's only by padding rows (one tokenizer,
        embedding tables rounded up differently, e.g. Qwen2.5-7B's 152064 against Qwen2.5-0.5B's 151936) is accepted:
        its logits are cut or padded with −inf to the target's size, so it can never draft a token it does not have,
        and verification against the target's own distribution keeps the output exact. It counts as padding when the
        tokenizer's ``real_vocab`` fits in both, or, with no tokenizer given, when the sizes differ by at most
        ``PADDING_TOLERANCE`` (1 %) of the target's. Either way a wrong guess costs speed, never exactness: whatever a
        drafter proposes, the target's own distribution decides. A drafter in another dtype (an fp32 or int8
        drafter for a bf16 target) is compared in fp32.
        """
        if self.vocab_size != target_vocab:
            if real_vocab is not None:
                padded = real_vocab <= min(self.vocab_size, target_vocab)
                why = f"the tokenizer has {real_vocab} tokens"
            else:
                padded = abs(self.vocab_size - target_vocab) <= PADDING_TOLERANCE * target_vocab
                why = "pass the tokenizer (hs.generate(tokenizer=...)) if one tokenizer serves both"
            if not padded:
                raise ValueError(
                    f"drafter {self.name!r} has a vocabulary of {self.vocab_size} tokens "
                    f"but the target has {target_vocab} ({why}): "
                    "drafters must share the target's tokenizer; their output sizes may differ only by padding"
                )
        self.target_vocab = target_vocab
        if self.device != device:
            raise ValueError(
                f"drafter {self.name!r} is on {self.device} but the target is on {device}: move it with .to()"
            )
        if self.max_context is not None and needed_len > self.max_context:
            raise ValueError(
                f"drafter {self.name!r} supports {self.max_context} positions but this generation needs {needed_len} "
                "(prompt + max_new_tokens): shorten the prompt, lower max_new_tokens or drop this drafter"
            )

    def fit_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., V_drafter]`` → ``[..., V_target]``: padding rows cut, or missing ones added at −inf."""
        target = getattr(self, "target_vocab", None)
        size = logits.shape[-1]
        if target is None or size == target:
            return logits
        if size > target:
            return logits[..., :target]
        return torch.nn.functional.pad(logits, (0, target - size), value=float("-inf"))
