"""Draft trees: their shapes, the string spec, the flattened token tree, and what a model needs to score one.

A tree is verified in one forward of the target over all its nodes (ALGORITHMS.md §6). Every node must see the whole
committed prefix and its own ancestors, nothing else, and sit at its true position:

* a 4D attention mask ``[1, 1, n, past + n]`` (transformers ≥ 4.56 hands a 4D mask to the attention function as it is);
  ``sdpa`` takes a bool mask (True = attend), ``eager`` *adds* the mask to the scores, so a bool mask there would add
  0/1 instead of masking: it gets an additive float mask (0 / dtype min). Flash and flex attention take no dense mask
  and are refused with a clear error.
* ``position_ids = past + depth`` (RoPE and learned positions read the ids, never the mask).

Shapes (``tree=`` of ``hs.generate``, a string or one of the objects below):

================================== ====================================================================================
``"depth=5,topk=4,total=32"``      :class:`DynamicTree` (EAGLE-2), also ``"dynamic:depth=5,topk=4,total=32"``
``"static:depth=3,topk=2"``        :class:`StaticTree`, every node has the drafter's top-2 tokens as children, 3 levels
``"paths:[[0],[1],[0,0]]"``        :class:`StaticTree` from Medusa-style rank paths (``[0, 1]``: best token, its 2nd)
``"chains:k=4,depth=5"``           :class:`MultiDraft`, the chosen drafter samples 4 chains, merged (SpecInfer)
``"drafters:k=3,depth=5"``         :class:`MultiDraft`, the chosen drafter and the next 2 by policy weight, a chain each
``"shared:depth=5,topk=4,total=32"`` :class:`MultiDraft`, the policy's weights share 32 tree tokens among drafters
================================== ====================================================================================

``depth`` defaults to ``draft_len``; ``topk`` to 4; ``total`` to 32; ``k`` to 4 (chains) or 2 (drafters). A drafter that
cannot grow a tree (the n-gram drafter, or any drafter without ``propose_tree``) contributes its single chain.
TapOut's stopping rules end the chosen drafter's chain or dynamic tree early (a tree is judged on its best frontier
node); static trees and sampled chains ignore them.

Learning with trees (ALGORITHMS.md §3). Full information stays what it is for chains (every drafter's logits on the
true prefix after each round); only γ changes. For top-L trees (static, dynamic, shared) γ_s[i] is the target's mass on
drafter i's top-L tokens (``topl``; greedy: 1{argmax p ∈ TopL(q_i)}), L = the tree's ``topk`` (most children per node,
at most 8). A node with deterministic children accepts one of them exactly when the token the target emits there is
among them, so along the emitted path the chain estimator ``1 + Σ_k Π_{j<k} γ_{s+j}`` of the expected-length loss is the
expected accepted length of a *full* top-L tree of that depth (exact under greedy decoding; under sampling the same
one-step counterfactual as for chains); the learner keeps it unchanged. A dynamic tree keeps only ``total`` of those
nodes, so for it the estimate is optimistic (it ignores the pruning), but it still ranks drafters by how well their
top-L sets cover the target, which is what a tree needs. Chain-based multi-drafts (``chains``, ``drafters``) keep
the chain γ.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace

import torch

MAX_NODES = 4096  # a tree larger than this is almost surely a typo (static:depth=8,topk=8 has 19M nodes)
_UNSUPPORTED_ATTN = ("flash", "flex", "paged")


# ----------------------------------------------------------------------------------------------------------------------
# Shapes
@dataclass(frozen=True)
class StaticTree:
    """A fixed tree of ranks (Medusa "choices").

    Parameters
    ----------
    paths : tuple of rank paths; ``(r_1, …, r_d)`` is the node reached by the drafter's ``r_1``-th most likely token,
        then the ``r_2``-th most likely after it, … (ranks from 0). Every prefix of a path must be a path too.
    """

    paths: tuple

    def __post_init__(self):
        paths = tuple(sorted({tuple(int(r) for r in p) for p in self.paths}, key=lambda p: (len(p), p)))
        if not paths:
            raise ValueError("a static tree needs at least one path")
        if len(paths) > MAX_NODES:
            raise ValueError(f"this static tree has {len(paths)} nodes; the most is {MAX_NODES}")
        known = set(paths)
        for p in paths:
            if not p or min(p) < 0:
                raise ValueError(f"bad tree path {list(p)}: paths are non-empty lists of ranks >= 0")
            if len(p) > 1 and p[:-1] not in known:
                raise ValueError(f"tree path {list(p)} has no parent path {list(p[:-1])}: list every prefix of a path")
        object.__setattr__(self, "paths", paths)

    @classmethod
    def full(cls, depth: int, topk: int) -> "StaticTree":
        """Every node has the top ``topk`` tokens as children, ``depth`` levels (topk + topk² + … nodes)."""
        _positive(depth=depth, topk=topk)
        if sum(topk**d for d in range(1, depth + 1)) > MAX_NODES:
            raise ValueError(f"static:depth={depth},topk={topk} has more than {MAX_NODES} nodes: use a dynamic tree "
                             f"(depth={depth},topk={topk},total=...) to keep the best ones")
        level, paths = [()], []
        for _ in range(depth):
            level = [p + (r,) for p in level for r in range(topk)]
            paths += level
        return cls(tuple(paths))

    @property
    def depth(self) -> int:
        return max(len(p) for p in self.paths)

    @property
    def top_l(self) -> int:
        """The most children a node has (the L of the top-L counterfactual γ)."""
        return max(p[-1] for p in self.paths) + 1

    def pruned(self, depth: int) -> "StaticTree | None":
        """The paths no deeper than ``depth`` (None when nothing is left)."""
        kept = tuple(p for p in self.paths if len(p) <= depth)
        return StaticTree(kept) if kept else None


@dataclass(frozen=True)
class DynamicTree:
    """EAGLE-2's dynamic tree: expand the ``topk`` best frontier nodes (by cumulative log-probability) with their
    ``topk`` best children for ``depth`` levels, then keep the ``total`` best nodes.

    ``depth=None`` takes the generation's ``draft_len``.
    """

    depth: int | None = None
    topk: int = 4
    total: int = 32

    def __post_init__(self):
        _positive(depth=self.depth, topk=self.topk, total=self.total)

    @property
    def top_l(self) -> int:
        return self.topk


@dataclass(frozen=True)
class SampledChains:
    """``k`` chains sampled independently from one drafter (drafter-level shape of :class:`MultiDraft` ``chains``)."""

    k: int = 4


MULTI_SOURCES = ("chains", "drafters", "shared")


@dataclass(frozen=True)
class MultiDraft:
    """Several drafts merged into one token tree and verified together.

    Parameters
    ----------
    source : ``"chains"``: the chosen drafter samples ``k`` chains (SpecInfer); ``"drafters"``: the chosen drafter and
        the ``k − 1`` next ones by the policy's weights propose a chain each; ``"shared"``: every drafter grows a
        dynamic tree with a share of ``total`` tokens proportional to its policy weight (ours, beyond the papers).
    depth : levels (None = ``draft_len``).
    k : chains (``chains``) or drafters (``drafters``).
    topk, total : the dynamic trees' parameters (``shared``).
    """

    source: str = "chains"
    depth: int | None = None
    k: int = 4
    topk: int = 4
    total: int = 32

    def __post_init__(self):
        if self.source not in MULTI_SOURCES:
            raise ValueError(f"unknown multi-draft source {self.source!r}; expected one of {MULTI_SOURCES}")
        _positive(depth=self.depth, k=self.k, topk=self.topk, total=self.total)

    @property
    def top_l(self) -> int | None:
        # Chains are verified one sample at a time: the chain γ (tv / greedy) is their per-draft counterfactual.
        return self.topk if self.source == "shared" else None


TreeShape = (StaticTree, DynamicTree, MultiDraft)


def _positive(**values) -> None:
    for name, value in values.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"tree {name} must be an integer >= 1, got {value!r}")


def with_depth(shape, draft_len: int):
    """``shape`` with an unset depth filled in from ``draft_len``."""
    if isinstance(shape, (DynamicTree, MultiDraft)) and shape.depth is None:
        if draft_len < 1:
            raise ValueError("a tree without depth= takes draft_len as its depth, but draft_len is 0")
        return replace(shape, depth=draft_len)
    return shape


# ----------------------------------------------------------------------------------------------------------------------
# The string spec
_KEYS = {
    "dynamic": ("depth", "topk", "total"),
    "static": ("depth", "topk"),
    "chains": ("depth", "k"),
    "drafters": ("depth", "k"),
    "shared": ("depth", "topk", "total"),
}
_SPEC_HELP = ('write e.g. "depth=5,topk=4,total=32", "static:depth=3,topk=2", "paths:[[0],[1],[0,0]]", '
              '"chains:k=4,depth=5", "drafters:k=3,depth=5" or "shared:depth=5,topk=4,total=32"')


def max_nodes(shape, n_drafters: int) -> int:
    """The most draft nodes a round with ``shape`` (depth resolved) feeds at once: the target verifies at most this
    many after the root, and a drafter growing it feeds at most this many slots (the room a static cache needs)."""
    depth = shape.depth
    growth = max(depth - 1, 0) * getattr(shape, "topk", 0)
    if isinstance(shape, DynamicTree):
        return max(shape.total, growth)
    if isinstance(shape, StaticTree):
        return len(shape.paths)
    if shape.source == "chains":
        return shape.k * depth
    if shape.source == "drafters":
        return min(shape.k, n_drafters) * depth
    return max(shape.total, growth)  # shared: the shares add up to total; each grower feeds at most its own tree


def parse_tree(spec):
    """A tree shape from ``tree=``: None (chain), a shape object, or a string (see the module docstring).

    Raises
    ------
    ValueError : a string that does not parse, naming what is wrong.
    TypeError : anything else.
    """
    if spec is None or isinstance(spec, TreeShape):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"tree must be None, a string spec or a tree shape object, got {type(spec).__name__}")
    text = spec.strip()
    if text.lower() in ("", "chain", "none"):
        return None
    kind, sep, body = text.partition(":")
    if not sep:
        kind, body = "dynamic", text
    kind = kind.strip().lower()
    if kind == "paths":
        try:
            paths = json.loads(body)
        except json.JSONDecodeError as err:
            raise ValueError(f"bad tree spec {spec!r}: the paths are not a JSON list of lists ({err.msg})") from None
        if not isinstance(paths, list) or not all(isinstance(p, list) and all(isinstance(r, int) for r in p)
                                                  for p in paths):
            raise ValueError(f"bad tree spec {spec!r}: paths must be a list of lists of ranks, e.g. [[0],[1],[0,0]]")
        return StaticTree(tuple(tuple(p) for p in paths))
    if kind not in _KEYS:
        raise ValueError(f"bad tree spec {spec!r}: unknown kind {kind!r}; {_SPEC_HELP}")
    values = {}
    for item in filter(None, (s.strip() for s in body.split(","))):
        match = re.fullmatch(r"([a-z_]+)\s*=\s*(-?\d+)", item)
        if match is None:
            raise ValueError(f"bad tree spec {spec!r}: {item!r} is not key=integer; {_SPEC_HELP}")
        key, value = match.group(1), int(match.group(2))
        key = {"total_tokens": "total", "branching": "topk", "top_k": "topk"}.get(key, key)
        if key not in _KEYS[kind]:
            raise ValueError(f"bad tree spec {spec!r}: {kind} trees take {', '.join(_KEYS[kind])}, not {key!r}")
        values[key] = value
    if kind == "dynamic":
        return DynamicTree(**values)
    if kind == "static":
        if "depth" not in values or "topk" not in values:
            raise ValueError(f"bad tree spec {spec!r}: a static tree needs depth= and topk=")
        return StaticTree.full(values["depth"], values["topk"])
    if kind == "drafters":
        values.setdefault("k", 2)
    return MultiDraft(source=kind, **values)


# ----------------------------------------------------------------------------------------------------------------------
# The flattened token tree
@dataclass
class Trials:
    """Sampled children: per node, the ordered proposals that recursive rejection tries (ALGORITHMS.md §6).

    Attributes
    ----------
    child : LongTensor ``[n, T]``, the child node each trial proposes (−1 = no trial).
    q_row : LongTensor ``[n, T]``, the row of ``q`` the trial's token was sampled from (−1 = deterministic: one-hot q).
    q : Tensor ``[R, V]`` fp32, the drafters' warped distributions, or None when every trial is deterministic.
    """

    child: torch.Tensor
    q_row: torch.Tensor
    q: torch.Tensor | None


@dataclass
class TreeSource:
    """What one drafter put into a tree, and how to find its state again after verification.

    Attributes
    ----------
    drafter : the drafter's index in the pool (None until the speculation strategy fills it in).
    local : LongTensor ``[n]``: per tree node, the drafter's cache slot of the node (``grown``) or the node's position
        in the drafter's chain (chains: 1 … k), −1 where the node is not the drafter's (or was never fed to it).
    grown : True when the drafter grew the tree itself (``propose_tree``) and must be told the accepted path
        (``settle_tree``); False for a chain from ``propose``, committed like any chain.
    beliefs : the drafter's distributions at the contexts it drafted from (:class:`~.drafters.base.Beliefs`, rows
        ``[r, V]`` or tokens ``[r]``), for MetaSD's block reward.
    context : LongTensor ``[r]``, the tree node each belief row was computed after (−1 = pruned from the tree).
    """

    drafter: int | None
    local: torch.Tensor
    grown: bool
    beliefs: object = None
    context: torch.Tensor | None = None


@dataclass
class TokenTree:
    """A draft tree flattened in topological order (parents before children). Node 0 is the root: the last committed
    token, already known to be right; the other nodes are draft tokens.

    Invariant: siblings carry distinct tokens (merging deduplicates), so "the child whose token is x" is well defined.

    Attributes
    ----------
    tokens : LongTensor ``[n]`` on the models' device.
    parents : LongTensor ``[n]``, ``parents[0] = −1``.
    depths : LongTensor ``[n]``, ``depths[0] = 0``.
    depth : host int ≥ every node's depth (the most draft tokens a round can accept).
    trials : :class:`Trials` when some children were sampled from a drafter; None when every child is a deterministic
        proposal (top-k, ranks, greedy chains): then q is one-hot and verification needs no q at all.
    sources : one :class:`TreeSource` per drafter that contributed.
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    depths: torch.Tensor
    depth: int
    trials: Trials | None = None
    sources: list = field(default_factory=list)
    _ancestors: torch.Tensor | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        """Nodes, the root included."""
        return int(self.tokens.shape[0])

    def ancestors(self) -> torch.Tensor:
        """BoolTensor ``[n, n]``: ``[i, j]`` is True when node j is node i or one of its ancestors (the tree part of the
        attention mask). Built on device by ``depth`` pointer-jumping steps: no host sync."""
        if self._ancestors is None:
            n = self.size
            anc = torch.eye(n, dtype=torch.bool, device=self.tokens.device)
            up = self.parents
            for _ in range(self.depth):
                valid = up >= 0
                anc |= torch.nn.functional.one_hot(up.clamp(min=0), n).bool() & valid[:, None]
                up = torch.where(valid, self.parents[up.clamp(min=0)], up)
            self._ancestors = anc
        return self._ancestors

    def position_ids(self, root_position: int) -> torch.Tensor:
        """LongTensor ``[1, n]``: each node's position, the root sitting at ``root_position``."""
        return (self.depths + root_position).view(1, -1)

    def paths(self) -> list[list[int]]:
        """Root-to-leaf paths as lists of node indices (host; for inspection and tests)."""
        parents = self.parents.tolist()
        has_child = {p for p in parents if p >= 0}
        out = []
        for leaf in (i for i in range(self.size) if i not in has_child):
            path, node = [], leaf
            while node >= 0:
                path.append(node)
                node = parents[node]
            out.append(path[::-1])
        return out


def tree_attention_mask(model, allowed: torch.Tensor) -> torch.Tensor:
    """The 4D mask ``[1, 1, q, kv]`` that makes ``model`` attend where ``allowed [q, kv]`` is True.

    ``sdpa`` reads a bool mask; ``eager`` (and custom attention functions, by transformers' convention) adds the mask
    to the scores, so they get 0 where allowed and the dtype's minimum elsewhere.
    """
    impl = str(getattr(model.config, "_attn_implementation", None) or "eager")
    if impl == "sdpa":
        return allowed[None, None]
    if any(impl.startswith(prefix) for prefix in _UNSUPPORTED_ATTN):
        raise ValueError(f"tree verification needs a dense 4D attention mask, which attn_implementation={impl!r} "
                         "does not take: load the model with attn_implementation='sdpa' or 'eager' to use tree=")
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[None, None]


def check_tree_attention(model, what: str) -> None:
    """Raise early (before any work) when ``model`` cannot take a tree mask."""
    impl = str(getattr(model.config, "_attn_implementation", None) or "eager")
    if any(impl.startswith(prefix) for prefix in _UNSUPPORTED_ATTN):
        raise ValueError(f"{what} uses attn_implementation={impl!r}, which takes no dense 4D attention mask: load it "
                         "with attn_implementation='sdpa' or 'eager' to use tree=")


def prefix_mask(past: int, tree_part: torch.Tensor) -> torch.Tensor:
    """``[q, past + t]``: every query sees the whole cached prefix, then ``tree_part [q, t]``."""
    q = tree_part.shape[0]
    return torch.cat([torch.ones((q, past), dtype=torch.bool, device=tree_part.device), tree_part], dim=1)


def chain_tree(root: torch.Tensor, tokens: torch.Tensor, probs: torch.Tensor | None) -> TokenTree:
    """A chain draft ``tokens [k]`` (sampled from ``probs [k, V]``, or deterministic) as a one-branch tree."""
    k = int(tokens.shape[0])
    device = tokens.device
    nodes = torch.arange(k + 1, device=device)
    trials = None
    if probs is not None and k:
        child = torch.full((k + 1, 1), -1, dtype=torch.long, device=device)
        child[:k, 0] = nodes[1:]
        q_row = child.clone()
        q_row[:k, 0] = nodes[:k]
        trials = Trials(child, q_row, probs.float())
    return TokenTree(torch.cat([root.view(1), tokens]), nodes - 1, nodes, k, trials)


def warp_at_nodes(warp, ids: torch.Tensor, length: int, rows: torch.Tensor, tokens: torch.Tensor,
                  parents: torch.Tensor, nodes: torch.Tensor | None = None) -> torch.Tensor:
    """Warp logits ``rows [r, V]`` computed after tree nodes, each with its own prefix.

    Row j was computed after node ``nodes[j]`` (default: row j after node j) of the tree given by ``tokens`` and
    ``parents`` (node 0 = the root = ``ids[0, length − 1]``). Position-free processors (temperature, top-k, top-p, …)
    warp every row in one call; the others see each node's exact prefix (committed text + the node's path), at the
    cost of a host read of the tree.
    """
    if warp.position_free:
        return warp(ids, rows, length)
    parents_h, tokens_h = parents.tolist(), tokens.tolist()
    nodes_h = list(range(rows.shape[0])) if nodes is None else nodes.tolist()
    out = []
    for j, node in enumerate(nodes_h):
        path = []
        while node > 0:
            path.append(tokens_h[node])
            node = parents_h[node]
        prefix = torch.cat([ids[:, :length], torch.tensor([path[::-1]], dtype=ids.dtype, device=ids.device)], dim=1)
        out.append(warp(prefix, rows[j : j + 1], prefix.shape[1]))
    return torch.cat(out)


def merge_trees(trees: list[TokenTree]) -> TokenTree:
    """Merge drafts that share the root into one tree (multi-draft).

    Nodes with the same parent and token become one node (their K/V would be identical), whose children are the union
    of the drafts' children; each child proposal becomes a trial of the merged parent, in the drafts' order (earlier
    drafts are tried first). Deterministic proposals of a token already proposed deterministically are dropped (a
    second one-hot trial of a rejected token can never be accepted). Costs one host read of the drafts' structure.

    Parameters
    ----------
    trees : drafts rooted at the same committed token; their sources are carried over.
    """
    device = trees[0].tokens.device
    parts = []
    for t in trees:
        parts += [t.tokens, t.parents]
        if t.trials is not None:
            parts += [t.trials.child.reshape(-1), t.trials.q_row.reshape(-1)]
        parts += [s.local for s in t.sources]
    flat = torch.cat([p.to(device=device, dtype=torch.long) for p in parts]).tolist()  # the one host read

    tokens, parents, depths = [int(flat[0])], [-1], [0]
    node_of: dict[tuple[int, int], int] = {}
    trials: list[list[tuple[int, int]]] = [[]]
    q_parts, q_offset, maps, locals_host, at = [], 0, [], [], 0
    for t in trees:
        n = t.size
        tok, par = flat[at : at + n], flat[at + n : at + 2 * n]
        at += 2 * n
        mapping = [0] * n
        for i in range(1, n):
            parent = mapping[par[i]]
            key = (parent, tok[i])
            if key not in node_of:
                node_of[key] = len(tokens)
                tokens.append(tok[i])
                parents.append(parent)
                depths.append(depths[parent] + 1)
                trials.append([])
            mapping[i] = node_of[key]
        if t.trials is None:
            edges = [(mapping[par[i]], mapping[i], -1) for i in range(1, n)]
        else:
            width = t.trials.child.shape[1]
            child, q_row = flat[at : at + n * width], flat[at + n * width : at + 2 * n * width]
            at += 2 * n * width
            edges = [(mapping[j // width], mapping[c], r + q_offset if r >= 0 else -1)
                     for j, (c, r) in enumerate(zip(child, q_row)) if c >= 0]
            q_parts.append(t.trials.q)
            q_offset += int(t.trials.q.shape[0])
        for parent, child_node, row in edges:
            if row >= 0 or (child_node, -1) not in trials[parent]:
                trials[parent].append((child_node, row))
        maps.append(mapping)
        locals_host.append([])
        for _ in t.sources:
            locals_host[-1].append(flat[at : at + n])
            at += n

    # Everything the device needs goes over in one host→device copy, then is cut into views.
    size = len(tokens)
    sampled = any(row >= 0 for node in trials for _, row in node)
    width = max(len(node) for node in trials) if sampled else 0
    child = [[-1] * width for _ in range(size)]
    q_row = [[-1] * width for _ in range(size)]
    for i, node in enumerate(trials if sampled else ()):
        for s, (c, row) in enumerate(node):
            child[i][s], q_row[i][s] = c, row
    host = tokens + parents + depths + sum(child, []) + sum(q_row, [])
    for t, mapping, local_lists in zip(trees, maps, locals_host):
        host += mapping
        for local in local_lists:
            merged_local = [-1] * size
            for i in range(t.size):  # duplicates hold identical K/V: the first one the drafter fed will do
                if merged_local[mapping[i]] < 0:
                    merged_local[mapping[i]] = local[i]
            host += merged_local
    flat = torch.tensor(host, dtype=torch.long).to(device)
    cut = iter(torch.split(flat, [size] * 3 + [size * width] * 2 + [len(h) for h in _chunks(trees, maps, size)]))
    merged_tokens, merged_parents, merged_depths = next(cut), next(cut), next(cut)
    child_dev, q_row_dev = next(cut).view(size, width), next(cut).view(size, width)
    merged_trials = Trials(child_dev, q_row_dev, torch.cat(q_parts).float()) if sampled else None
    sources = []
    for t in trees:
        map_dev = next(cut)
        for src in t.sources:
            context = None
            if src.context is not None:
                context = torch.where(src.context >= 0, map_dev[src.context.clamp(min=0)], src.context)
            sources.append(replace(src, local=next(cut), context=context))
    return TokenTree(merged_tokens, merged_parents, merged_depths, max(depths), merged_trials, sources)


def _chunks(trees, maps, size):
    """The lengths of the per-draft parts of :func:`merge_trees`' host buffer, in order (as placeholders)."""
    for t, mapping in zip(trees, maps):
        yield mapping
        for _ in t.sources:
            yield range(size)
