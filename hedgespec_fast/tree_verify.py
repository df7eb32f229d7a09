"""Lossless verification of a token tree (ALGORITHMS.md §6), entirely on device: one host read per round follows it.

Every node i gets a *choice* c_i, the token the target emits after node i's prefix:

* greedy: c_i = argmax p_i;
* sampling, every child a deterministic proposal (top-k, ranks, greedy chains; q one-hot): c_i ~ p_i. This *is*
  recursive rejection with one-hot q (accept child x with p'(x), else zero it and renormalise p'): child x_j is
  accepted with probability Π_{l<j}(1 − p'_l(x_l)) · p'_j(x_j) = p(x_j), and when all are rejected the emitted token
  follows p with the children zeroed, i.e. p conditioned on "not a child". Drawing c_i ~ p_i and descending iff c_i is
  a child gives exactly those probabilities, with one multinomial for the whole tree;
* sampling with sampled children (:class:`~.trees.Trials`): the node's trials are tried in order with SpecInfer's rule,
  accept x_t with probability min(1, p'(x_t)/q_t(x_t)), else p' ← norm(max(0, p' − q_t)); c_i is the accepted child's
  token, or a sample of the final p' when every trial is rejected. Each trial is independent of the earlier ones, so
  the emitted token follows p whatever the number of trials.

Nodes' choices use independent randomness, so they are computed for all nodes at once. A node is on the accepted path
when every node from the root to it is the child its parent chose (siblings carry distinct tokens); the round emits the
choices along that path: the accepted draft tokens, then the correction or bonus token. The emitted sequence is the
target's own greedy continuation, or a sample of the target's distribution.
"""
from __future__ import annotations

import torch

from .trees import TokenTree


def verify_tree(tree: TokenTree, target_warped: torch.Tensor, do_sample: bool,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify ``tree`` against the target's warped logits after each of its nodes.

    Parameters
    ----------
    tree : the draft tree (``n`` nodes, root first).
    target_warped : ``[n, V]`` the target's processed logits after each node's prefix.
    do_sample : speculative sampling (True) or greedy.
    generator : sampling RNG (None = torch's global one).

    Returns
    -------
    packed : LongTensor ``[2 + 2(D + 1)]``: ``[n_accepted, nan_flag, e_0 … e_D, path_0 … path_D]``, D = ``tree.depth``;
        the round emits ``e_0 … e_{n_accepted}``; ``path_j`` is the accepted node at depth j (``path_0`` = root) for
        ``j ≤ n_accepted``, padding after.
    path : the ``path`` part of ``packed`` (a view), for gathering rows and KV on device.
    """
    depth = tree.depth
    if do_sample:
        choice = _sampled_choice(tree, _probabilities(target_warped), generator)
    else:
        choice = target_warped.argmax(dim=-1)
    chosen_by_parent = tree.tokens == choice[tree.parents.clamp(min=0)]
    chosen_by_parent[0] = True  # the root is committed text
    on_path = ~(tree.ancestors() & ~chosen_by_parent[None, :]).any(dim=-1)
    n_accepted = (tree.depths * on_path).max()
    order = torch.sort(torch.where(on_path, tree.depths, depth + 1), stable=True).indices[: depth + 1]
    nan_flag = torch.isnan(target_warped).any().long().view(1)
    packed = torch.cat([n_accepted.view(1), nan_flag, choice[order], order])
    return packed, packed[3 + depth :]


def _probabilities(target_warped: torch.Tensor) -> torch.Tensor:
    """softmax rows; rows left without mass (NaN logits, reported by the packed flag) become uniform so sampling stays
    defined."""
    probs = torch.softmax(target_warped.float(), dim=-1).nan_to_num(0.0)
    return torch.where(probs.sum(dim=-1, keepdim=True) > 0, probs, torch.ones_like(probs))


def _sampled_choice(tree: TokenTree, probs: torch.Tensor, generator) -> torch.Tensor:
    """c_i for every node (see the module docstring): a plain sample of p_i when every child is deterministic,
    else SpecInfer's recursive rejection over the node's trials, all nodes in parallel."""
    trials = tree.trials
    if trials is None:
        return torch.multinomial(probs, 1, generator=generator).view(-1)
    n, n_trials = trials.child.shape
    vocab = probs.shape[-1]
    residual = probs / probs.sum(dim=-1, keepdim=True)
    accepted_child = torch.full((n,), -1, dtype=torch.long, device=probs.device)
    uniforms = torch.rand((n, n_trials), generator=generator, device=probs.device)
    for t in range(n_trials):
        child, q_row = trials.child[:, t], trials.q_row[:, t]
        active = (child >= 0) & (accepted_child < 0)
        token = tree.tokens[child.clamp(min=0)]
        q = torch.nn.functional.one_hot(token, vocab).to(probs.dtype)
        if trials.q is not None:
            q = torch.where((q_row >= 0)[:, None], trials.q[q_row.clamp(min=0)], q)
        p_token = residual.gather(1, token[:, None]).squeeze(1)
        q_token = q.gather(1, token[:, None]).squeeze(1)
        accept = active & (uniforms[:, t] * q_token < p_token)  # u < p'/q without dividing by q
        accepted_child = torch.where(accept, child, accepted_child)
        rest = (residual - q).clamp(min=0.0)
        mass = rest.sum(dim=-1, keepdim=True)
        # An empty residual means p' ≤ q everywhere, where rejection is impossible: keep p'.
        rest = torch.where(mass > 0, rest / mass.clamp(min=1e-30), residual)
        residual = torch.where((active & ~accept)[:, None], rest, residual)
    fallback = torch.multinomial(residual, 1, generator=generator).view(-1)
    return torch.where(accepted_child >= 0, tree.tokens[accepted_child.clamp(min=0)], fallback)
