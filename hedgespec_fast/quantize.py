"""Int8 copies of causal LMs for drafting on a CPU: int8 weights, activations left in the compute dtype.

Decoding a small model on a CPU is memory-bound, so an int8 copy drafts 1.6–1.8× as fast as a bf16 one. *How* it is
quantized decides whether its drafts are any good. Measured on the Qwen pool (Qwen2.5-Coder-0.5B teacher-forced on
the 1.5B target's greedy answers to Spec-Bench prompts, share of positions where its argmax is the target's token):

============  ====  ===================  =====================  =========================
category      bf16  dynamic int8 (all)   dynamic int8 (body)    int8 weights (this module)
============  ====  ===================  =====================  =========================
coding        0.95  0.80                 0.86                   0.97
writing       0.62  0.39                 0.39                   0.59
============  ====  ===================  =====================  =========================

``torch.ao`` dynamic quantization rounds every activation to int8 with one scale per tensor, and the body's
activations (outliers and all) do not survive that; int8 *weights* with one scale per output channel lose almost
nothing. So the body's linears become :class:`Int8WeightLinear` (``torch.ops.aten._weight_int8pack_mm``, the CPU
kernel behind gpt-fast's and torchao's int8 weight-only paths), while the LM head, whose per-tensor activation
rounding measured harmless and whose fbgemm GEMM is the fastest head here (896 × 151936, one token: 4.2 ms against
18 ms for the weight-only kernel and 20 ms in bf16), stays a dynamically quantized linear. torchao's
``Int8WeightOnlyConfig`` computes the same thing, but its eager CPU path dequantizes on every call (an 896 × 4864
layer, one token: 1.2 ms, against 0.2 ms here and 0.5 ms in bf16).

The weight-only kernel is a matrix-vector kernel: its time grows with the rows fed (0.2 ms for one token, 1.4 ms for
17, 20 ms for 300 on that layer), and dequantizing per call costs 2 ms, so inputs of more than ``SMALL_BATCH`` rows
(prompt prefill, a catch-up, an evaluation over several positions) are multiplied by a dequantized copy of the weight
kept beside the int8 one (a bf16 GEMM). Whole 0.5B forwards after 300 tokens, int8 kernel / bf16 copy: 1 row 70 /
109 ms, 4 rows 83 / 111, 6 rows 118 / 117, 16 rows 179 / 124. The copy costs the memory of the bf16 model's body;
the int8 weight halves what every drafting step reads.

The kernel is fast with bf16 activations only (fp32 activations: 1.5 ms for that layer, slower than an fp32 GEMM), so
on a CPU without avx512_bf16 :func:`int8_copy` falls back to :func:`dynamic_int8`, torch's dynamic quantization of
every linear: less agreement with the target, but the only int8 path that is faster than fp32 there.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

SMALL_BATCH = 5  # rows up to which the int8 matrix-vector kernel beats the bf16 copy's GEMM (measured, see above)
KERNEL_ALIGN = 32  # the kernel's inner size must be a multiple of this (torch 2.13 CPU: bf16 with K % 16 ≠ 0 and
# more than one row reads out of bounds and crashes); other layers take the dequantized GEMM


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (avx512_bf16 / AMX)."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe()) if probe is not None else False


def default_compute_dtype() -> torch.dtype:
    """bf16 where the CPU multiplies it natively, else fp32."""
    return torch.bfloat16 if native_bf16() else torch.float32


class Int8WeightLinear(nn.Module):
    """``y = x Wᵀ + b`` with ``W`` stored as int8 with one scale per output row (symmetric, round to nearest).

    Parameters
    ----------
    weight : ``[out, in]`` float weight to quantize.
    bias : ``[out]`` or None.
    dtype : the compute dtype (inputs are cast to it; outputs come out in it).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("weight_int8", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(dtype))
        self.register_buffer("weight", self.dequantized())  # for inputs of many rows (see the module's docstring)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (the scales'; ``module.to(dtype)`` moves it)."""
        return self.scale.dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16) -> "Int8WeightLinear":
        return cls(linear.weight, linear.bias, dtype)

    def dequantized(self) -> torch.Tensor:
        """The weight as the kernel sees it, ``[out, in]`` in the compute dtype."""
        return self.weight_int8.to(self.dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(self.dtype)
        if rows.shape[0] <= SMALL_BATCH and self.in_features % KERNEL_ALIGN == 0:
            y = torch.ops.aten._weight_int8pack_mm(rows.contiguous(), self.weight_int8, self.scale)
            y = y if self.bias is None else y + self.bias
        else:
            y = nn.functional.linear(rows, self.weight, self.bias)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.dtype}"


class DynamicInt8Head(nn.Module):
    """The LM head as a ``torch.ao`` dynamically quantized linear (fbgemm), fed fp32, returning fp32 logits."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        head = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
        head.weight = nn.Parameter(linear.weight.detach().float().clone())  # never the (tied) embedding itself
        if linear.bias is not None:
            head.bias = nn.Parameter(linear.bias.detach().float().clone())
        self.linear = _quantize_dynamic(nn.Sequential(head))[0]
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.float())


def int8_weights(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Quantize ``model`` in place: every ``nn.Linear`` of the body → :class:`Int8WeightLinear`, the LM head →
    :class:`DynamicInt8Head`; everything else (embeddings, norms) in ``dtype`` (default
    :func:`default_compute_dtype`). Returns the model, in eval mode."""
    dtype = default_compute_dtype() if dtype is None else dtype
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, nn.Linear):
        model.set_output_embeddings(DynamicInt8Head(head))
        if getattr(model.config, "tie_word_embeddings", False):  # the head has its own weights now: nothing to tie
            model.config.tie_word_embeddings = False
    model.to(dtype)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8WeightLinear.from_linear(child, dtype))
    return model.eval()


def dynamic_int8(model: nn.Module) -> nn.Module:
    """Quantize ``model`` in place with ``torch.ao`` dynamic quantization of every ``nn.Linear`` (weights and, per
    call, activations in int8; fp32 elsewhere): the int8 path for CPUs without native bf16. Returns the model, in eval
    mode. A tied LM head gets its own weight first, so quantizing it never touches the embedding."""
    model = model.float()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, nn.Linear) and getattr(model.config, "tie_word_embeddings", False):
        head.weight = nn.Parameter(head.weight.detach().clone())
        model.config.tie_word_embeddings = False
    return _quantize_dynamic(model).eval()


def _quantize_dynamic(module: nn.Module) -> nn.Module:
    """``torch.ao`` dynamic int8 quantization of every ``nn.Linear`` in ``module``, in place. torch marks the API
    deprecated for torchao, whose eager CPU paths are slower here (see the module's docstring): its warning is
    silenced here, and only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        return torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)


def int8_copy(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """An int8 drafter made from ``model`` (in place): :func:`int8_weights` in ``dtype`` (default bf16 where the CPU
    has it natively), or, with no ``dtype`` on a CPU without native bf16, :func:`dynamic_int8`."""
    if dtype is None and not native_bf16():
        return dynamic_int8(model)
    return int8_weights(model, dtype)


__all__ = ["Int8WeightLinear", "DynamicInt8Head", "int8_weights", "dynamic_int8", "int8_copy", "native_bf16",
           "default_compute_dtype", "SMALL_BATCH", "KERNEL_ALIGN"]
