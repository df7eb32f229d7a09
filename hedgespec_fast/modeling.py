"""What the engine needs to know about, and do with, any HF causal LM: feed tokens to a cache, read its sizes."""
from __future__ import annotations

import inspect
from functools import lru_cache

import torch


@lru_cache(maxsize=None)
def _accepts_logits_to_keep(model_cls) -> bool:
    return "logits_to_keep" in inspect.signature(model_cls.forward).parameters


@lru_cache(maxsize=None)
def cache_keyword(model_cls) -> str:
    """The keyword a model's ``forward`` takes its KV cache by: ``cache`` (transformers ≥ 5.2x, where
    ``past_key_values`` is deprecated) or ``past_key_values`` (earlier releases, and models that never moved).
    The one place that knows about the rename."""
    parameters = inspect.signature(model_cls.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def forward_logits(model, tokens: torch.Tensor, cache, keep: int, **extra) -> torch.Tensor:
    """Feed ``tokens [n]`` (appended after what ``cache`` holds); return the last ``keep`` rows of logits ``[keep, V]``.

    ``keep = 0`` returns all ``n`` rows. ``extra`` goes to the model (e.g. a 4D ``attention_mask`` and ``position_ids``
    for trees).
    """
    return forward_rows(model, tokens, cache, keep, 1, **extra)[0]


def forward_rows(model, tokens: torch.Tensor, cache, keep: int, rows: int = 1, **extra) -> torch.Tensor:
    """:func:`forward_logits` for a model whose batch rows are separate models (a stack of drafters): ``tokens [n]`` go
    to every row; returns the last ``keep`` rows of logits of each, ``[rows, keep, V]`` (``keep = 0``: all ``n``)."""
    ids = tokens.view(1, -1).expand(rows, -1)
    kwargs = {"input_ids": ids, cache_keyword(type(model)): cache, "use_cache": True, **extra}
    if keep and _accepts_logits_to_keep(type(model)):
        kwargs["logits_to_keep"] = keep
    logits = model(**kwargs).logits
    return logits[:, -keep:] if keep else logits


def vocab_size(model) -> int:
    """Rows of the output projection: the size of the distributions the model emits."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    rows = getattr(head, "out_features", None)  # nn.Linear and quantized linears alike, without touching weights
    if isinstance(rows, int) and rows > 0:
        return rows
    weight = getattr(head, "weight", None)
    if callable(weight):  # quantized linears (torch.ao dynamic int8) expose weight(): an unpack, seconds for a head
        weight = weight()
    if weight is not None and hasattr(weight, "shape"):
        return int(weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def context_length(model) -> int | None:
    """Longest sequence the model's positions support (None when unbounded or unknown)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def param_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype
