"""KV-cache surgery that transformers' caches do not offer in a version-stable way.

Speculation rolls a cache back to the committed prefix after every round. ``DynamicCache.crop`` changed meaning
across transformers releases (an absolute length, later a negative count), so we slice the layers ourselves.
Dynamic caches are always created by :func:`new_cache` without a config, so every layer is a plain full-attention
layer that keeps all past keys (models with sliding windows still mask correctly from positions).

Static caches (``cache_implementation="static"``, transformers' ``StaticCache``: fixed buffers, the layout CUDA
graphs and ``torch.compile`` need) are cut and gathered in place: a layer's logical length is its
``cumulative_length`` counter, set without a host sync; rows past it are stale and overwritten by the next write.
Releases whose static layers have no such counter (before 5.x) count non-zero rows instead, which a rollback cannot
honour cheaply: there :func:`new_cache` falls back to a dynamic cache and says so.
"""
from __future__ import annotations

import logging

import torch
from transformers import DynamicCache

logger = logging.getLogger(__name__)


def static_caches_supported() -> bool:
    """Whether this transformers' static layers keep a length counter that a rollback can set in place."""
    try:
        from transformers.cache_utils import StaticLayer
    except ImportError:  # pragma: no cover
        return False
    return "cumulative_length" in getattr(StaticLayer, "__annotations__", {}) or \
        "cumulative_length" in StaticLayer.__init__.__code__.co_names


def new_cache(model=None, max_len: int | None = None):
    """A ``DynamicCache``, or with ``max_len`` a ``StaticCache`` of that many positions for ``model`` (every layer
    full attention). Falls back to dynamic, with a logged reason, where static rollback is not possible."""
    if max_len is None:
        return DynamicCache()
    if not static_caches_supported():
        logger.warning("hedgespec: static caches need transformers >= 5 (a static layer's length counter); "
                       "using a dynamic cache")
        return DynamicCache()
    from transformers import StaticCache

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    config = _full_attention(config)
    return StaticCache(config=config, max_cache_len=int(max_len))


def _full_attention(config):
    """A copy of ``config`` whose layers are all full attention: speculation keeps every key (the model's own
    positions and masks still apply any sliding window)."""
    import copy

    if getattr(config, "layer_types", None) is None and getattr(config, "sliding_window", None) is None:
        return config
    config = copy.deepcopy(config)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = ["full_attention"] * len(config.layer_types)
    if getattr(config, "sliding_window", None) is not None:
        config.sliding_window = None
    return config


def is_static(cache) -> bool:
    layers = getattr(cache, "layers", None)
    return bool(layers) and hasattr(layers[0], "max_cache_len") and hasattr(layers[0], "cumulative_length")


def mask_width(cache, used: int) -> int:
    """Columns of a 4D attention mask for a forward whose keys end at ``used``: a static cache attends over its
    whole buffer (stale rows masked), a dynamic one over exactly what it holds."""
    return int(cache.layers[0].max_cache_len) if is_static(cache) else used


def pad_mask(allowed: torch.Tensor, width: int) -> torch.Tensor:
    """``allowed [q, kv]`` widened to ``width`` columns with False (the rows of a static buffer past the keys)."""
    if allowed.shape[-1] >= width:
        return allowed
    return torch.nn.functional.pad(allowed, (0, width - allowed.shape[-1]), value=False)


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
    if is_static(cache):
        for layer in cache.layers:
            if getattr(layer, "is_initialized", True):
                layer.cumulative_length.fill_(length)
        return
    for layer in _layers_kv(cache):
        if layer.keys.shape[-2] > length:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


def gather(cache, start: int, keep: torch.Tensor) -> None:
    """Keep positions ``[:start]`` plus ``start + keep`` (in that order) of every layer; drop the rest.

    Used after tree verification: ``keep`` indexes the accepted path among the flattened tree nodes.
    """
    if is_static(cache):  # in place: the path's rows move down to follow the prefix
        for layer in _layers_kv(cache):
            idx = keep.to(layer.keys.device) + start
            n = int(keep.shape[0])
            layer.keys[..., start : start + n, :] = layer.keys.index_select(-2, idx)
            layer.values[..., start : start + n, :] = layer.values.index_select(-2, idx)
        truncate(cache, start + int(keep.shape[0]))
        return
    for layer in _layers_kv(cache):
        idx = keep.to(layer.keys.device) + start
        layer.keys = torch.cat([layer.keys[..., :start, :], layer.keys.index_select(-2, idx)], dim=-2)
        layer.values = torch.cat([layer.values[..., :start, :], layer.values.index_select(-2, idx)], dim=-2)
