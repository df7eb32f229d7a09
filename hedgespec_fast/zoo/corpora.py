"""Text corpora for the model zoo: one domain per list of folders / globs, split by file into train and held-out.

The default domains use real text found on a stock Debian 12 machine with CPython installed (see ``DEFAULT_SOURCES``);
any other domain is just a name and a list of globs (``parse_corpus_spec("notes=~/notes/**/*.md")``), so users can
train the zoo on their own data.

Two rules keep evaluation honest:

* The split is by *file*, decided by a hash of the file's path relative to its glob root: the same files are held out
  on every run and every machine with the same layout, and a held-out file is never trained on (tokenizer included).
* Files are visited in hash order, so a size cap takes a deterministic, well-spread subset instead of the first
  folder alphabetically.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

# Per-file cap: one giant generated header or changelog must not become a whole domain.
MAX_FILE_CHARS = 200_000
MIN_FILE_CHARS = 200


@dataclass(frozen=True)
class DomainSource:
    """Where one domain's text lives.

    Parameters
    ----------
    name : str
        Domain name (also the name of its expert drafter).
    patterns : tuple of str
        Globs; ``**`` recurses. ``~`` and environment variables are expanded.
    reader : str
        ``"text"`` (plain or ``.gz`` UTF-8 files) or ``"man"`` (manual pages rendered to text with ``man``).
    exclude : tuple of str
        Regexes searched in the file path; a match drops the file.
    reject : str or None
        Regex searched in the file's text (multiline); a match drops the file (e.g. C++ in the C domain).
    licence : str
        Short note on the licences of the material, for ``SOURCES.md``.
    """

    name: str
    patterns: tuple[str, ...]
    reader: str = "text"
    exclude: tuple[str, ...] = ()
    reject: str | None = None
    licence: str = "unknown: check before redistributing"


@dataclass
class Document:
    """One file's text. ``key`` is the path relative to its glob root: stable across machines."""

    path: str
    key: str
    text: str


@dataclass
class DomainCorpus:
    """A domain split by file into training and held-out documents."""

    name: str
    train: list[Document] = field(default_factory=list)
    heldout: list[Document] = field(default_factory=list)

    def chars(self, split: str = "train") -> int:
        return sum(len(d.text) for d in getattr(self, split))


_STDLIB = sysconfig.get_paths()["stdlib"]

DEFAULT_SOURCES: dict[str, DomainSource] = {
    "python": DomainSource(
        "python",
        (f"{_STDLIB}/**/*.py",),
        exclude=(r"/site-packages/", r"/dist-packages/", r"/__pycache__/", r"/lib2to3/tests/data/"),
        licence="Python standard library: PSF License Agreement (permissive)",
    ),
    "c": DomainSource(
        "c",
        ("/usr/include/**/*.h",),
        # C++ trees (node/V8, LLVM, libstdc++, ICU) are a different language; tcl/tk are duplicated three times.
        exclude=(r"^/usr/include/(node|llvm-\d+|c\+\+|unicode|tcl[^/]*|tk)/",),
        reject=r"^\s*(namespace\s|template\s*<|class\s+\w+\s*[:{]|#include\s*<(string|vector|memory)>)",
        licence="system C headers: glibc (LGPL-2.1+), Linux UAPI (GPL-2.0 WITH Linux-syscall-note), "
        "and other -dev packages (mostly MIT/BSD/LGPL; see /usr/share/doc/<package>/copyright)",
    ),
    "sql": DomainSource(
        "sql",
        ("/usr/share/postgresql/**/*.sql", "/usr/share/postgresql-common/**/*.sql", f"{_STDLIB}/**/*.sql"),
        licence="PostgreSQL 15 extension and catalog scripts: PostgreSQL Licence (permissive, BSD-like)",
    ),
    "prose": DomainSource(
        "prose",
        ("/usr/share/man/man1/*", "/usr/share/man/man5/*", "/usr/share/man/man7/*", "/usr/share/man/man8/*"),
        reader="man",
        # Thousands of generated Google Cloud SDK pages would drown the hand-written ones (and are not stock Debian).
        exclude=(r"/gcloud",),
        licence="English manual pages of the installed packages (GPL, BSD, MIT, GFDL, Linux man-pages licence); "
        "see /usr/share/doc/<package>/copyright",
    ),
    "legal": DomainSource(
        "legal",
        ("/usr/share/common-licenses/*", "/usr/share/doc/*/copyright"),
        licence="licence texts and Debian copyright files: each licence permits verbatim copying of its text",
    ),
}


# --------------------------------------------------------------------------------------------------------- globs


def parse_corpus_spec(spec: str, reader: str = "text") -> DomainSource:
    """Parse ``"name=glob1,glob2"`` (the ``--corpus`` command-line form) into a ``DomainSource``."""
    if "=" not in spec:
        raise ValueError(f"corpus spec must look like name=glob[,glob...], got {spec!r}")
    name, globs = spec.split("=", 1)
    name = name.strip()
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise ValueError(f"domain name must be alphanumeric (with - or _), got {name!r}")
    patterns = tuple(g.strip() for g in globs.split(",") if g.strip())
    if not patterns:
        raise ValueError(f"no globs in corpus spec {spec!r}")
    return DomainSource(name, patterns, reader=reader, licence="user data")


def _glob_root(pattern: str) -> str:
    """The folder before the first glob character: file keys are made relative to it."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "/"


def list_files(source: DomainSource) -> list[tuple[str, str]]:
    """All files of a domain as ``(path, key)``, sorted by key; ``key`` = path relative to the glob root."""
    excludes = [re.compile(e) for e in source.exclude]
    found: dict[str, str] = {}
    for pattern in source.patterns:
        pattern = os.path.expandvars(os.path.expanduser(pattern))
        root = _glob_root(pattern)
        for path in glob.glob(pattern, recursive=True):
            if not os.path.isfile(path) or any(e.search(path) for e in excludes):
                continue
            # Keys keep the root's last folder so two roots with the same relative files stay distinct.
            key = os.path.join(os.path.basename(root.rstrip("/")), os.path.relpath(path, root))
            found.setdefault(path, key)
    return sorted(found.items(), key=lambda pk: pk[1])


def file_hash(key: str, salt: str = "") -> int:
    """A stable 64-bit hash of a file key (independent of PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.sha1((salt + key).encode()).digest()[:8], "big")


def is_heldout(key: str, fraction: float, salt: str = "") -> bool:
    """Whether the file with this key is held out; a pure function of the key."""
    return file_hash(key, "heldout:" + salt) < fraction * 2**64


# ------------------------------------------------------------------------------------------------------- readers


def read_text_file(path: str) -> str | None:
    """UTF-8 text of a plain or gzipped file, or None for binary / non-UTF-8 files."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as handle:
            raw = handle.read(4 * MAX_FILE_CHARS)
        if b"\x00" in raw[:4096]:
            return None
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError):
        return None


def render_man_page(path: str) -> str | None:
    """A manual page rendered to plain text (no justification, no hyphenation), its paragraphs reflowed.

    Reflowing undoes the 80-column wrapping and the fixed indentation of the renderer, so the domain is English
    paragraphs rather than layout. Returns None when ``man`` is missing or fails.
    """
    if shutil.which("man") is None:
        return None
    env = dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="", LC_ALL="C.UTF-8")
    try:
        result = subprocess.run(
            ["man", "--nj", "--nh", "-E", "UTF-8", "-l", path],
            capture_output=True, env=env, timeout=30, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0 or not result.stdout:
        return None
    text = result.stdout.decode("utf-8", errors="replace")
    text = re.sub(r".\x08", "", text)  # overstrike bold / underline, if any survived
    return reflow_man_text(text)


def reflow_man_text(text: str) -> str:
    """Drop the page header and footer, dedent, and join the wrapped lines of each paragraph."""
    lines = [ln.rstrip() for ln in text.splitlines()]
    nonblank = [i for i, ln in enumerate(lines) if ln.strip()]
    if len(nonblank) > 2:  # the first and last non-blank lines are the running header and footer
        lines = lines[nonblank[0] + 1 : nonblank[-1]]
    blocks: list[list[str]] = [[]]
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if not line.strip():
            blocks.append([])
        elif indent == 0:  # a section heading stands alone
            blocks.extend([[line], []])
        else:
            blocks[-1].append(line)
    out = []
    for block in blocks:
        if not block:
            continue
        indents = {len(ln) - len(ln.lstrip()) for ln in block}
        if len(indents) == 1:  # one paragraph: one line, single-spaced (the renderer puts two after a full stop)
            out.append(re.sub(r" {2,}", " ", " ".join(ln.strip() for ln in block)))
        else:  # mixed indentation (option lists, synopses, examples): keep the lines, drop the common indent
            base = min(indents)
            out.append("\n".join(ln[base:] for ln in block))
    return "\n\n".join(out) + "\n"


def read_document(path: str, reader: str) -> str | None:
    if reader == "text":
        return read_text_file(path)
    if reader == "man":
        return render_man_page(path)
    raise ValueError(f"unknown reader {reader!r} (expected 'text' or 'man')")


# ------------------------------------------------------------------------------------------------------ loading


def iter_documents(source: DomainSource, salt: str = "") -> Iterator[Document]:
    """Documents of a domain in hash order (deterministic, well spread), deduplicated by content."""
    reject = re.compile(source.reject, re.MULTILINE) if source.reject else None
    files = sorted(list_files(source), key=lambda pk: file_hash(pk[1], "order:" + salt))
    seen: set[bytes] = set()
    for path, key in files:
        text = read_document(path, source.reader)
        if text is None:
            continue
        text = text[:MAX_FILE_CHARS]
        if len(text.strip()) < MIN_FILE_CHARS or (reject is not None and reject.search(text)):
            continue
        digest = hashlib.sha1(text.encode()).digest()
        if digest in seen:
            continue
        seen.add(digest)
        yield Document(path=path, key=key, text=text)


def load_domain(
    source: DomainSource,
    max_train_chars: int = 8_000_000,
    max_heldout_chars: int = 400_000,
    heldout_fraction: float = 0.1,
    salt: str = "",
) -> DomainCorpus:
    """Read a domain up to the caps, split by file.

    Parameters
    ----------
    source : DomainSource
    max_train_chars, max_heldout_chars : int
        Stop adding files to a split once it holds this many characters.
    heldout_fraction : float
        Fraction of files (by hash of their key) held out for evaluation.
    salt : str
        Changes the file order and the split; keep "" for the shipped zoo.

    Returns
    -------
    DomainCorpus
        If fewer than two files are held out by hash (tiny domains), the first files in hash order are held out
        instead, so every domain has evaluation text.
    """
    corpus = DomainCorpus(source.name)
    pending: list[Document] = []  # train candidates, in case the held-out split must borrow
    train_chars = heldout_chars = 0
    for doc in iter_documents(source, salt):
        if is_heldout(doc.key, heldout_fraction, salt):
            if heldout_chars < max_heldout_chars:
                corpus.heldout.append(doc)
                heldout_chars += len(doc.text)
        elif train_chars < max_train_chars:
            pending.append(doc)
            train_chars += len(doc.text)
        if heldout_chars >= max_heldout_chars and train_chars >= max_train_chars:
            break
    while len(corpus.heldout) < 2 and len(pending) > 2:
        corpus.heldout.append(pending.pop(0))
    corpus.train = pending
    return corpus


def resolve_sources(domains: Iterable[str], corpus_specs: Iterable[str] = ()) -> list[DomainSource]:
    """Built-in domain names plus ``name=glob,...`` specs, in the given order (specs may override a built-in)."""
    custom = [parse_corpus_spec(spec) for spec in corpus_specs]
    custom_names = {s.name for s in custom}
    sources = []
    for name in domains:
        if name in custom_names:
            continue
        if name not in DEFAULT_SOURCES:
            raise ValueError(f"unknown domain {name!r}: built-ins are {sorted(DEFAULT_SOURCES)}; "
                             "add your own with --corpus name=glob")
        sources.append(DEFAULT_SOURCES[name])
    return sources + custom
