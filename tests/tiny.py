"""Tiny random-init HF models for the CPU tests: targets of five architectures and drafters made from them.

Drafters share the target's vocabulary by construction: noisy copies (the target's weights plus Gaussian noise of a
chosen relative scale, so their quality order is known) and truncated copies (the first layers only: a smaller model).
"""
from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM, GemmaConfig, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

ARCHS = ("llama", "qwen2", "mistral", "gpt2", "gemma")


def tiny_config(arch: str, vocab: int = 97, hidden: int = 32, layers: int = 2, max_positions: int = 256):
    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=1, pad_token_id=None)
    if arch == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=max_positions, **common)
    llama_like = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=max_positions, **common)
    if arch == "llama":
        return LlamaConfig(**llama_like)
    if arch == "qwen2":
        return Qwen2Config(**llama_like)
    if arch == "mistral":
        return MistralConfig(sliding_window=None, **llama_like)
    if arch == "gemma":
        return GemmaConfig(head_dim=hidden // 4, **{**llama_like, "num_key_value_heads": 1})
    raise ValueError(arch)


def tiny_model(arch: str = "llama", seed: int = 0, init_std: float = 0.2, **kw):
    """A random-init model. A larger-than-default init makes logits peaked, so greedy text is not one token forever."""
    torch.manual_seed(seed)
    config = tiny_config(arch, **kw)
    config.initializer_range = init_std
    model = AutoModelForCausalLM.from_config(config).eval()
    return model


def noisy_copy(model, scale: float, seed: int = 0):
    """The model with N(0, (scale · std(param))²) added to every weight: a drafter of known quality."""
    clone = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in clone.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=gen) * p.std() * scale)
    return clone.eval()


def truncated_copy(model, layers: int = 1):
    """The model's first ``layers`` blocks with its embeddings and head: a smaller drafter of the same family."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "n_layer"):
        config.n_layer = layers
    else:
        config.num_hidden_layers = layers
    small = AutoModelForCausalLM.from_config(config).eval()
    small.load_state_dict(model.state_dict(), strict=False)
    return small


def drafter_zoo(target, seed: int = 0):
    """Three model drafters of mixed kinds: a good noisy copy, a poor noisy copy, a one-layer truncated copy."""
    return [noisy_copy(target, 0.05, seed + 1), noisy_copy(target, 0.6, seed + 2), truncated_copy(target, 1)]
