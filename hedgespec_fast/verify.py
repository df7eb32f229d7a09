"""Lossless chain verification (ALGORITHMS.md §1), entirely on device: one host read per round follows it.

Both functions return a packed LongTensor ``[k + 3]``: ``[n_accepted, nan_flag, e_0, …, e_k]`` where ``e_j`` is the
token the round emits at offset j; the round emits ``e_0 … e_{n_accepted}`` (the accepted draft tokens, then the
correction or bonus token). One ``.tolist()`` of it is the round's only required device→host sync.
"""
from __future__ import annotations

import torch


def _pack(n_accepted: torch.Tensor, target_warped: torch.Tensor, emitted: torch.Tensor) -> torch.Tensor:
    nan_flag = torch.isnan(target_warped).any().long().view(1)
    return torch.cat([n_accepted.view(1), nan_flag, emitted])


def verify_greedy(draft: torch.Tensor, target_warped: torch.Tensor) -> torch.Tensor:
    """Greedy: accept while the draft equals the target's argmax; emit the argmax at the first mismatch (or the bonus).

    Parameters
    ----------
    draft : LongTensor ``[k]``.
    target_warped : ``[k + 1, V]`` the target's processed logits after the prefix and after each draft token.
    """
    best = target_warped.argmax(dim=-1)  # [k+1]; accepted draft tokens equal it, so it is also the emitted row
    k = draft.shape[0]
    n_accepted = (draft == best[:k]).long().cumprod(dim=0).sum() if k else best.new_zeros(())
    return _pack(n_accepted, target_warped, best)


def verify_sampling(draft: torch.Tensor, draft_probs: torch.Tensor | None, target_warped: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
    """Speculative sampling: accept x̃_j with probability min(1, p_j(x̃_j)/q_j(x̃_j)); at the first rejection emit a
    sample of norm(max(0, p_j − q_j)); if all are accepted emit a bonus sample of p_{k}. The output is distributed
    exactly as the target's own sampling.

    Parameters
    ----------
    draft : LongTensor ``[k]``.
    draft_probs : ``[k, V]`` the distributions the draft was sampled from, or None for a deterministic (one-hot)
        proposal.
    target_warped : ``[k + 1, V]`` the target's warped logits.
    generator : sampling RNG (None = torch's global one).
    """
    k = draft.shape[0]
    p = torch.softmax(target_warped, dim=-1)  # [k+1, V]
    rows = torch.arange(k, device=p.device)
    p_draft = p[rows, draft]
    if draft_probs is None:
        q_draft = torch.ones_like(p_draft)
        residual = p[:k].clone()
        residual[rows, draft] = 0.0  # max(0, p − onehot(x̃))
    else:
        q_draft = draft_probs[rows, draft]
        residual = (p[:k] - draft_probs).clamp(min=0.0)
    u = torch.rand(k, generator=generator, device=p.device)
    accepted = u * q_draft < p_draft  # u < p/q without dividing by q
    n_accepted = accepted.long().cumprod(dim=0).sum() if k else torch.zeros((), dtype=torch.long, device=p.device)
    # A residual row with no mass can only sit where rejection is impossible: give it p so sampling stays defined.
    # Rows that are still empty come from NaN logits, which the packed flag reports to the host as an error.
    dist = torch.cat([residual, p[k:]], dim=0).nan_to_num(0.0)
    dist = torch.where(dist.sum(dim=-1, keepdim=True) > 0, dist, p.nan_to_num(0.0))
    dist = torch.where(dist.sum(dim=-1, keepdim=True) > 0, dist, torch.ones_like(dist))
    correction = torch.multinomial(dist, 1, generator=generator).view(-1)
    offsets = torch.arange(k + 1, device=p.device)
    padded = torch.cat([draft, draft.new_zeros(1)])
    emitted = torch.where(offsets == n_accepted, correction, padded)
    return _pack(n_accepted, target_warped, emitted)
