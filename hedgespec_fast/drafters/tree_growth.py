"""Growing draft trees with an HF causal LM drafter: EAGLE-2 dynamic trees, static rank trees, sampled chains.

The drafter's cache holds its committed tokens; growing feeds tree nodes level by level after them (one forward per
level, each with a 4D mask over the committed prefix and the node's ancestors, at position ``committed − 1 + depth``).
Every fed node takes the next cache *slot* (0, 1, … after the committed tokens); ``TreeSource.local`` maps tree nodes to
slots so that, once the target has chosen a path, :meth:`HFDrafter.settle_tree` keeps exactly that path's K/V.

Each grower returns ``(tree, rows)``: the :class:`~..trees.TokenTree` (root = the last committed token) and the
drafter's raw logits after each fed node, in slot order ``[F, V]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cache import mask_width, pad_mask
from ..modeling import forward_logits
from ..trees import (DynamicTree, SampledChains, StaticTree, TokenTree, TreeSource, Trials, prefix_mask,
                     tree_attention_mask, warp_at_nodes)
from .base import Beliefs, DraftContext

_LOGP_FLOOR = -1e4  # tokens the warping removed: finite, so cumulative scores never turn NaN


def grow(drafter, shape, depth: int, ctx: DraftContext) -> tuple[TokenTree, torch.Tensor]:
    """Grow ``shape`` (at most ``depth`` levels) from the drafter's state after the committed text."""
    if isinstance(shape, DynamicTree):
        return _grow_dynamic(drafter, shape.topk, shape.total, depth, ctx)
    if isinstance(shape, StaticTree):
        return _grow_static(drafter, shape.pruned(depth), ctx)
    if isinstance(shape, SampledChains):
        return _grow_chains(drafter, shape.k, depth, ctx)
    raise TypeError(f"a drafter cannot grow a {type(shape).__name__}")


def _feed(drafter, tokens: torch.Tensor, depths: torch.Tensor, tree_part: torch.Tensor) -> torch.Tensor:
    """Feed tree nodes after the committed tokens and the slots already fed; ``tree_part [q, slots + q]`` says which
    fed slots (and which of the new nodes) each new node sees. Returns their logits ``[q, V]``."""
    allowed = prefix_mask(drafter.fed, tree_part)
    mask = tree_attention_mask(drafter.model, pad_mask(allowed, mask_width(drafter.cache, allowed.shape[-1])))
    positions = (depths + drafter.fed - 1).view(1, -1)
    rows = forward_logits(drafter.model, tokens, drafter.cache, keep=0, attention_mask=mask, position_ids=positions)
    return drafter.fit_vocab(rows)


def _log_probs(warped: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(warped.float(), dim=-1).clamp(min=_LOGP_FLOOR)


def _source(local: torch.Tensor, pending: torch.Tensor, rows: torch.Tensor) -> TreeSource:
    """The grown tree's source record; belief rows are the root's (``pending``) then each fed slot's."""
    n, slots = local.shape[0], rows.shape[0]
    context = torch.full((slots + 2,), -1, dtype=torch.long, device=local.device)
    context.scatter_(0, torch.where(local >= 0, local + 1, slots + 1), torch.arange(n, device=local.device))
    context[0] = 0
    return TreeSource(None, local, True, Beliefs(logits=torch.cat([pending, rows])), context[: slots + 1])


def _grow_dynamic(drafter, topk: int, total: int, depth: int, ctx: DraftContext):
    """EAGLE-2: the frontier is the ``topk`` best nodes of the newest level by cumulative log-probability; each frontier
    node is fed and proposes its ``topk`` best children; after ``depth`` levels the ``total`` best nodes are kept.
    Scores never increase from parent to child, and a stable sort keeps parents ahead of equal-scored children, so the
    kept set contains every kept node's ancestors. Runs without host syncs (unless a stopping rule or a
    position-dependent logits processor needs one)."""
    device = drafter.pending.device
    k = min(topk, drafter.vocab_size)
    root = ctx.ids[0, ctx.length - 1].view(1)
    logp = _log_probs(ctx.warp(ctx.ids, drafter.pending, ctx.length))[0]
    score, token = logp.topk(k)
    tokens = [root, token]
    parents = [torch.full((1,), -1, dtype=torch.long, device=device), torch.zeros(k, dtype=torch.long, device=device)]
    scores, depths = [score.new_zeros(1), score], [torch.zeros(1, dtype=torch.long, device=device),
                                                  torch.ones(k, dtype=torch.long, device=device)]
    frontier = torch.arange(1, k + 1, device=device)  # candidate indices
    frontier_tokens, frontier_scores = token, score
    max_slots = max(depth - 1, 0) * k
    frontier_seen = torch.zeros((k, max_slots), dtype=torch.bool, device=device)  # fed slots each frontier node sees
    slot_of = torch.full((1 + k + max(depth - 1, 0) * k * k,), -1, dtype=torch.long, device=device)
    rows, fed_slots, levels, count = [], 0, 1, 1 + k
    for level in range(1, depth):
        own = torch.arange(fed_slots, fed_slots + k, device=device)
        tree_part = torch.cat([frontier_seen[:, :fed_slots], torch.eye(k, dtype=torch.bool, device=device)], dim=1)
        level_rows = _feed(drafter, frontier_tokens, torch.full((k,), level, device=device), tree_part)
        rows.append(level_rows)
        slot_of[frontier] = own
        seen = frontier_seen.clone()
        seen[torch.arange(k, device=device), own] = True
        fed_slots += k
        warped = warp_at_nodes(ctx.warp, ctx.ids, ctx.length, level_rows, torch.cat(tokens), torch.cat(parents),
                               frontier)
        child_logp, child_token = _log_probs(warped).topk(k, dim=-1)  # [k, k]
        child_score = (frontier_scores[:, None] + child_logp).reshape(-1)
        tokens.append(child_token.reshape(-1))
        parents.append(frontier.repeat_interleave(k))
        scores.append(child_score)
        depths.append(torch.full((k * k,), level + 1, dtype=torch.long, device=device))
        best = child_score.topk(k).indices
        frontier, frontier_tokens, frontier_scores = count + best, child_token.reshape(-1)[best], child_score[best]
        frontier_seen = seen[best // k]
        count += k * k
        levels += 1
        if ctx.stop is not None and ctx.stop(warped[best[0] // k]):  # TapOut: the best branch says stop here
            break

    tokens, parents, scores, depths = (torch.cat(x) for x in (tokens, parents, scores, depths))
    keep = min(total, count - 1)
    best = torch.sort(scores[1:], descending=True, stable=True).indices[:keep] + 1
    nodes = torch.cat([best.new_zeros(1), torch.sort(best).values])  # creation order is topological
    renumber = torch.full((count,), -1, dtype=torch.long, device=device)
    renumber[nodes] = torch.arange(keep + 1, device=device)
    node_parents = torch.where(parents[nodes] >= 0, renumber[parents[nodes].clamp(min=0)], -1)
    rows = torch.cat(rows) if rows else drafter.pending.new_zeros((0, drafter.pending.shape[-1]))
    local = slot_of[:count][nodes]
    tree = TokenTree(tokens[nodes], node_parents, depths[nodes], min(levels, keep), None,
                     [_source(local, drafter.pending, rows)])
    return tree, rows


@dataclass(frozen=True)
class _Level:
    nodes: torch.Tensor  # [q] the level's nodes
    parent_rows: torch.Tensor  # [q] row of each node's parent among the warped rows so far
    ranks: torch.Tensor  # [q, 1] each node's rank among its siblings
    width: int  # top-width tokens are ranked
    feed: torch.Tensor | None  # nodes with children, fed to the drafter after this level is drafted
    tree_part: torch.Tensor | None  # [len(feed), fed slots + len(feed)] what each fed node sees


@dataclass(frozen=True)
class _StaticPlan:
    """A static tree's index tensors, built on the host once per (shape, vocabulary, device) and kept on the device,
    so growing it costs no host→device copy (each copy would wait for the queued GPU work)."""

    parents: torch.Tensor
    depths: torch.Tensor
    local: torch.Tensor
    levels: tuple


_PLANS: dict = {}


def _static_plan(shape: StaticTree | None, vocab: int, device: torch.device) -> _StaticPlan:
    key = (shape, vocab, str(device))
    if key in _PLANS:
        return _PLANS[key]
    paths = list(shape.paths) if shape is not None else []
    index = {(): 0, **{p: i + 1 for i, p in enumerate(paths)}}
    parent = [-1] + [index[p[:-1]] for p in paths]
    depth = [0] + [len(p) for p in paths]
    has_children = set(parent[1:])
    slot, row, seen = [-1] * len(parent), {0: 0}, {0: []}  # row: the node's row among the warped rows
    levels, fed = [], 0
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
    for level in range(1, max(depth) + 1):
        nodes = [i for i in range(1, len(parent)) if depth[i] == level]
        width = min(max(paths[i - 1][-1] for i in nodes) + 1, vocab)
        ranks = [[min(paths[i - 1][-1], width - 1)] for i in nodes]
        feed = [i for i in nodes if i in has_children]
        tree_part = torch.zeros((len(feed), fed + len(feed)), dtype=torch.bool)
        for j, i in enumerate(feed):
            slot[i], row[i] = fed + j, 1 + fed + j
            seen[i] = seen[parent[i]] + [fed + j]
            tree_part[j, seen[i]] = True
        levels.append(_Level(as_tensor(nodes), as_tensor([row[parent[i]] for i in nodes]), as_tensor(ranks), width,
                             as_tensor(feed) if feed else None, tree_part.to(device) if feed else None))
        fed += len(feed)
    plan = _StaticPlan(as_tensor(parent), as_tensor(depth), as_tensor(slot), tuple(levels))
    _PLANS[key] = plan
    return plan


def _grow_static(drafter, shape: StaticTree | None, ctx: DraftContext):
    """A fixed tree of ranks: a node with rank path (…, r) holds its parent's r-th most likely token. Levels are
    drafted in order; only nodes with children are fed to the drafter. No host sync, no host→device copy."""
    plan = _static_plan(shape, drafter.vocab_size, drafter.pending.device)
    tokens = torch.empty(plan.parents.shape[0], dtype=torch.long, device=plan.parents.device)
    tokens[0] = ctx.ids[0, ctx.length - 1]
    warped = [ctx.warp(ctx.ids, drafter.pending, ctx.length)]  # the root's row, then each fed node's
    rows = []
    for level, step in enumerate(plan.levels, start=1):
        ranked = torch.cat(warped)[step.parent_rows].topk(step.width, dim=-1).indices  # [q, width]
        tokens[step.nodes] = ranked.gather(1, step.ranks).squeeze(1)
        if step.feed is None:
            continue
        level_rows = _feed(drafter, tokens[step.feed], torch.full_like(step.feed, level), step.tree_part)
        rows.append(level_rows)
        warped.append(warp_at_nodes(ctx.warp, ctx.ids, ctx.length, level_rows, tokens, plan.parents, step.feed))
    rows = torch.cat(rows) if rows else drafter.pending.new_zeros((0, drafter.pending.shape[-1]))
    depth = len(plan.levels)
    tree = TokenTree(tokens, plan.parents, plan.depths, depth, None, [_source(plan.local, drafter.pending, rows)])
    return tree, rows


def _grow_chains(drafter, k: int, depth: int, ctx: DraftContext):
    """``k`` chains sampled independently from the drafter's warped distribution (SpecInfer's multi-draft; under
    greedy verification they are simply diverse guesses). Chain c's node at level l is node ``1 + (l − 1)k + c``;
    duplicates are left for :func:`~..trees.merge_trees` to merge. Each node's one trial carries the distribution it was
    sampled from."""
    device = drafter.pending.device
    n = 1 + k * depth
    node = torch.arange(n, device=device)
    parents = torch.where(node > k, node - k, 0)
    parents[0] = -1
    depths = (node + k - 1) // k
    tokens = torch.empty(n, dtype=torch.long, device=device)
    tokens[0] = ctx.ids[0, ctx.length - 1]
    probs = [torch.softmax(ctx.warp(ctx.ids, drafter.pending, ctx.length).float(), dim=-1)]  # q rows: root, then slots
    tokens[1 : k + 1] = torch.multinomial(probs[0][0], k, replacement=True, generator=ctx.generator)
    rows, chain = [], torch.arange(k, device=device)
    for level in range(1, depth):
        level_nodes = 1 + (level - 1) * k + chain
        tree_part = torch.zeros((k, level * k), dtype=torch.bool, device=device)
        for earlier in range(level):
            tree_part[chain, earlier * k + chain] = True  # a chain sees its own earlier nodes only
        level_rows = _feed(drafter, tokens[level_nodes], torch.full((k,), level, device=device), tree_part)
        rows.append(level_rows)
        warped = warp_at_nodes(ctx.warp, ctx.ids, ctx.length, level_rows, tokens, parents, level_nodes)
        level_probs = torch.softmax(warped.float(), dim=-1)
        probs.append(level_probs)
        tokens[level_nodes + k] = torch.multinomial(level_probs, 1, generator=ctx.generator).view(-1)
    # Trials: the root tries its k children with q row 0; node (c, l) tries (c, l + 1) with its own row.
    child = torch.where(node + k < n, node + k, -1)
    child[0] = -1
    child = child.view(-1, 1)
    q_row = torch.where(child >= 0, node.view(-1, 1), -1)  # node i's q row is i (root 0, then slot s at 1 + s)
    root_trials = torch.full((n, k), -1, dtype=torch.long, device=device)
    root_trials[0] = chain + 1
    root_rows = torch.full((n, k), -1, dtype=torch.long, device=device)
    root_rows[0] = 0
    trials = Trials(torch.cat([root_trials, child], dim=1), torch.cat([root_rows, q_row], dim=1), torch.cat(probs))
    rows = torch.cat(rows) if rows else drafter.pending.new_zeros((0, drafter.pending.shape[-1]))
    local = torch.where((node >= 1) & (node <= (depth - 1) * k), node - 1, -1)
    return TokenTree(tokens, parents, depths, depth, trials, [_source(local, drafter.pending, rows)]), rows
