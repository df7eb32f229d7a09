"""Train the model zoo from scratch: corpora → tokenizer → target → distilled drafters → evaluation → export.

``hedgespec zoo train`` calls ``main``. Every stage writes its result into ``--out`` and is skipped when that result
is already there (``--force`` redoes everything), so an interrupted run resumes at the stage it was in.

Recipe
------
* Target: ``LlamaForCausalLM`` trained by next-token cross-entropy on a domain-balanced mix (each sequence picks a
  domain uniformly, then a random window of that domain's token stream).
* Drafters: one per domain plus ``generic``, each with the target's hidden size and ``--drafter-layers`` layers,
  started from the target's first layer(s), sharing the target's frozen embedding (= LM head). Distilled by forward
  KL(p_target ‖ q_drafter) at temperature 1 plus ``--ce-weight`` × cross-entropy to the true tokens; an expert sees
  only its domain, ``generic`` sees the mix. All drafters train in the same loop and share each target forward.
* Held-out files never reach the tokenizer or the models; the snippets shipped for evaluation are cut from them.

Example
-------
``nice -n 10 python -m hedgespec_fast.zoo.train --out /work/zoo_runs/v1 --install``  (≈ 1 h on one CPU thread)
``python -m hedgespec_fast.zoo.train --quick --out /tmp/zoo_quick``                  (smoke run, < 1 min)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import DOMAINS, GENERIC, MANIFEST, ZOO_DIR
from .corpora import DEFAULT_SOURCES, Document, load_domain, resolve_sources
from .heldout import cut_snippets, read_snippets, write_snippets
from .models import build_llama, init_drafter_from_target, llama_kwargs, save_model
from .tokenizer import BOS_TOKEN, EOS_TOKEN, load_tokenizer, save_tokenizer, train_tokenizer

# The sizes of a --quick run: everything tiny, a few steps, so the whole pipeline runs in seconds.
QUICK = dict(
    vocab=384, hidden=64, layers=2, heads=2, intermediate=128, seq_len=64, max_positions=256,
    target_steps=30, target_batch=4, drafter_steps=15, drafter_batch=2, max_train_chars=150_000,
    max_heldout_chars=30_000, snippets=4, snippet_tokens=96, tokenizer_chars=150_000,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hedgespec zoo train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    io = parser.add_argument_group("data and output")
    io.add_argument("--out", default="zoo_run", help="run folder (stages are cached here)")
    io.add_argument("--domains", default=",".join(DOMAINS),
                    help=f"comma-separated domains; built-ins: {','.join(DEFAULT_SOURCES)}")
    io.add_argument("--corpus", action="append", default=[], metavar="NAME=GLOB[,GLOB]",
                    help="a domain from your own files (repeatable); list NAME in --domains to order it, "
                         "otherwise it is appended")
    io.add_argument("--max-train-chars", type=int, default=6_000_000, help="per domain")
    io.add_argument("--max-heldout-chars", type=int, default=500_000, help="per domain")
    io.add_argument("--heldout-fraction", type=float, default=0.1, help="fraction of files held out")
    io.add_argument("--tokenizer-chars", type=int, default=2_000_000, help="per domain, for BPE training")
    io.add_argument("--snippets", type=int, default=40, help="held-out snippets per domain")
    io.add_argument("--snippet-tokens", type=int, default=320)
    io.add_argument("--install", action="store_true", help=f"copy the result into the package ({ZOO_DIR})")
    io.add_argument("--force", action="store_true", help="redo every stage")
    model = parser.add_argument_group("models")
    model.add_argument("--vocab", type=int, default=4096)
    model.add_argument("--hidden", type=int, default=192)
    model.add_argument("--layers", type=int, default=4, help="target layers")
    model.add_argument("--heads", type=int, default=3)
    model.add_argument("--intermediate", type=int, default=512)
    model.add_argument("--drafter-layers", type=int, default=1)
    model.add_argument("--max-positions", type=int, default=1024)
    train = parser.add_argument_group("training")
    train.add_argument("--seq-len", type=int, default=256)
    train.add_argument("--target-steps", type=int, default=1500)
    train.add_argument("--target-batch", type=int, default=16)
    train.add_argument("--target-lr", type=float, default=3e-3)
    train.add_argument("--drafter-steps", type=int, default=600)
    train.add_argument("--drafter-batch", type=int, default=8, help="sequences per drafter per step")
    train.add_argument("--drafter-lr", type=float, default=2e-3)
    train.add_argument("--ce-weight", type=float, default=0.1, help="weight of the hard-label CE in distillation")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="auto = cuda if available else cpu")
    train.add_argument("--threads", type=int, default=1, help="CPU threads (torch and tokenizers)")
    train.add_argument("--quick", action="store_true", help="tiny smoke run (< 1 min)")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    return args


# ------------------------------------------------------------------------------------------------------ helpers


def log(message: str) -> None:
    print(f"[zoo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def progress(iterable, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, mininterval=2.0, dynamic_ncols=True, file=sys.stderr, **kwargs)


def lr_at(step: int, steps: int, peak: float, warmup_fraction: float = 0.05, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to ``floor × peak``."""
    warmup = max(1, int(warmup_fraction * steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress_ = (step - warmup) / max(1, steps - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress_)))


def make_optimizer(params, lr: float) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


class TokenStreams:
    """Per-domain token streams (``<bos> doc <eos>`` concatenated) and random-window batches from them."""

    def __init__(self, streams: dict[str, np.ndarray], seq_len: int, seed: int):
        self.streams = streams
        self.domains = list(streams)
        self.seq_len = seq_len
        self.generator = np.random.default_rng(seed)

    def windows(self, domain: str, count: int) -> torch.Tensor:
        """``count`` random windows of ``seq_len + 1`` tokens from one domain: LongTensor ``[count, seq_len + 1]``."""
        stream = self.streams[domain]
        starts = self.generator.integers(0, len(stream) - self.seq_len - 1, size=count)
        return torch.from_numpy(np.stack([stream[s:s + self.seq_len + 1] for s in starts]).astype(np.int64))

    def mixed(self, count: int) -> torch.Tensor:
        """``count`` windows, each from a uniformly chosen domain."""
        picks = self.generator.integers(0, len(self.domains), size=count)
        return torch.cat([self.windows(self.domains[p], 1) for p in picks])


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def distillation_loss(drafter_logits, target_logprobs, targets, ce_weight: float):
    """Forward KL(p ‖ q) per token (T = 1) + ``ce_weight`` × CE; returns (loss, kl) as tensors."""
    vocab = drafter_logits.shape[-1]
    drafter_logprobs = F.log_softmax(drafter_logits.float(), dim=-1).reshape(-1, vocab)
    kl = F.kl_div(drafter_logprobs, target_logprobs.reshape(-1, vocab), log_target=True, reduction="batchmean")
    loss = kl
    if ce_weight > 0:
        loss = loss + ce_weight * F.nll_loss(drafter_logprobs, targets.reshape(-1))
    return loss, kl


@torch.no_grad()
def heldout_loss(model, tokenizer, texts: list[str], device, max_tokens: int) -> float:
    """Mean next-token cross-entropy of ``model`` on held-out texts."""
    total, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False).input_ids[:max_tokens]
        if len(ids) < 2:
            continue
        x = torch.tensor([ids], device=device)
        logits = model(input_ids=x[:, :-1]).logits
        total += F.cross_entropy(logits[0].float(), x[0, 1:], reduction="sum").item()
        count += len(ids) - 1
    return total / max(count, 1)


# ------------------------------------------------------------------------------------------------------- stages


def stage_data(args, out: Path) -> dict:
    """Corpora → tokenizer → token streams, plus the held-out documents. Returns per-domain statistics."""
    stats_file = out / "data.json"
    if stats_file.exists() and not args.force:
        log("data: cached")
        return json.loads(stats_file.read_text())
    sources = resolve_sources(args.domains, args.corpus)
    corpora = {}
    for source in progress(sources, desc="corpora", unit="domain"):
        corpus = load_domain(source, args.max_train_chars, args.max_heldout_chars, args.heldout_fraction)
        if not corpus.train or not corpus.heldout:
            raise SystemExit(f"domain {source.name!r}: no usable files for {source.patterns} "
                             f"(train {len(corpus.train)}, held out {len(corpus.heldout)}); "
                             "drop it from --domains or point --corpus at your own files")
        corpora[source.name] = corpus
        log(f"data: {source.name}: {len(corpus.train)} train files ({corpus.chars('train') / 1e6:.2f} M chars), "
            f"{len(corpus.heldout)} held out ({corpus.chars('heldout') / 1e6:.2f} M chars)")

    # Tokenizer on a balanced sample of training files only.
    def tokenizer_texts():
        for corpus in corpora.values():
            budget = args.tokenizer_chars
            for doc in corpus.train:
                if budget <= 0:
                    break
                yield doc.text[:budget]
                budget -= len(doc.text)

    if args.vocab > 2**16:
        raise SystemExit("--vocab must be ≤ 65536 (token streams are stored as uint16)")
    started = time.time()
    raw_tokenizer = train_tokenizer(tokenizer_texts(), vocab_size=args.vocab)
    save_tokenizer(raw_tokenizer, out / "tokenizer", model_max_length=args.max_positions)
    log(f"data: tokenizer ({raw_tokenizer.get_vocab_size()} tokens) trained in {time.time() - started:.1f}s")
    bos, eos = raw_tokenizer.token_to_id(BOS_TOKEN), raw_tokenizer.token_to_id(EOS_TOKEN)

    stats = {"domains": list(corpora), "per_domain": {}}
    (out / "tokens").mkdir(parents=True, exist_ok=True)
    for name, corpus in progress(corpora.items(), desc="tokenize", unit="domain"):
        encodings = raw_tokenizer.encode_batch([d.text for d in corpus.train])
        stream = np.concatenate([np.array([bos] + e.ids + [eos], dtype=np.uint16) for e in encodings])
        np.save(out / "tokens" / f"{name}.npy", stream)
        # The held-out documents themselves stay in the run folder (snippets are re-cut from them, never trained on).
        write_snippets(out / "heldout_docs" / f"{name}.jsonl", name,
                       [{"source": d.path, "key": d.key, "text": d.text} for d in corpus.heldout])
        source = next(s for s in resolve_sources(args.domains, args.corpus) if s.name == name)
        stats["per_domain"][name] = {
            "patterns": list(source.patterns), "reader": source.reader, "licence": source.licence,
            "train_files": len(corpus.train), "train_chars": corpus.chars("train"), "train_tokens": int(len(stream)),
            "heldout_files": len(corpus.heldout), "heldout_chars": corpus.chars("heldout"),
            "chars_per_token": corpus.chars("train") / max(len(stream), 1),
            "heldout_keys": [d.key for d in corpus.heldout],
        }
        log(f"data: {name}: {len(stream) / 1e6:.2f} M train tokens")
    stats_file.write_text(json.dumps(stats, indent=1))
    return stats


def stage_snippets(args, out: Path, data_stats: dict, tokenizer) -> None:
    """Cut the held-out evaluation snippets (``data/heldout/<domain>.jsonl``) from the held-out documents."""
    folder = out / "data" / "heldout"
    if all((folder / f"{d}.jsonl").exists() for d in data_stats["domains"]) and not args.force:
        log("snippets: cached")
        return
    for name in data_stats["domains"]:
        docs = [Document(path=d["source"], key=d["key"], text=d["text"])
                for d in read_snippets(out / "heldout_docs" / f"{name}.jsonl")]
        snippets = cut_snippets(docs, lambda text: tokenizer(text, add_special_tokens=False).input_ids,
                                tokenizer.decode, args.snippets, args.snippet_tokens, seed=args.seed)
        write_snippets(folder / f"{name}.jsonl", name, snippets)
        data_stats["per_domain"][name]["snippets"] = len(snippets)
        log(f"snippets: {name}: {len(snippets)} from {len({s['key'] for s in snippets})} held-out files")
    (out / "data.json").write_text(json.dumps(data_stats, indent=1))


def model_kwargs(args, tokenizer, layers: int) -> dict:
    return llama_kwargs(len(tokenizer), args.hidden, layers, args.heads, args.intermediate, args.max_positions,
                        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)


def load_streams(out: Path, domains: list[str], seq_len: int, seed: int) -> TokenStreams:
    return TokenStreams({d: np.load(out / "tokens" / f"{d}.npy") for d in domains}, seq_len, seed)


def stage_target(args, out: Path, domains, tokenizer, device) -> dict:
    """Train the target on the domain-balanced mix; saves ``target.pt`` (fp32) and returns its record."""
    record_file = out / "target.json"
    if record_file.exists() and (out / "target.pt").exists() and not args.force:
        log("target: cached")
        return json.loads(record_file.read_text())
    torch.manual_seed(args.seed)
    kwargs = model_kwargs(args, tokenizer, args.layers)
    model = build_llama(kwargs).to(device).train()
    optimizer = make_optimizer(model.parameters(), args.target_lr)
    streams = load_streams(out, domains, args.seq_len, args.seed)
    started, losses = time.time(), []
    bar = progress(range(args.target_steps), desc="target", unit="step")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.target_steps, args.target_lr)
        batch = streams.mixed(args.target_batch).to(device)
        loss = next_token_loss(model(input_ids=batch[:, :-1]).logits, batch[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        if step % 200 == 0 or step == args.target_steps - 1:
            log(f"target: step {step} loss {np.mean(losses[-50:]):.3f}")
    seconds = time.time() - started
    record = {
        "config": kwargs, "steps": args.target_steps, "batch": args.target_batch, "seq_len": args.seq_len,
        "tokens_seen": args.target_steps * args.target_batch * args.seq_len, "seconds": round(seconds, 1),
        "final_train_loss": float(np.mean(losses[-50:])),
        "params": sum(p.numel() for p in model.parameters()),
    }
    torch.save(model.state_dict(), out / "target.pt")
    record_file.write_text(json.dumps(record, indent=1))
    log(f"target: done in {seconds / 60:.1f} min, train loss {record['final_train_loss']:.3f}")
    return record


def stage_drafters(args, out: Path, domains, tokenizer, device, target_record) -> dict:
    """Distil one expert per domain and a generic drafter from the target; saves ``drafters.pt``."""
    record_file = out / "drafters.json"
    if record_file.exists() and (out / "drafters.pt").exists() and not args.force:
        log("drafters: cached")
        return json.loads(record_file.read_text())
    torch.manual_seed(args.seed + 1)
    target = build_llama(target_record["config"])
    target.load_state_dict(torch.load(out / "target.pt", map_location="cpu"))
    target = target.to(device).eval().requires_grad_(False)
    kwargs = model_kwargs(args, tokenizer, args.drafter_layers)
    names = list(domains) + [GENERIC]
    drafters = {}
    for name in names:
        drafter = build_llama(kwargs)
        init_drafter_from_target(drafter, target)
        drafters[name] = drafter.to(device).train()
    optimizers = {name: make_optimizer(d.parameters(), args.drafter_lr) for name, d in drafters.items()}
    streams = load_streams(out, domains, args.seq_len, args.seed + 1)
    generator = torch.Generator().manual_seed(args.seed + 2)
    started = time.time()
    history = {name: {"loss": [], "kl": []} for name in names}
    bar = progress(range(args.drafter_steps), desc="drafters", unit="step")
    per_domain = args.drafter_batch
    for step in bar:
        lr = lr_at(step, args.drafter_steps, args.drafter_lr)
        # One target forward serves every drafter: the experts take their domain's rows, generic a random mix.
        batch = torch.cat([streams.windows(d, per_domain) for d in domains]).to(device)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        with torch.no_grad():
            target_logprobs = F.log_softmax(target(input_ids=inputs).logits.float(), dim=-1)
        generic_rows = torch.randperm(len(batch), generator=generator)[:per_domain].to(device)
        for name in names:
            rows = generic_rows if name == GENERIC else slice(domains.index(name) * per_domain,
                                                               (domains.index(name) + 1) * per_domain)
            logits = drafters[name](input_ids=inputs[rows]).logits
            loss, kl = distillation_loss(logits, target_logprobs[rows], targets[rows], args.ce_weight)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in drafters[name].parameters() if p.requires_grad], 1.0)
            for group in optimizers[name].param_groups:
                group["lr"] = lr
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            history[name]["loss"].append(loss.item())
            history[name]["kl"].append(kl.item())
        if step % 10 == 0:
            bar.set_postfix(kl=" ".join(f"{np.mean(history[n]['kl'][-30:]):.2f}" for n in names))
        if step % 100 == 0 or step == args.drafter_steps - 1:
            log(f"drafters: step {step} KL " + ", ".join(f"{n} {np.mean(history[n]['kl'][-30:]):.3f}" for n in names))
    seconds = time.time() - started
    record = {
        "config": kwargs, "names": names, "steps": args.drafter_steps, "rows_per_drafter": per_domain,
        "seq_len": args.seq_len, "ce_weight": args.ce_weight, "seconds": round(seconds, 1),
        "tokens_per_drafter": args.drafter_steps * per_domain * args.seq_len,
        "final_kl": {n: float(np.mean(history[n]["kl"][-30:])) for n in names},
        "final_loss": {n: float(np.mean(history[n]["loss"][-30:])) for n in names},
        "trainable_params": sum(p.numel() for p in drafters[names[0]].parameters() if p.requires_grad),
    }
    torch.save({n: {k: v for k, v in d.state_dict().items()} for n, d in drafters.items()}, out / "drafters.pt")
    record_file.write_text(json.dumps(record, indent=1))
    log(f"drafters: done in {seconds / 60:.1f} min, final KL " +
        ", ".join(f"{n} {v:.3f}" for n, v in record["final_kl"].items()))
    return record


def stage_export(args, out: Path, data_stats, target_record, drafter_record, device_name: str) -> Path:
    """fp16 safetensors + tokenizer + manifest + held-out snippets in ``out/export`` (the package layout)."""
    export = out / "export"
    if export.exists():
        shutil.rmtree(export)
    weights = export / "weights"
    (weights / "drafters").mkdir(parents=True)
    shutil.copytree(out / "tokenizer", weights / "tokenizer")
    shutil.copytree(out / "data", export / "data")

    target = build_llama(target_record["config"])
    target.load_state_dict(torch.load(out / "target.pt", map_location="cpu"))
    sizes = {"target": save_model(target, weights / "target.safetensors")}
    drafter_states = torch.load(out / "drafters.pt", map_location="cpu")
    entries = []
    for name in drafter_record["names"]:
        drafter = build_llama(drafter_record["config"])
        drafter.load_state_dict(drafter_states[name])
        file = f"drafters/{name}.safetensors"
        sizes[name] = save_model(drafter, weights / file, shared=True)
        entries.append({"name": name, "file": file, "config": drafter_record["config"],
                        "shared": {"model.embed_tokens.weight": "target"}})

    import transformers

    manifest = {
        "format": 1,
        "domains": data_stats["domains"],
        "generic": GENERIC,
        "target": {"file": "target.safetensors", "config": target_record["config"]},
        "drafters": entries,
        "dtype": "float16",
        "bytes": sizes,
        "training": {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "command": "hedgespec zoo train " + " ".join(args.argv),
            "device": device_name, "threads": args.threads, "seed": args.seed,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "target": {k: v for k, v in target_record.items() if k not in ("config", "heldout_loss")},
            "drafters": {k: v for k, v in drafter_record.items() if k != "config"},
            "data": {d: {k: v for k, v in s.items() if k != "heldout_keys"}
                     for d, s in data_stats["per_domain"].items()},
        },
    }
    (weights / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    write_sources(export / "data" / "SOURCES.md", data_stats)
    total = sum(sizes.values()) + sum(f.stat().st_size for f in (weights / "tokenizer").iterdir())
    log(f"export: {export} ({total / 1e6:.2f} MB of weights and tokenizer)")
    return export


def write_sources(path: Path, data_stats: dict) -> None:
    """Where every domain's text came from, its licences, and which files are held out."""
    lines = ["# Zoo corpora: sources and licences", "",
             "The zoo was trained on text found on the training machine (Debian 12, CPython 3.11). The held-out",
             "snippets in `heldout/<domain>.jsonl` are short excerpts (a few hundred tokens each) of the held-out",
             "files listed below, shipped for evaluation only; every line records the file it was cut from. The",
             "excerpts keep the licences of their source files (listed per domain; all of them allow redistribution,",
             "the copyleft ones with their licence notice, which the source file's copyright file on any Debian system",
             "holds). The package's own Apache-2.0 licence does not cover these data files. The model weights were",
             "trained on the training files of the same globs; no held-out file was used for training.", ""]
    for name, s in data_stats["per_domain"].items():
        lines += [f"## {name}", "", f"- globs: {', '.join(f'`{p}`' for p in s['patterns'])} (reader: {s['reader']})",
                  f"- licences: {s['licence']}",
                  f"- train: {s['train_files']} files, {s['train_chars'] / 1e6:.2f} M chars, "
                  f"{s['train_tokens'] / 1e6:.2f} M tokens",
                  f"- held out: {s['heldout_files']} files ({s['heldout_chars'] / 1e6:.2f} M chars), "
                  f"{s.get('snippets', 0)} snippets", "", "<details><summary>held-out files</summary>", ""]
        lines += [f"- `{k}`" for k in s["heldout_keys"]] + ["", "</details>", ""]
    path.write_text("\n".join(lines))


def stage_evaluate(args, export: Path, device) -> dict:
    """The teacher-forced acceptance matrix of the exported (fp16 → fp32) zoo, plus a few greedy samples."""
    from . import heldout_prompts, heldout_texts, load
    from .evaluate import acceptance_matrix

    tokenizer, target, drafters = load(device=device, path=export)
    texts = heldout_texts(path=export)
    started = time.time()
    matrix = acceptance_matrix(tokenizer, target, drafters, texts, draft_len=5,
                               skip=min(32, args.snippet_tokens // 4), max_tokens=args.snippet_tokens)
    log(f"evaluate: teacher-forced matrix in {time.time() - started:.1f}s")
    for metric in ("greedy_al", "sampling_al"):
        print(f"\n{metric} (K=5)\n{matrix.to_markdown(metric)}\n", flush=True)
    samples = {}
    for domain, prompts in heldout_prompts(n=1, prompt_tokens=min(48, args.snippet_tokens // 2), path=export).items():
        ids = tokenizer(prompts[0], return_tensors="pt").input_ids.to(device)
        with torch.no_grad():
            generated = target.generate(ids, max_new_tokens=64, do_sample=False)
        samples[domain] = {"prompt": prompts[0], "continuation": tokenizer.decode(generated[0, ids.shape[1]:])}
    losses = {name: {d: round(heldout_loss(model, tokenizer, texts[d], device, args.snippet_tokens), 4) for d in texts}
              for name, model in {"target": target, **drafters}.items()}
    log("evaluate: held-out CE (nats/token) of the target: " +
        ", ".join(f"{d} {v:.3f}" for d, v in losses["target"].items()))
    result = {"acceptance": matrix.to_dict(), "winners": matrix.winners(), "heldout_loss": losses,
              "samples": samples}
    (export / "weights" / "evaluation.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    return result


def install(export: Path) -> None:
    """Replace the package's ``weights/`` and ``data/`` with the export."""
    for part in ("weights", "data"):
        destination = ZOO_DIR / part
        if destination.exists():
            shutil.rmtree(destination)
        shutil.copytree(export / part, destination)
    log(f"installed into {ZOO_DIR}")


def main(argv=None) -> dict:
    """Run the zoo training pipeline (``hedgespec zoo train``); returns the evaluation record."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    torch.set_num_threads(args.threads)
    if args.threads == 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu ({platform.processor() or platform.machine()}, {args.threads} thread(s))"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"out {out}, device {device_name}, domains {args.domains + [c.split('=')[0] for c in args.corpus]}")
    started = time.time()
    data_stats = stage_data(args, out)
    domains = data_stats["domains"]
    tokenizer = load_tokenizer(out / "tokenizer")
    stage_snippets(args, out, data_stats, tokenizer)
    target_record = stage_target(args, out, domains, tokenizer, device)
    drafter_record = stage_drafters(args, out, domains, tokenizer, device, target_record)
    export = stage_export(args, out, data_stats, target_record, drafter_record, device_name)
    result = stage_evaluate(args, export, device)
    if args.install:
        install(export)
    log(f"all done in {(time.time() - started) / 60:.1f} min; winners {result['winners']}")
    return result


if __name__ == "__main__":
    main()
