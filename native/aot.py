"""Ahead-of-time compile the selection kernels into C sources that embed their cubins (no GPU needed).

    python native/aot.py --out BUILD_DIR [--archs 80,90]

Writes ``hs_kernels_gen.c``: one cubin per specialisation (architecture × logits dtype × mode for γ; architecture ×
learner × loss × sampled choice × width for the update) and a table describing them, which
``native/hedgespec_kernels.c`` searches at launch time. Triton's own compiler produces the cubins (``triton.compile``
for a ``GPUTarget``, as ``python -m triton.tools.compile`` does); its C templates are not used, because they call
``exit()`` on a driver error and must link against ``libcuda`` — our launcher returns status codes and loads the
driver at run time instead.

The specialisations fix what the Python launchers choose per shape: vocabulary chunks of ``BLOCK_V = 2048`` tokens
merged over at most ``BLOCK_C = 128`` chunks (vocabularies ≤ 262 144), drafters loaded ``ROWS = 4`` at a time, no
top-k / top-p pre-pass (pass warped logits, as the Python launcher does for those), learner widths of 32 (1 warp)
and 256 (4 warps) drafters.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's current default, stated (it warns when unset)

BLOCK_V, BLOCK_C, ROWS = 2048, 128, 4
TOP_LS = (2, 4, 8)
DTYPES = {"fp32": 0, "fp16": 1, "bf16": 2}
MODES = {"tv": 0, "greedy": 1, "topl": 2}
ALGOS = {"hedge": 0, "normalhedge": 1, "adanormalhedge": 2}
LOSSES = {"acceptance": 1, "expected_length": 2}

POINTERS = {"target_ptr": None, "drafter_ptr": None, "offsets_ptr": "*i64", "hist_ptr": "*fp32", "ws_ptr": "*i32",
            "sem_ptr": "*i32", "regret_ptr": "*fp32", "abs_regret_ptr": "*fp32", "cum_loss_ptr": "*fp32",
            "weights_ptr": "*fp32", "step_ptr": "*i64", "prior_ptr": "*fp32", "u_ptr": "*fp32", "choice_ptr": "*i64",
            "loss_ptr": "*fp32", "gamma_ptr": "*fp32"}
FLOATS = {"scale", "inv_n", "eta", "hedge_rate_num", "log_bracket"}


def signature(kernel, constexprs: dict, logits: str | None = None) -> dict:
    """Triton types of every argument: pointers by role, floats by name, other runtime values 32-bit ints."""
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in POINTERS:
            sig[name] = POINTERS[name] or f"*{logits}"
        else:
            sig[name] = "fp32" if name in FLOATS else "i32"
    return sig


def variants(archs):
    """(arch, kind, fields, constexprs, num_warps) for every specialisation."""
    for arch in archs:
        for dtype in DTYPES:
            for mode in MODES:
                for top_l in (TOP_LS if mode == "topl" else (1,)):
                    const = dict(MODE=MODES[mode], TOP_L=top_l, BLOCK_V=BLOCK_V, BLOCK_C=BLOCK_C,
                                 BLOCK_CL=BLOCK_C * top_l if mode == "topl" else 1, OFFSET_TABLE=False, TABLE_ALIGN=1,
                                 SCHEDULE=0 if mode == "tv" else 1, FUSED=False, LOSS=0, CHUNK=False, ALGO=0,
                                 HAS_ETA=False, HAS_PRIOR=False, SAMPLE=False, BLOCK_N=2, ROWS=ROWS)
                    yield arch, "acceptance", dict(dtype=DTYPES[dtype], mode=MODES[mode], top_l=top_l), const, 4, dtype
        for algo in ALGOS:
            for loss in LOSSES:
                for sample in (False, True):
                    for block_n in (32, 256):
                        const = dict(LOSS=LOSSES[loss], CHUNK=False, ALGO=ALGOS[algo], HAS_ETA=False,
                                     HAS_PRIOR=False, SAMPLE=sample, BLOCK_N=block_n)
                        fields = dict(algo=ALGOS[algo], loss=LOSSES[loss], sample=int(sample), block_n=block_n)
                        yield arch, "hedge", fields, const, 1 if block_n <= 32 else 4, None


def compile_all(archs, out: Path) -> int:
    import triton
    from triton.backends.compiler import GPUTarget

    from hedgespec_fast.kernels import acceptance, hedge

    kernels = {"acceptance": acceptance._acceptance_kernel, "hedge": hedge._hedge_kernel}
    blobs, rows = [], []
    start = time.time()
    for index, (arch, kind, fields, const, warps, logits) in enumerate(variants(archs)):
        kernel = kernels[kind]
        source = triton.compiler.ASTSource(fn=kernel, signature=signature(kernel, const, logits), constexprs=const)
        target = GPUTarget("cuda", arch, 32)
        options = triton.compiler.make_backend(target).parse_options(dict(num_warps=warps, num_stages=3))
        compiled = triton.compile(source, target=target, options=options.__dict__)
        meta = compiled.metadata
        if getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0):
            raise RuntimeError(f"{kind} {fields} needs scratch memory, which this launcher does not allocate")
        cubin = compiled.asm["cubin"]
        blobs.append(f"static const unsigned char cubin_{index}[{len(cubin)}] = {{{','.join(map(str, cubin))}}};")
        values = ", ".join(str(fields.get(name, 0)) for name in ("dtype", "mode", "top_l", "algo", "loss", "sample",
                                                                    "block_n"))
        rows.append(f"  {{{arch}, {0 if kind == 'acceptance' else 1}, {values}, {warps}, {meta.shared}, "
                    f"\"{meta.name}\", cubin_{index}, {len(cubin)}}},")
        print(f"[{index + 1}] sm_{arch} {kind} {fields}: {len(cubin)} B cubin, {meta.shared} B shared", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    text = ["/* Generated by native/aot.py from kernels/ with Triton " + triton.__version__ + ": do not edit. */",
            '#include "hs_variants.h"', "", *blobs, "",
            "const hs_variant hs_variants[] = {", *rows, "};",
            f"const int hs_variant_count = {len(rows)};", ""]
    (out / "hs_kernels_gen.c").write_text("\n".join(text))
    print(f"{len(rows)} specialisations for sm_{', sm_'.join(map(str, archs))} in {time.time() - start:.0f} s")
    return len(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--archs", default="80,90", help="compute capabilities, e.g. 80,90")
    args = ap.parse_args(argv)
    compile_all([int(a) for a in args.archs.split(",") if a], args.out)


if __name__ == "__main__":
    main()
