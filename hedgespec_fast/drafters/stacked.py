"""Drafters of one architecture and shape, run as one model: full information for the price of one forward.

Full information feeds the verified tokens to every drafter each round. When several drafters share a config (domain
experts fine-tuned from one base, the zoo's six 1-layer drafters), their forwards can be one: a copy of the
architecture whose batch rows are the members. Every layer that holds weights is swapped for a grouped one — row b
of the batch goes through member b's weights (``nn.Linear`` → a batched matmul, ``nn.Embedding`` → one lookup in
the stacked tables, any other weighted leaf such as an RMSNorm → ``torch.func.vmap`` over ``functional_call``) —
and everything else (attention, rotary embeddings, masks, the KV cache) is transformers' own code running on a batch
of G rows. Weights that are equal in every member (a shared embedding) stay one tensor.

A stack pays where a forward costs its launch and framework overhead rather than its weight traffic (small drafters,
CPUs, eager GPU decoding): G members cost about one forward. A memory-bound large drafter would cost G times as
much, which is why ``stack="auto"`` only stacks small models (:data:`AUTO_MAX_PARAMS`).

Drafting with a member feeds its draft tokens to every row (the rows stay in lockstep); each row's logits at the
accepted draft positions are then that member's beliefs on the true prefix, so evaluation only has the correction
token left to feed. Stacked members draft chains (in a draft tree they contribute their chain).
"""
from __future__ import annotations

import copy
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling import forward_rows
from .hf import HFDrafter

AUTO_MAX_PARAMS = 64_000_000
_IGNORED_CONFIG_KEYS = {"_name_or_path", "name_or_path", "transformers_version", "_commit_hash"}


class StackingError(ValueError):
    """These models cannot run as one stacked model (the reason says why)."""


def stack_signature(model) -> tuple | None:
    """What must be equal for two models to stack: class, config, parameter shapes, dtype, device (None: not an HF
    model)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    settings = {k: v for k, v in config.to_dict().items() if k not in _IGNORED_CONFIG_KEYS}
    shapes = tuple((n, tuple(p.shape), p.dtype, str(p.device)) for n, p in model.named_parameters())
    return type(model), repr(sorted(settings.items(), key=lambda kv: kv[0])), shapes


class GroupedLinear(nn.Module):
    """Row b of the input ``[G, T, in]`` through member b's ``nn.Linear``: one batched matmul."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight_t", weight.transpose(1, 2).contiguous())  # [G, in, out]
        self.register_buffer("bias", None if bias is None else bias.unsqueeze(1))  # [G, 1, out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight_t)
        return torch.baddbmm(self.bias, x, self.weight_t)


class GroupedEmbedding(nn.Module):
    """Row b of ``ids [G, T]`` looked up in member b's table: one lookup in the stacked tables."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        groups, vocab, _ = weight.shape
        self.register_buffer("table", weight.reshape(groups * vocab, -1))
        self.register_buffer("offsets", torch.arange(groups, device=weight.device).view(-1, 1) * vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids + self.offsets, self.table)


class VmappedLeaf(nn.Module):
    """Any other weighted leaf (norms, …): ``vmap`` of the member's module over its stacked weights and the rows."""

    def __init__(self, template: nn.Module, stacked: dict):
        super().__init__()
        self._template = [template]  # not a submodule: its own weights are never used
        self.names = list(stacked)
        for i, name in enumerate(self.names):
            self.register_buffer(f"w{i}", stacked[name])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = {name: getattr(self, f"w{i}") for i, name in enumerate(self.names)}
        template = self._template[0]

        def one(p, row):
            return torch.func.functional_call(template, p, (row.unsqueeze(0),)).squeeze(0)

        return torch.func.vmap(one)(params, x)


def stack_models(models: list) -> nn.Module:
    """One model whose batch row b computes ``models[b]`` (see the module docstring). Checked on a short random
    input against every member; raises :class:`StackingError` when the members differ in shape or the stack does
    not reproduce them."""
    if len(models) < 2:
        raise StackingError("stacking needs at least two models")
    signatures = [stack_signature(m) for m in models]
    if signatures[0] is None or any(s != signatures[0] for s in signatures[1:]):
        raise StackingError("the models differ in class, config, parameter shapes, dtype or device")
    base = models[0]
    stacked = copy.deepcopy(base).eval()
    for name, module in base.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if not own:
            continue
        members = [dict(m.get_submodule(name).named_parameters(recurse=False)) for m in models]
        if all(torch.equal(p[k], own[k]) for p in members[1:] for k in own):
            stacked.set_submodule(name, module)  # the same weights in every member: one shared layer
            continue
        weights = {k: torch.stack([p[k].detach() for p in members]) for k in own}
        if type(module) is nn.Linear:
            grouped = GroupedLinear(weights["weight"], weights.get("bias"))
        elif type(module) is nn.Embedding:
            grouped = GroupedEmbedding(weights["weight"])
        else:
            grouped = VmappedLeaf(module, weights)
        stacked.set_submodule(name, grouped)
    _check_stack(stacked, models)
    return stacked


@torch.no_grad()
def _check_stack(stacked, models) -> None:
    from ..cache import new_cache

    device = next(models[0].parameters()).device
    vocab = models[0].get_output_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (6,), generator=torch.Generator().manual_seed(0)).to(device)
    try:
        got = forward_rows(stacked, ids, new_cache(), 0, len(models)).float()
    except Exception as err:  # noqa: BLE001 - any failure means this architecture does not stack this way
        raise StackingError(f"the stacked forward failed: {type(err).__name__}: {err}") from err
    for b, model in enumerate(models):
        want = forward_rows(model, ids, new_cache(), 0, 1)[0].float()
        scale = 1.0 + float(want.abs().max())
        tolerance = 1e-4 if want.dtype == torch.float32 and models[0].dtype == torch.float32 else 5e-2
        if float((got[b] - want).abs().max()) > tolerance * scale:
            raise StackingError(f"the stacked forward does not reproduce member {b} (max difference "
                                f"{float((got[b] - want).abs().max()):.3g})")


_STACKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _fingerprint(models) -> tuple:
    """Identity and in-place version of every member's weights: a stack built from them is still theirs."""
    return tuple((id(m), tuple(p._version for p in m.parameters())) for m in models)


def cached_stack(models: list) -> nn.Module:
    """:func:`stack_models`, built once per tuple of model objects (kept while the first one lives) and rebuilt when
    any member's weights changed in place since."""
    key = _fingerprint(models)
    entry = _STACKS.get(models[0])
    if entry is None or entry[0] != key:
        entry = (key, stack_models(models))
        _STACKS[models[0]] = entry
    return entry[1]


class StackedDrafters(HFDrafter):
    """Several causal LMs of one shape as one drafter state whose rows are the members; :attr:`members` are the
    per-drafter views the pool indexes.

    Parameters
    ----------
    models : two or more transformers causal LMs with the same config and parameter shapes.
    names : their labels in stats.
    """

    def __init__(self, models: list, names: list[str] | None = None):
        names = names or [type(m).__name__ for m in models]
        super().__init__(cached_stack(models), name="+".join(names))
        self.rows = len(models)
        self.members = [StackedMember(self, row, name) for row, name in enumerate(names)]

    def propose_tree(self, shape, depth, ctx):  # pragma: no cover - members expose no propose_tree
        raise NotImplementedError("stacked drafters draft chains")


class StackedMember:
    """Drafter ``row`` of a :class:`StackedDrafters`: drafts from its row; the group prefills and commits."""

    def __init__(self, group: StackedDrafters, row: int, name: str):
        self.group, self.row, self.name = group, row, name
        self.vocab_size, self.max_context = group.vocab_size, group.max_context
        self.device, self.dtype = group.device, group.dtype

    @property
    def lag(self) -> int:
        return self.group.lag

    def propose(self, k: int, ctx):
        return self.group.propose(k, ctx, row=self.row)

    def check_compatible(self, target_vocab, device, dtype, needed_len, real_vocab=None) -> None:
        self.group.check_compatible(target_vocab, device, dtype, needed_len, real_vocab)
