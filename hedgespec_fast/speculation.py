"""The round's draft → verify → settle, behind one seam: a chain, a draft tree, or several drafts merged into a tree.

The decoder asks a strategy to ``draft`` (with the policy's choice), ``verify`` (one target forward and the lossless
rule, on device, packed for the round's one host read), then ``settle`` (crop or gather the target's cache, hand each
drafter back its accepted path). Every strategy packs its result as ``[n_accepted, nan_flag, e_0 … e_D, …]`` and
returns the target's rows at the emitted positions, so the rest of the round (stopping, commit, full-information γ,
the policy update) does not care which one ran.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .cache import gather, mask_width, pad_mask, truncate
from .kernels.reference import MAX_TOP_L  # the acceptance kernels' largest L
from .drafters.base import Beliefs, DraftContext, Proposal
from .modeling import forward_logits
from .tree_verify import verify_tree
from .trees import (DynamicTree, MultiDraft, SampledChains, StaticTree, TokenTree, TreeSource, chain_tree,
                    check_tree_attention, max_nodes, merge_trees, parse_tree, prefix_mask, tree_attention_mask,
                    warp_at_nodes, with_depth)
from .verify import verify_greedy, verify_sampling


@dataclass
class Verified:
    """A verified round, before the host read.

    Attributes
    ----------
    packed : LongTensor ``[n_accepted, nan_flag, e_0 … e_depth, …]`` (strategy-specific tail).
    depth : the most draft tokens this round could accept (the chain length, or the tree depth).
    target_warped, target_raw : ``[depth + 1, V]`` the target's warped and raw logits at the emitted positions (rows
        past the emitted ones are padding).
    """

    packed: torch.Tensor
    depth: int
    target_warped: torch.Tensor
    target_raw: torch.Tensor


def make_speculation(tree, draft_len: int, target, pool, warp, do_sample: bool):
    """The strategy for ``SpecConfig.tree``: None → :class:`ChainSpeculation`, else a tree strategy."""
    shape = parse_tree(tree)
    if shape is None:
        return ChainSpeculation(target, pool, warp, do_sample, draft_len)
    shape = with_depth(shape, draft_len)
    check_tree_attention(target, "the target")
    if not (isinstance(shape, MultiDraft) and shape.source == "drafters"):  # those draft chains only
        for drafter in pool.drafters:  # fail before any work, not when a drafter is first chosen
            if hasattr(drafter, "propose_tree") and hasattr(drafter, "model"):
                check_tree_attention(drafter.model, f"drafter {drafter.name!r}")
    if isinstance(shape, MultiDraft):
        return MultiDraftSpeculation(target, pool, warp, do_sample, shape)
    return TreeSpeculation(target, pool, warp, do_sample, shape)


class ChainSpeculation:
    """The chosen drafter proposes a chain; chain verification (verify.py); the target cache is cropped."""

    top_l = None  # γ in the chain modes

    def __init__(self, target, pool, warp, do_sample: bool, draft_len: int):
        self.target, self.pool, self.warp, self.do_sample, self.depth = target, pool, warp, do_sample, draft_len
        self.width = draft_len + 1  # the most tokens one verification feeds (a cache must have room for them)
        self.host_syncs = 0
        self.graphed = None  # a GraphedForward of the target over its static cache, when CUDA graphs are on

    def draft(self, chosen: int, budget: int, ctx: DraftContext, weights) -> int:
        """Draft at most ``budget`` tokens; returns how many. ``weights()`` gives the policy's distribution over
        drafters (or None), read only by strategies that share a round among drafters."""
        self.chosen, self.ctx = chosen, ctx
        if budget <= 0:  # a plain step: no drafter is asked (a lagging one would catch up for nothing)
            self.proposal = Proposal(tokens=ctx.ids[0, ctx.length : ctx.length].clone())
        else:
            self.proposal = self.pool.propose(chosen, budget, ctx)
        return len(self.proposal)

    def verify(self, cache, generator) -> Verified:
        ids, length, k = self.ctx.ids, self.ctx.length, len(self.proposal)
        tokens = ids[0, length - 1 : length + k]
        if self.graphed is not None and self.graphed.cache is cache:  # CUDA graph per k + 1 over the static cache
            raw = self.graphed(tokens, k + 1)[0]
        else:
            raw = forward_logits(self.target, tokens, cache, keep=k + 1)  # [k+1, V]
        p = self.warp(ids, raw, length)
        if self.do_sample:
            packed = verify_sampling(self.proposal.tokens, self.proposal.probs, p, generator)
        else:
            packed = verify_greedy(self.proposal.tokens, p)
        return Verified(packed, k, p, raw)

    def settle(self, cache, verified: Verified, host: list[int], n_accepted: int) -> list[int]:
        """Keep the accepted prefix in the target's cache; returns each drafter's accepted draft tokens."""
        truncate(cache, self.ctx.length + n_accepted)
        accepted = [0] * len(self.pool)
        accepted[self.chosen] = n_accepted
        return accepted

    def block_gamma(self, evaluator, verified: Verified) -> torch.Tensor:
        """γ of the chosen drafter at every drafted position (MetaSD's block divergence; its mean is the reward)."""
        proposal, k = self.proposal, len(self.proposal)
        beliefs = Beliefs(logits=proposal.logits) if proposal.logits is not None else Beliefs(tokens=proposal.tokens)
        return evaluator.gamma(verified.target_warped[:k], verified.target_raw[:k], [beliefs], self.ctx.ids,
                               self.ctx.length)[0]


class TreeSpeculation:
    """The chosen drafter grows a draft tree (``DynamicTree`` or ``StaticTree``); one target forward over every node
    with a tree mask; tree verification (tree_verify.py); the accepted path's K/V is gathered in the target's cache and
    the drafter's. A drafter that cannot grow trees (n-gram) contributes its chain of ``depth`` tokens.
    """

    def __init__(self, target, pool, warp, do_sample: bool, shape):
        self.target, self.pool, self.warp, self.do_sample, self.shape = target, pool, warp, do_sample, shape
        self.depth = shape.depth
        self.width = max_nodes(shape, len(pool)) + 1  # the most tree nodes one verification (or growth) feeds
        self.top_l = None if shape.top_l is None else min(shape.top_l, MAX_TOP_L)
        self.host_syncs = 0
        self._guess_rng = None  # multi-draft "chains" under greedy decoding

    # -- draft ---------------------------------------------------------------------------------------------------------
    def draft(self, chosen: int, budget: int, ctx: DraftContext, weights) -> int:
        self.chosen, self.ctx, self.host_syncs = chosen, ctx, 0
        depth = min(self.depth, budget)
        self.tree = self._grow(chosen, depth, ctx, weights) if depth > 0 else self._root_only(ctx)
        return self.tree.size - 1

    def _grow(self, chosen: int, depth: int, ctx: DraftContext, weights) -> TokenTree:
        return self._grow_one(chosen, self.shape, depth, ctx)

    def _grow_one(self, index: int, shape, depth: int, ctx: DraftContext) -> TokenTree:
        """Drafter ``index``'s tree of ``shape`` (its chain when ``shape`` is None or it cannot grow trees)."""
        drafter = self.pool.drafters[index]
        if shape is not None and hasattr(drafter, "propose_tree"):
            tree = drafter.propose_tree(shape, depth, ctx)
            tree.sources = [replace(src, drafter=index) for src in tree.sources]
            return tree
        proposal = drafter.propose(depth, ctx)
        k = len(proposal)
        tree = chain_tree(ctx.ids[0, ctx.length - 1], proposal.tokens, proposal.probs)
        nodes = torch.arange(k + 1, device=tree.tokens.device)
        beliefs = Beliefs(logits=proposal.logits) if proposal.logits is not None else Beliefs(tokens=proposal.tokens)
        tree.sources = [TreeSource(index, torch.where(nodes > 0, nodes, -1), False, beliefs, nodes[:k])]
        return tree

    @staticmethod
    def _root_only(ctx: DraftContext) -> TokenTree:
        root = ctx.ids[0, ctx.length - 1].view(1)
        zero = torch.zeros(1, dtype=torch.long, device=root.device)
        return TokenTree(root.clone(), zero - 1, zero, 0)

    # -- verify --------------------------------------------------------------------------------------------------------
    def verify(self, cache, generator) -> Verified:
        tree, ids, length = self.tree, self.ctx.ids, self.ctx.length
        allowed = prefix_mask(length - 1, tree.ancestors())
        mask = tree_attention_mask(self.target, pad_mask(allowed, mask_width(cache, allowed.shape[-1])))
        raw = forward_logits(self.target, tree.tokens, cache, keep=0, attention_mask=mask,
                             position_ids=tree.position_ids(length - 1))  # [n, V]: after every node
        p = warp_at_nodes(self.warp, ids, length, raw, tree.tokens, tree.parents)
        packed, path = verify_tree(tree, p, self.do_sample, generator)
        self.p, self.raw = p, raw
        # Each source's slot (or chain position) along the path rides in the same host read.
        packed = torch.cat([packed, *(src.local[path] for src in tree.sources)])
        return Verified(packed, tree.depth, p[path], raw[path])

    # -- settle --------------------------------------------------------------------------------------------------------
    def settle(self, cache, verified: Verified, host: list[int], n_accepted: int) -> list[int]:
        depth = self.tree.depth
        path = verified.packed[3 + depth : 3 + depth + n_accepted + 1]
        gather(cache, self.ctx.length - 1, path)  # the cache held the prefix but its last token, then every node
        accepted = [0] * len(self.pool)
        base = 4 + 2 * depth
        for s, src in enumerate(self.tree.sources):
            local = host[base + s * (depth + 1) + 1 : base + s * (depth + 1) + 1 + n_accepted]
            if src.grown:
                accepted[src.drafter] = self.pool.drafters[src.drafter].settle_tree(local)
            else:
                count = 0
                while count < len(local) and local[count] >= 0:
                    count += 1
                accepted[src.drafter] = count
        return accepted

    def block_gamma(self, evaluator, verified: Verified) -> torch.Tensor:
        """The mean γ (shape ``[1]``) of the chosen drafter over the contexts it drafted from that remain in the tree
        (root and expanded nodes), against the target there. Position-dependent logits processors are applied as if
        the contexts were consecutive (a reward signal, not a losslessness matter)."""
        source = next((s for s in self.tree.sources if s.drafter == self.chosen), None)
        if source is None or source.beliefs is None:
            return torch.zeros(1)
        context = source.context.clamp(min=0)
        gamma = evaluator.gamma(self.p[context], self.raw[context], [source.beliefs], self.ctx.ids, self.ctx.length)[0]
        kept = (source.context >= 0).float()
        return (gamma * kept).sum(dim=0, keepdim=True) / kept.sum().clamp(min=1.0)


class MultiDraftSpeculation(TreeSpeculation):
    """Several drafts merged into one tree (:class:`~.trees.MultiDraft`): ``chains`` (the chosen drafter samples k
    chains), ``drafters`` (the chosen drafter and the next k − 1 by policy weight, a chain each), ``shared`` (the
    policy's weights share the tree's token budget; each drafter grows a dynamic tree of its share). Merging reads the
    drafts' structure on the host: one extra host sync per round.
    """

    def _grow(self, chosen: int, depth: int, ctx: DraftContext, weights) -> TokenTree:
        shape = self.shape
        if shape.source == "chains":
            if ctx.generator is None and not self.do_sample:  # greedy: diverse guesses, without touching torch's RNG
                if self._guess_rng is None:
                    self._guess_rng = torch.Generator(device=ctx.ids.device).manual_seed(0)
                ctx = replace(ctx, generator=self._guess_rng)
            trees = [self._grow_one(chosen, SampledChains(shape.k), depth, ctx)]
        elif shape.source == "drafters":
            order = self._ranked(chosen, weights)[: shape.k]
            trees = [self._grow_one(i, None, depth, ctx if i == chosen else replace(ctx, stop=None)) for i in order]
        else:
            shares = self._shares(chosen, weights, shape.total)
            trees = [self._grow_one(i, DynamicTree(min(depth, b), shape.topk, b), min(depth, b),
                                    ctx if i == chosen else replace(ctx, stop=None))
                     for i, b in sorted(enumerate(shares), key=lambda ib: (ib[0] != chosen, -ib[1])) if b > 0]
        self.host_syncs += 1
        return merge_trees(trees)

    def _weights(self, policy_weights) -> list[float]:
        weights = policy_weights()
        if weights is None:  # bandits keep no distribution: share alike
            return [1.0] * len(self.pool)
        self.host_syncs += int(weights.device.type == "cuda")
        values = [max(float(w), 0.0) for w in weights.tolist()]
        return values if sum(values) > 0 else [1.0] * len(values)

    def _ranked(self, chosen: int, weights) -> list[int]:
        """The chosen drafter first, then the others by weight (ties: pool order)."""
        w = self._weights(weights)
        return [chosen] + sorted((i for i in range(len(w)) if i != chosen), key=lambda i: (-w[i], i))

    def _shares(self, chosen: int, weights, total: int) -> list[int]:
        """``total`` tokens split in proportion to the weights (largest remainder); the chosen drafter gets at least
        one, so the policy's choice always drafts."""
        w = self._weights(weights)
        norm = sum(w)
        exact = [total * x / norm for x in w]
        shares = [int(x) for x in exact]
        for i in sorted(range(len(w)), key=lambda i: (-(exact[i] - shares[i]), i))[: total - sum(shares)]:
            shares[i] += 1
        if shares[chosen] == 0:
            shares[max(range(len(w)), key=lambda i: shares[i])] -= 1
            shares[chosen] = 1
        return shares


__all__ = ["ChainSpeculation", "TreeSpeculation", "MultiDraftSpeculation", "Verified", "make_speculation",
           "StaticTree", "DynamicTree", "MultiDraft"]
