"""fp32 linears on the CPU through oneDNN with prepacked weights: what makes verifying K + 1 tokens cheap on CPUs
where torch's default fp32 GEMM (MKL) is not.

On a 2-core AMD EPYC (AVX2, no AVX-512) torch 2.13's ``F.linear`` in fp32 gets no weight reuse from extra rows: a
1536 × 151936 LM head costs 83 ms for 1 row, 167 ms for 2 and 368 ms for 17, so a target forward over 17 tokens costs
3.8 plain steps and speculation hardly pays. oneDNN with the weight reordered once for a batch of ~17 rows costs
57–65 / 69 / 139 ms there, and a whole Qwen2.5-1.5B forward 400–435 ms for 1 token (MKL 650) and 1.04–1.07 s for 17
(MKL 2.46 s): bench/onednn_linears.py measures it. CPUs with native bf16 already run bf16 linears through oneDNN;
this is for fp32 models.

The results equal ``F.linear``'s up to fp32 rounding (another summation order, ~1e-6 relative): apply it to the
target itself, so that ``target.generate()`` and speculative decoding run the same arithmetic and greedy outputs
stay identical (they are compared with the patched target, as any GEMM change would be).
"""
from __future__ import annotations

import torch
from torch import nn

DEFAULT_BATCH_HINT = 17  # rows the weights are packed for: a verify of K_max + 1 = 17 tokens; 1 and 500 rows do well


def available() -> bool:
    """Whether this torch build has oneDNN's packed fp32 linear (CPU builds from PyPI do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class OneDNNLinear(nn.Module):
    """An ``nn.Linear`` (fp32, CPU) whose weight is prepacked for oneDNN; inference only.

    Parameters
    ----------
    linear : the layer; its weight is packed (a copy in oneDNN's layout) and the layer's dense weight is not kept
        (a weight tied to an embedding stays in the embedding).
    batch_hint : rows the packing is tuned for.

    Shapes: input ``[..., in_features]`` fp32 → output ``[..., out_features]`` fp32.
    """

    def __init__(self, linear: nn.Linear, batch_hint: int = DEFAULT_BATCH_HINT):
        super().__init__()
        weight = linear.weight.detach()
        if weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise ValueError(f"OneDNNLinear takes fp32 CPU layers, got {weight.dtype} on {weight.device} (bf16 linears "
                             "already run through oneDNN on CPUs with native bf16)")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint), persistent=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise TypeError(f"OneDNNLinear computes fp32 on the CPU, got a {x.dtype} input on {x.device}")
        rows = x.reshape(-1, self.in_features)
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def apply_onednn_linears(model: nn.Module, batch_hint: int = DEFAULT_BATCH_HINT) -> nn.Module:
    """Replace every fp32 CPU ``nn.Linear`` of ``model`` by a :class:`OneDNNLinear`, in place; returns the model.

    Other layers (quantized linears, bf16 layers, embeddings, norms) are left as they are. The model becomes
    inference-only (the packed weights carry no gradient) and its linears' weights are no longer in its
    ``state_dict``; save the model before patching. A model with no fp32 CPU linear is refused.

    Raises
    ------
    RuntimeError : this torch build has no oneDNN.
    ValueError : no fp32 CPU ``nn.Linear`` in the model (a bf16 or CUDA model).
    """
    if not available():
        raise RuntimeError("this torch build has no oneDNN (torch.backends.mkldnn): keep the default linears")
    # _modules, not named_children(): that one yields a layer registered under two names once
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent._modules.items()
             if type(child) is nn.Linear and child.weight.dtype == torch.float32 and child.weight.device.type == "cpu"]
    if not swaps:
        kinds = sorted({f"{m.weight.dtype} on {m.weight.device}" for m in model.modules() if type(m) is nn.Linear})
        raise ValueError(f"apply_onednn_linears needs fp32 CPU nn.Linear layers; this model has {kinds or 'none'}")
    packed: dict[int, OneDNNLinear] = {}  # a layer reached twice (shared modules) is packed once
    for parent, name, child in swaps:
        if id(child) not in packed:
            packed[id(child)] = OneDNNLinear(child, batch_hint)
        setattr(parent, name, packed[id(child)])
    return model
