"""Int8 drafters (hedgespec_fast/quantize.py): int8 weights with per-channel scales, both matmul paths equal to the
plain-torch twin (a linear with the dequantized weight), the model copy keeps what it must (tied embeddings, vocab),
and a drafter made this way leaves the output the target's."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from tiny import noisy_copy, tiny_model

import hedgespec_fast as hs
from hedgespec_fast.models import int8_copy
from hedgespec_fast.modeling import vocab_size
from hedgespec_fast.quantize import (KERNEL_ALIGN, SMALL_BATCH, DynamicInt8Head, Int8WeightLinear, dynamic_int8,
                                     int8_weights)

PROMPT = torch.tensor([[3, 4, 5, 6, 3, 4]])


def reference(layer: Int8WeightLinear, x: torch.Tensor) -> torch.Tensor:
    """The twin: fp32 x · (int8 · scale)ᵀ + b."""
    w = layer.weight_int8.float() * layer.scale.float()[:, None]
    b = None if layer.bias is None else layer.bias.float()
    return nn.functional.linear(x.float(), w, b)


@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 1e-4, 1e-4), (torch.bfloat16, 3e-2, 3e-2)])
@pytest.mark.parametrize("rows", [1, 3, SMALL_BATCH, SMALL_BATCH + 1, 70])  # both paths, on each side of the switch
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("size_in", [2 * KERNEL_ALIGN, 37])  # the int8 kernel's path; an odd size (the GEMM's)
def test_int8_linear_matches_its_twin(dtype, atol, rtol, rows, bias, size_in):
    torch.manual_seed(rows)
    linear = nn.Linear(size_in, 53, bias=bias)  # an odd output size
    layer = Int8WeightLinear.from_linear(linear, dtype)
    x = torch.randn(1, rows, size_in)
    out = layer(x)
    assert out.shape == (*x.shape[:-1], 53) and out.dtype == dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), reference(layer, x.to(dtype)), atol=atol, rtol=rtol)


def test_int8_weights_round_to_nearest_per_channel():
    linear = nn.Linear(40, 24)
    with torch.no_grad():
        linear.weight[3] *= 100.0  # an outlier row must not coarsen the others' grid (per-channel scales)
    layer = Int8WeightLinear.from_linear(linear, torch.float32)
    error = (layer.dequantized() - linear.weight).abs()
    assert (error <= layer.scale[:, None] / 2 + 1e-7).all()
    assert layer.weight_int8.dtype == torch.int8 and int(layer.weight_int8.abs().max()) <= 127
    others = torch.cat([layer.scale[:3], layer.scale[4:]])
    assert float(others.max()) < float(layer.scale[3]) / 20


def test_int8_copy_of_a_model_with_tied_embeddings():
    model = tiny_model("llama", seed=3)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight  # tied, as Qwen2.5-0.5B's are
    embedding = model.model.embed_tokens.weight.detach().clone()
    base = noisy_copy(model, 0.0, 0)
    copy = int8_weights(noisy_copy(model, 0.0, 0), torch.float32)
    assert isinstance(copy.get_output_embeddings(), DynamicInt8Head)
    assert vocab_size(copy) == vocab_size(model)
    assert not copy.config.tie_word_embeddings
    torch.testing.assert_close(copy.model.embed_tokens.weight, embedding)  # quantizing the head never touched it
    assert all(not isinstance(m, nn.Linear) or isinstance(m, DynamicInt8Head) for m in copy.model.modules())
    ids = torch.randint(0, vocab_size(model), (1, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = base(ids).logits, copy(ids).logits
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (want.argmax(-1) == got.argmax(-1)).float().mean() > 0.8  # an approximation, not a different model
    dynamic = dynamic_int8(noisy_copy(model, 0.0, 0))  # the fallback recipe leaves the embedding alone too
    torch.testing.assert_close(dynamic.model.embed_tokens.weight, embedding)
    assert not dynamic.config.tie_word_embeddings


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, "dynamic"])
def test_int8_drafter_keeps_the_output_the_targets(dtype):
    """Both int8 recipes (int8 weights in fp32 or bf16; torch's dynamic quantization, the fallback for CPUs without
    native bf16) as drafters of a tiny target: greedy output equal to target.generate()."""
    target = tiny_model("llama", seed=11)
    base = noisy_copy(target, 0.05, 4)
    drafter = dynamic_int8(base) if dtype == "dynamic" else int8_copy(base, dtype)
    ref = target.generate(PROMPT, do_sample=False, max_new_tokens=20, eos_token_id=None)
    out = hs.generate(target, PROMPT, drafters=[drafter, hs.NGramDrafter()], max_new_tokens=20, eos_token_id=None,
                      policy="fixed:0", draft_len=4)
    assert torch.equal(out.sequences, ref)
    assert out.stats.accepted_tokens > 0  # it drafts, and is right at times


def test_int8_copy_falls_back_to_dynamic_quantization_without_native_bf16(monkeypatch):
    """The int8-weight kernel is slow with fp32 activations: where the CPU has no native bf16, int8_copy (with no dtype)
    makes torch's dynamically quantized copy; with native bf16 (or an explicit dtype), int8 weights."""
    from hedgespec_fast import quantize

    def kinds(model):
        return {type(m).__name__ for m in model.modules()}

    monkeypatch.setattr(quantize, "native_bf16", lambda: False)
    assert "Int8WeightLinear" not in kinds(int8_copy(tiny_model("llama", seed=5)))
    assert "Int8WeightLinear" in kinds(int8_copy(tiny_model("llama", seed=5), torch.float32))
    monkeypatch.setattr(quantize, "native_bf16", lambda: True)
    copy = int8_copy(tiny_model("llama", seed=5))
    assert "Int8WeightLinear" in kinds(copy) and copy.model.embed_tokens.weight.dtype == torch.bfloat16
