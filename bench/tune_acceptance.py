"""Sweep the acceptance kernel's launch knobs (vocabulary chunk ``block_v``, ``num_warps``, tv schedule) on a GPU.

    python bench/tune_acceptance.py --out tune.json

Prints, per shape and mode, the CUDA-graph time of every configuration and the heuristic's choice, so the heuristic
in ``kernels/acceptance._plan`` can be checked against the best configuration. Times are reported, never asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_kernels import Timer, copy_bandwidth, logits  # noqa: E402

from hedgespec_fast.kernels import acceptance  # noqa: E402

SHAPES = [(8, 8, 128256), (16, 8, 151936), (8, 1, 128256)]
BLOCKS = [512, 1024, 2048, 4096]
WARPS = [2, 4, 8]
ROWS = [1, 2, 4, 8]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--modes", default="tv,greedy")
    ap.add_argument("--reps", type=int, default=100)
    args = ap.parse_args(argv)
    device = torch.device("cuda")
    timer = Timer(torch, device, args.reps)
    bandwidth = copy_bandwidth(torch, device, timer)
    rows = []
    for n, m, vocab in SHAPES:
        target, drafters = logits(torch, n, m, vocab, torch.bfloat16, device)
        out = torch.empty(n, m, device=device)
        floor = (n + 1) * m * vocab * 2 / (bandwidth * 1e9) * 1e6
        for mode in args.modes.split(","):
            schedules = ("fused", "two_launch") if mode == "tv" else ("fused",)
            default = timer.graph(lambda: acceptance.acceptance_probs(target, drafters, 1.0, mode, out=out))
            best = (default, "heuristic")
            for schedule in schedules:
                for block_v in BLOCKS:
                    for warps in WARPS:
                        for group in ROWS:
                            if block_v // (32 * warps) < 4 or group * block_v > 16384 or group > n:
                                continue  # too few elements a thread, too many registers, or more rows than drafters
                            us = timer.graph(lambda: acceptance.acceptance_probs(
                                target, drafters, 1.0, mode, out=out, block_v=block_v, schedule=schedule,
                                num_warps=warps, rows=group))
                            rows.append({"N": n, "m": m, "V": vocab, "mode": mode, "schedule": schedule,
                                         "block_v": block_v, "num_warps": warps, "rows": group, "graph_us": us,
                                         "floor_us": floor})
                            if us is not None and us < best[0]:
                                best = (us, f"{schedule} block_v={block_v} warps={warps} rows={group}")
            print(f"N{n} m{m} V{vocab} {mode:<6} floor {floor:6.2f} us  heuristic {default:7.2f} us  "
                  f"best {best[0]:7.2f} us ({best[1]})", flush=True)
            rows.append({"N": n, "m": m, "V": vocab, "mode": mode, "heuristic_us": default, "best_us": best[0],
                         "best": best[1], "floor_us": floor})
    with open(args.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "bandwidth_GBps": bandwidth, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
