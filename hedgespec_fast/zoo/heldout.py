"""Held-out evaluation snippets: cut from held-out files only, shipped as ``data/heldout/<domain>.jsonl``.

Each line is ``{"domain", "source", "key", "text"}``: ``source`` is the file the snippet was cut from (on the machine
that trained the zoo), ``key`` its path relative to the glob root. Snippets start at a line start, are
``snippet_tokens`` tokens long, and are used both as prompts (their first tokens) and as teacher-forced evaluation text.
"""
from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Iterable

from .corpora import Document

# Skip a file's first characters when cutting a snippet from a long file: files open with licence boilerplate that
# would make the C / Python / SQL prompts look like the legal domain (short files: see leading_comment_end).
SKIP_LEADING_CHARS = 1500

# A line that is only a comment in one of the code domains (C/C++ //, SQL --, shell/Python #, but not C preprocessor
# directives, which are code).
_COMMENT_LINE = re.compile(r"^\s*(//|--|#(?!\s*(include|define|undef|if|ifdef|ifndef|elif|else|endif|pragma|error)\b))")


def leading_comment_end(text: str) -> int:
    """Offset of the first line after a file's leading comment / licence / docstring block (0 if there is none).

    Recognises blank lines, whole-line comments, C block comments and a leading Python triple-quoted docstring.
    """
    position, length = 0, len(text)
    while position < length:
        rest = text[position:]
        stripped = rest.lstrip()
        skipped = len(rest) - len(stripped)
        if not stripped:
            return length
        for opener, closer in (("/*", "*/"), ('"""', '"""'), ("'''", "'''")):
            if stripped.startswith(opener):
                close = stripped.find(closer, len(opener))
                if close < 0:
                    return length
                position += skipped + close + len(closer)
                break
        else:
            line_end = text.find("\n", position + skipped)
            line_end = length if line_end < 0 else line_end + 1
            if _COMMENT_LINE.match(text[position + skipped:line_end]):
                position = line_end
                continue
            # Not a comment: the block ended at the start of this line.
            return text.rfind("\n", 0, position + skipped) + 1
    return length


def cut_snippets(
    docs: Iterable[Document],
    encode,
    decode,
    n: int,
    snippet_tokens: int,
    per_file: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """Cut up to ``n`` snippets of exactly ``snippet_tokens`` tokens from held-out documents.

    Parameters
    ----------
    docs : held-out documents of one domain.
    encode, decode : callables ``str -> list[int]`` and ``list[int] -> str``.
    n : number of snippets wanted.
    snippet_tokens : length of each snippet in tokens.
    per_file : at most this many snippets per file, so one file cannot dominate; default
        ``max(3, ceil(2 n / files))`` (domains with few, long held-out files still reach ``n``).
    seed : choice of the start lines.

    Returns
    -------
    list of dict (``source``, ``key``, ``text``), in file order.
    """
    rng = random.Random(seed)
    docs = list(docs)
    if per_file is None:
        per_file = max(3, math.ceil(2 * n / max(len(docs), 1)))
    snippets: list[dict] = []
    # Round-robin over files: the first pass takes one snippet per file, later passes add more.
    for round_index in range(per_file):
        for doc in docs:
            if len(snippets) >= n:
                return snippets
            text = doc.text
            lead = max(leading_comment_end(text), SKIP_LEADING_CHARS if len(text) > 4 * SKIP_LEADING_CHARS else 0)
            line_starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
            line_starts = [i for i in line_starts if i >= lead and text[i:i + 1].strip()]
            if not line_starts:
                continue
            start = rng.choice(line_starts)
            ids = encode(text[start:start + 12 * snippet_tokens])
            if len(ids) < snippet_tokens:
                if round_index == 0 and start != line_starts[0]:  # near the end: retry from the first usable line
                    ids = encode(text[line_starts[0]:line_starts[0] + 12 * snippet_tokens])
                if len(ids) < snippet_tokens:
                    continue
            snippet = decode(ids[:snippet_tokens])
            if sum(ch.isspace() for ch in snippet) > 0.6 * len(snippet):  # a whitespace table, not text
                continue
            if any(s["text"] == snippet for s in snippets):
                continue
            snippets.append({"source": doc.path, "key": doc.key, "text": snippet})
    return snippets


def write_snippets(path: str | Path, domain: str, snippets: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for snippet in snippets:
            handle.write(json.dumps({"domain": domain, **snippet}, ensure_ascii=False) + "\n")


def read_snippets(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
