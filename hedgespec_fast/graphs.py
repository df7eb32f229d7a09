"""CUDA graphs of a model's forward over a static KV cache: one graph per number of fed tokens (the bucket).

Eager decoding on a GPU is host-bound (every forward launches hundreds of kernels from Python). With a static cache
(``cache_implementation="static"``) the forward's shapes depend only on how many tokens it is fed, and a layer's
length lives in a device tensor (``cumulative_length``), so a forward of ``n`` tokens can be captured once and
replayed: the token ids go into a fixed input buffer, the positions are computed on the device from the cache's own
length, and the logits come out of a fixed output buffer. Warm-up and capture happen on first use of a bucket,
outside any timed round of later generations (the graphs live as long as the model and its cache buffers).

Anything that makes capture impossible (no CUDA device, a dynamic cache, an attention implementation that syncs)
falls back to the eager forward for that bucket, once, with the reason logged: output is the same either way.
"""
from __future__ import annotations

import logging
import weakref

import torch

from .cache import is_static, new_cache, truncate
from .modeling import cache_keyword, forward_rows

logger = logging.getLogger(__name__)


class GraphedForward:
    """``forward(tokens [n], keep) → logits [rows, keep, V]`` for one model and one static cache, graphed per ``n``.

    Parameters
    ----------
    model : the causal LM.
    cache : its static cache (the graphs capture these buffers; a new cache needs a new ``GraphedForward``).
    rows : batch rows (1, or a stack's members).
    """

    def __init__(self, model, cache, rows: int = 1):
        self.model, self.cache, self.rows = model, cache, rows
        self.graphs: dict[tuple[int, int], tuple] = {}
        self.eager: dict[tuple[int, int], str] = {}  # bucket → why it runs eagerly
        device = next(model.parameters()).device
        if device.type != "cuda":
            self.reason = "CUDA graphs need a CUDA device"
        elif not is_static(cache):
            self.reason = "CUDA graphs need a static cache (cache_implementation='static' on transformers >= 5)"
        else:
            self.reason = None

    def __call__(self, tokens: torch.Tensor, keep: int) -> torch.Tensor:
        key = (int(tokens.shape[0]), int(keep))
        if self.reason is not None or key in self.eager:
            return forward_rows(self.model, tokens, self.cache, keep, self.rows)
        if key not in self.graphs:
            try:
                self.graphs[key] = self._capture(*key, tokens)
            except Exception as err:  # noqa: BLE001 - any capture failure: this bucket runs eagerly
                self.eager[key] = f"{type(err).__name__}: {err}"
                logger.warning("hedgespec: forward of %d tokens runs eagerly (capture failed: %s)", key[0],
                               self.eager[key])
                return forward_rows(self.model, tokens, self.cache, keep, self.rows)
        graph, ids, out = self.graphs[key]
        ids.copy_(tokens.view(1, -1).expand(self.rows, -1))
        graph.replay()
        return out

    def _forward(self, ids: torch.Tensor, n: int, keep: int) -> torch.Tensor:
        layer = self.cache.layers[0]
        positions = layer.cumulative_length + torch.arange(n, device=ids.device)  # on the device: no host read
        kwargs = {"input_ids": ids, cache_keyword(type(self.model)): self.cache, "use_cache": True,
                  "cache_position": positions, "position_ids": positions.view(1, -1).expand(self.rows, -1),
                  "logits_to_keep": keep}
        return self.model(**kwargs).logits[:, -keep:]

    def _capture(self, n: int, keep: int, tokens: torch.Tensor):
        """Warm up on a side stream (lazy inits, autotuning), roll the cache back, capture, roll back again."""
        layer = self.cache.layers[0]
        if not getattr(layer, "is_initialized", False):
            raise RuntimeError("the static cache is not allocated yet (prefill first)")
        length = layer.cumulative_length.clone()
        ids = tokens.view(1, -1).expand(self.rows, -1).clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(ids, n, keep)
                self._rewind(length)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._forward(ids, n, keep)
        self._rewind(length)
        return graph, ids, out

    def _rewind(self, length: torch.Tensor) -> None:
        for layer in self.cache.layers:
            layer.cumulative_length.copy_(length)


_KEPT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model → {role: (shape, static cache, graphs)}


def static_cache_for(model, length: int, graphs: bool = True, rows: int = 1, role: str = "target"):
    """The model's static cache of ``length`` positions, rewound to empty, and its :class:`GraphedForward` (None
    without ``graphs``): kept across calls while the model lives, so CUDA graphs are captured once per bucket, not
    once per generation. A model keeps one static cache (its buffers are sequence-length sized); asking for another
    length replaces it. ``role`` keeps a model that is both target and drafter from sharing one cache. Falls back to
    a dynamic cache (and no graphs) where static rollback is not possible."""
    roles = _KEPT.setdefault(model, {})
    kept = roles.get(role)
    if kept is None or kept[0] != (length, rows):
        cache = new_cache(model, length)
        if not is_static(cache):  # the fallback: a fresh dynamic cache every call, nothing worth keeping
            return cache, None
        kept = ((length, rows), cache, GraphedForward(model, cache, rows) if graphs else None)
        roles[role] = kept
    _, cache, graphed = kept
    truncate(cache, 0)
    return cache, graphed
