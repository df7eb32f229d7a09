"""The embedded model zoo: a byte-level BPE tokenizer, a small Llama target and domain-expert Llama drafters.

Everything was trained on this project's machine from text found on a stock Debian system (``corpora.py``) by
``hedgespec zoo train`` (``train.py``); the weights ship in ``weights/``, held-out evaluation snippets (cut from files
never trained on) in ``data/heldout/``. Nothing is downloaded.

>>> from hedgespec_fast import zoo
>>> tokenizer, target, drafters = zoo.load()
>>> list(drafters)                      # the domain experts, then the generic drafter
['python', 'c', 'sql', 'prose', 'legal', 'generic']
>>> prompts = zoo.heldout_prompts("sql", n=4, prompt_tokens=64)
"""
from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import torch

ZOO_DIR = Path(__file__).resolve().parent
DOMAINS = ("python", "c", "sql", "prose", "legal")
GENERIC = "generic"
MANIFEST = "zoo.json"

__all__ = ["DOMAINS", "GENERIC", "load", "heldout_prompts", "heldout_texts", "manifest", "ZOO_DIR"]


def _root(path: str | Path | None) -> Path:
    return Path(path) if path is not None else ZOO_DIR


def manifest(path: str | Path | None = None) -> dict:
    """The zoo's manifest (model configs, drafter order, training record)."""
    file = _root(path) / "weights" / MANIFEST
    if not file.exists():
        raise FileNotFoundError(f"no trained zoo at {file.parent}: train one with `hedgespec zoo train --install`")
    return json.loads(file.read_text())


@functools.lru_cache(maxsize=4)
def _tokenizer(root: str):
    from .tokenizer import load_tokenizer

    return load_tokenizer(Path(root) / "weights" / "tokenizer")


def load(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, path: str | Path | None = None):
    """Load the zoo, offline.

    Parameters
    ----------
    device : where the models go.
    dtype : model dtype (weights are stored in fp16).
    path : folder holding ``weights/`` (and ``data/``); default: the zoo shipped in the package.

    Returns
    -------
    (tokenizer, target, drafters)
        ``PreTrainedTokenizerFast``; the target ``LlamaForCausalLM``; ``dict`` name → ``LlamaForCausalLM`` with the
        domain experts in ``DOMAINS`` order, then ``"generic"``. All models in eval mode, each with its own copy of
        the (shared-on-disk) embedding, so they are independent HF models.
    """
    from .models import load_model
    from .tokenizer import load_tokenizer

    root = _root(path)
    info = manifest(root)
    weights = root / "weights"
    tokenizer = load_tokenizer(weights / "tokenizer")
    target = load_model(info["target"]["config"], weights / info["target"]["file"], device=device, dtype=dtype)
    embedding = target.model.embed_tokens.weight
    drafters = {}
    for entry in info["drafters"]:
        drafters[entry["name"]] = load_model(entry["config"], weights / entry["file"], embedding=embedding,
                                             device=device, dtype=dtype)
    return tokenizer, target, drafters


def heldout_texts(domain: str | None = None, n: int | None = None, path: str | Path | None = None):
    """Full held-out snippets (for teacher-forced evaluation).

    Returns
    -------
    list of str when ``domain`` is given, else dict domain → list of str (domains in manifest order).
    """
    from .heldout import read_snippets

    root = _root(path)
    if domain is None:
        return {d: heldout_texts(d, n, path) for d in manifest(root)["domains"]}
    file = root / "data" / "heldout" / f"{domain}.jsonl"
    if not file.exists():
        raise ValueError(f"no held-out snippets for domain {domain!r} at {file.parent}")
    texts = [s["text"] for s in read_snippets(file)]
    return texts[:n] if n is not None else texts


def heldout_prompts(
    domain: str | None = None,
    n: int = 8,
    prompt_tokens: int = 64,
    seed: int | None = None,
    path: str | Path | None = None,
):
    """Prompts cut from held-out files (never trained on): the first ``prompt_tokens`` tokens of held-out snippets.

    Parameters
    ----------
    domain : one domain, or None for all.
    n : prompts per domain (at most the number of shipped snippets).
    prompt_tokens : prompt length in tokens of the zoo tokenizer.
    seed : None takes the first ``n`` snippets; an int picks ``n`` at random with that seed.
    path : zoo folder (default: the shipped one).

    Returns
    -------
    list of str when ``domain`` is given, else dict domain → list of str.
    """
    root = _root(path)
    if domain is None:
        return {d: heldout_prompts(d, n, prompt_tokens, seed, path) for d in manifest(root)["domains"]}
    texts = heldout_texts(domain, path=path)
    if seed is not None:
        texts = random.Random(f"{seed}:{domain}").sample(texts, min(n, len(texts)))
    tokenizer = _tokenizer(str(root))
    prompts = []
    for text in texts[:n]:
        ids = tokenizer(text, add_special_tokens=False).input_ids[:prompt_tokens]
        prompts.append(tokenizer.decode(ids))
    return prompts
