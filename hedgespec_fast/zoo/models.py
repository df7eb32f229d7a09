"""Building, saving and loading the zoo's Llama models.

Configs are stored as the few plain ``LlamaConfig`` keyword arguments that mean the same thing in transformers 4.56
and 5.x (no serialized ``config.json``, whose fields move between versions).

Shared embedding: every drafter uses the target's token embedding, tied to its own LM head, frozen during
distillation. On disk a drafter file therefore holds only its transformer layers and final norm; at load time the
target's embedding is *copied* into each drafter, so in memory every model owns its parameters and behaves as an
independent HF model (``generate``, ``.to()``, ``.half()`` on one never touch another).
"""
from __future__ import annotations

from pathlib import Path

import torch

SHARED_EMBEDDING = "model.embed_tokens.weight"
TIED_HEAD = "lm_head.weight"


def llama_kwargs(
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    max_positions: int,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
) -> dict:
    """The plain keyword arguments of a zoo ``LlamaConfig`` (JSON-serialisable, version-neutral)."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
    )


def build_llama(kwargs: dict):
    """A freshly initialised ``LlamaForCausalLM`` from ``llama_kwargs`` output, with a matching generation config."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**kwargs))
    model.generation_config = GenerationConfig(
        bos_token_id=kwargs["bos_token_id"],
        eos_token_id=kwargs["eos_token_id"],
        pad_token_id=kwargs["pad_token_id"],
    )
    return model


def init_drafter_from_target(drafter, target) -> None:
    """Start a drafter from the target: shared (frozen) embedding / head, first layer(s) and final norm copied.

    The copied layers only speed up distillation; they are trained. The embedding is the same Parameter object as
    the target's during training (frozen), so the drafters learn to write into the target's output space.
    """
    drafter.model.embed_tokens.weight = target.model.embed_tokens.weight
    drafter.lm_head.weight = drafter.model.embed_tokens.weight
    with torch.no_grad():
        for drafter_layer, target_layer in zip(drafter.model.layers, target.model.layers):
            drafter_layer.load_state_dict(target_layer.state_dict())
        drafter.model.norm.load_state_dict(target.model.norm.state_dict())
    drafter.model.embed_tokens.weight.requires_grad_(False)


def trainable_state(model, shared: bool) -> dict[str, torch.Tensor]:
    """The tensors that go to disk: all but the tied head, and without the embedding when it is shared."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name == TIED_HEAD or (shared and name == SHARED_EMBEDDING):
            continue
        state[name] = tensor.detach().contiguous()
    return state


def save_model(model, path: str | Path, dtype: torch.dtype = torch.float16, shared: bool = False) -> int:
    """Write a model's weights to a safetensors file; returns the file size in bytes."""
    from safetensors.torch import save_file

    state = {k: v.to("cpu", dtype) for k, v in trainable_state(model, shared).items()}
    save_file(state, str(path), metadata={"format": "pt"})
    return Path(path).stat().st_size


def load_model(
    kwargs: dict,
    path: str | Path,
    embedding: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """Build a model and fill it from a safetensors file.

    Parameters
    ----------
    kwargs : dict
        ``llama_kwargs`` output.
    path : path to the safetensors file.
    embedding : Tensor, optional
        The shared embedding (the target's) for drafters saved with ``shared=True``; it is copied.

    Returns
    -------
    LlamaForCausalLM in eval mode on ``device`` / ``dtype``, head tied to the embedding.
    """
    from safetensors.torch import load_file

    model = build_llama(kwargs)
    state = load_file(str(path))
    if embedding is not None:
        state[SHARED_EMBEDDING] = embedding.detach().clone()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != TIED_HEAD]
    if missing or unexpected:
        raise RuntimeError(f"{path}: missing {missing}, unexpected {unexpected}")
    # load_state_dict copies in place, so the head is still the embedding; check rather than trust.
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(device=device, dtype=dtype).eval()
