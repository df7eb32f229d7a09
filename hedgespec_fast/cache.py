"""KV-cache surgery that transformers' caches do not offer in a version-stable way.

Speculation rolls a cache back to the committed prefix after every round. ``DynamicCache.crop`` changed meaning
across transformers releases (an absolute length, later a negative count), so we slice the layers ourselves.
Caches are always created by :func:`new_cache` without a config, so every layer is a plain full-attention layer
that keeps all past keys (models with sliding windows still mask correctly from positions).
"""
from __future__ import annotations

import torch
from transformers import DynamicCache


def new_cache() -> DynamicCache:
    return DynamicCache()


def _layers_kv(cache):
    """Yield every layer that holds key/value tensors."""
    if not hasattr(cache, "layers"):  # pragma: no cover - caches before transformers 4.56 keep parallel lists
        raise TypeError(f"unsupported cache type {type(cache).__name__}: transformers >= 4.56 is required")
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and getattr(layer, "values", None) is not None:
            yield layer


def cache_length(cache) -> int:
    return int(cache.get_seq_length())


def truncate(cache, length: int) -> None:
    """Keep the first ``length`` positions of every layer (no-op when already that short)."""
    for layer in _layers_kv(cache):
        if layer.keys.shape[-2] > length:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


def gather(cache, start: int, keep: torch.Tensor) -> None:
    """Keep positions ``[:start]`` plus ``start + keep`` (in that order) of every layer; drop the rest.

    Used after tree verification: ``keep`` indexes the accepted path among the flattened tree nodes.
    """
    for layer in _layers_kv(cache):
        idx = keep.to(layer.keys.device) + start
        layer.keys = torch.cat([layer.keys[..., :start, :], layer.keys.index_select(-2, idx)], dim=-2)
        layer.values = torch.cat([layer.values[..., :start, :], layer.values.index_select(-2, idx)], dim=-2)
