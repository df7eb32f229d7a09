"""fp32 linears through oneDNN (hedgespec_fast/onednn.py): equal to F.linear (its plain-torch twin) up to fp32
rounding over row counts, odd sizes, bias and strided inputs; applied in place to what it can take and refusing what
it cannot; a patched target's speculative output is its own generate()'s."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from tiny import noisy_copy, tiny_model

import hedgespec_fast as hs
from hedgespec_fast.modeling import vocab_size
from hedgespec_fast.onednn import OneDNNLinear, apply_onednn_linears, available

pytestmark = pytest.mark.skipif(not available(), reason="this torch build has no oneDNN")
PROMPT = torch.tensor([[3, 4, 5, 6, 3, 4]])


@pytest.mark.parametrize("rows", [1, 2, 17, 70])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("size_in, size_out", [(37, 53), (64, 1000)])
@pytest.mark.parametrize("batch_hint", [1, 17])
def test_onednn_linear_matches_its_twin(rows, bias, size_in, size_out, batch_hint):
    torch.manual_seed(rows)
    linear = nn.Linear(size_in, size_out, bias=bias)
    layer = OneDNNLinear(linear, batch_hint)
    x = torch.randn(2, rows, size_in)
    out = layer(x)
    assert out.shape == (2, rows, size_out) and out.dtype == torch.float32
    torch.testing.assert_close(out, linear(x), atol=1e-5, rtol=1e-5)
    strided = torch.randn(rows, 3 * size_in)[:, ::3]  # a non-contiguous view, as a model's slices are
    torch.testing.assert_close(layer(strided), linear(strided), atol=1e-5, rtol=1e-5)


def test_wrong_inputs_are_refused():
    layer = OneDNNLinear(nn.Linear(8, 4))
    with pytest.raises(TypeError, match="fp32 on the CPU, got a torch.bfloat16 input"):
        layer(torch.randn(2, 8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="fp32 CPU layers, got torch.bfloat16"):
        OneDNNLinear(nn.Linear(8, 4).to(torch.bfloat16))
    with pytest.raises(ValueError, match=r"fp32 CPU nn.Linear layers; this model has \['torch.bfloat16 on cpu'\]"):
        apply_onednn_linears(nn.Sequential(nn.Linear(8, 4).to(torch.bfloat16)))
    with pytest.raises(ValueError, match="this model has none"):
        apply_onednn_linears(nn.Sequential(nn.ReLU()))


def test_apply_swaps_in_place_and_keeps_the_rest():
    shared = nn.Linear(6, 6)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.LayerNorm(6))
    x = torch.randn(3, 6)
    expected = model(x)
    assert apply_onednn_linears(model) is model
    assert isinstance(model[0], OneDNNLinear) and model[0] is model[2]  # a shared layer is packed once
    assert isinstance(model[3], nn.LayerNorm)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_tied_head_keeps_its_embedding():
    model = tiny_model("llama")
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight  # tied, as Qwen2.5's are
    embedding = model.get_input_embeddings().weight.detach().clone()
    vocab = vocab_size(model)
    logits = model(PROMPT).logits
    apply_onednn_linears(model)
    assert isinstance(model.get_output_embeddings(), OneDNNLinear)
    assert torch.equal(model.get_input_embeddings().weight, embedding) and vocab_size(model) == vocab
    torch.testing.assert_close(model(PROMPT).logits, logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("policy", ["hedgespec", "hedgespec@objective=mat", "fixed:0"])
def test_patched_target_output_is_its_own_generate(policy):
    target = tiny_model("llama")
    drafter = noisy_copy(target, 0.1)
    apply_onednn_linears(target)
    apply_onednn_linears(drafter)
    expected = target.generate(PROMPT, do_sample=False, max_new_tokens=20, eos_token_id=None)
    out = hs.generate(target, PROMPT, drafters=[drafter, hs.NGramDrafter()], policy=policy, max_new_tokens=20,
                      eos_token_id=None, draft_len=4)
    assert torch.equal(out.sequences, expected)
    # the drafter was used and accepted tokens: verification ran through oneDNN (not asked of the throughput learner,
    # which rightly plays plain steps with a drafter that costs what the target does)
    if policy != "hedgespec":
        assert out.stats.mean_accepted > 1.0
