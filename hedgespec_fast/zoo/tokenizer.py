"""The zoo's byte-level BPE tokenizer: trained with ``tokenizers``, loaded as ``transformers.PreTrainedTokenizerFast``.

Byte-level BPE never meets an unknown character, and with no prefix space and no clean-up of spaces,
``decode(encode(text)) == text`` for every string: the round trip the verification tests rely on.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)  # ids 0, 1, 2
TOKENIZER_FILE = "tokenizer.json"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2):
    """Train a byte-level BPE on ``texts``.

    Parameters
    ----------
    texts : iterable of str
        Training documents (held-out files must not be among them).
    vocab_size : int
        Total vocabulary including the 256 byte symbols and the special tokens.
    min_frequency : int
        Merges seen fewer times are not learned.

    Returns
    -------
    tokenizers.Tokenizer
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def save_tokenizer(tokenizer, directory: str | Path, model_max_length: int = 1024) -> Path:
    """Write ``tokenizer.json`` plus the small configs ``AutoTokenizer`` / ``PreTrainedTokenizerFast`` read."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / TOKENIZER_FILE))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        "model_max_length": model_max_length,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return directory


def load_tokenizer(directory: str | Path, model_max_length: int | None = None):
    """Load the tokenizer as a ``PreTrainedTokenizerFast`` (works with transformers 4.56+ and 5.x).

    Built directly from ``tokenizer.json`` rather than through ``AutoTokenizer`` so that no version-specific
    config field can change its behaviour.
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(Path(directory) / TOKENIZER_FILE),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length or _saved_max_length(directory),
    )


def _saved_max_length(directory: str | Path) -> int:
    config = Path(directory) / "tokenizer_config.json"
    if config.exists():
        return int(json.loads(config.read_text()).get("model_max_length", 1024))
    return 1024
