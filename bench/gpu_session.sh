#!/usr/bin/env bash
# Everything a lent GPU can tell us, in calls of under 10 minutes each (the device tool's limit). Each stage installs
# the package (a fresh machine is bare), runs its steps with their own time limits, prints each step's tail and packs
# every log and JSON into $OUT/results.tgz (the device tool returns at most 8 files).
#
#   bash bench/gpu_session.sh check   # versions, CUDA tests (kernels + engine), kernel microbenchmarks
#   bash bench/gpu_session.sh time    # engine overhead per round, end-to-end bench on the zoo, trees, ncu profile
#   bash bench/gpu_session.sh decode  # CUDA tests of the static/graphed path, then the 8B-shaped decode step
#                                     # (eager vs static vs graphs, vs HF assisted), the C driver vs Python, ncu
#   bash bench/gpu_session.sh tests   # the whole test suite on the GPU machine (its transformers version)
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/out/gpu}
LOGS="$OUT/results"
mkdir -p "$LOGS"
PY=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $LOGS/NAME.log, show the tail
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    echo "   rc=$rc in $((SECONDS - t0)) s"
    tail -n "${TAIL:-30}" "$LOGS/$name.log" | cut -c1-220
}

pack() { tar czf "$OUT/results.tgz" -C "$OUT" results && rm -rf "$LOGS"; }
trap pack EXIT

$PY -m pip install -q --no-deps --no-build-isolation -e . >"$LOGS/install.log" 2>&1 || { cat "$LOGS/install.log"; exit 1; }
$PY - <<'EOF' | tee "$LOGS/env.txt"
import platform, torch, triton, transformers
print(f"{torch.cuda.get_device_name()} | driver CUDA {torch.version.cuda} | torch {torch.__version__} | "
      f"triton {triton.__version__} | transformers {transformers.__version__} | python {platform.python_version()} | "
      f"cpu cores {__import__('os').cpu_count()}")
EOF

case "${1:-check}" in
check)  # the step limits add up to < 600 s with the install
    TAIL=40 step cuda_tests 240 $PY -m pytest -q -n 8 --maxfail=25 -p no:cacheprovider \
        tests/test_kernels_acceptance.py tests/test_kernels_hedge.py tests/test_cuda_engine.py
    TAIL=12 step backend_tests 60 $PY -m pytest -q -p no:cacheprovider tests/test_engine_backends.py
    TAIL=80 step gpu_kernels 230 $PY bench/gpu_kernels.py --measure-target --out "$LOGS/kernels_gpu.json"
    ;;
time)
    step overhead 90 $PY bench/overhead.py --device cuda --json "$LOGS/overhead_gpu.json"
    BENCH=(-m hedgespec_fast.cli bench --device cuda --workloads mixed --per-domain 2 --max-new-tokens 128
           --out "$LOGS/e2e")
    TAIL=30 step e2e 160 $PY "${BENCH[@]}"
    TAIL=40 step e2e_pools 110 $PY "${BENCH[@]}" --pool-sizes 2,4,8,16
    TAIL=20 step trees 80 $PY bench/trees.py --zoo --device cuda --modes greedy --json "$LOGS/trees_gpu.json"
    TAIL=20 step profile 90 $PY -m hedgespec_fast.cli profile --out "$LOGS/profile"
    if [ -f "$LOGS/profile/hedgespec_profile.ncu-rep" ]; then
        TAIL=40 step ncu_summary 20 ncu --import "$LOGS/profile/hedgespec_profile.ncu-rep" --print-summary per-kernel
    fi
    ;;
decode)  # issue 12 and 13's GPU figures; < 8 minutes with the install
    TAIL=20 step graph_tests 120 $PY -m pytest -q -n 8 -p no:cacheprovider tests/test_cuda_engine.py \
        tests/test_lossless_greedy.py -k "cuda or static"
    TAIL=45 step decode 300 $PY bench/gpu_decode.py --out "$LOGS/decode_gpu.json"
    if command -v cmake >/dev/null; then  # the C library: build, its µs for the headline shapes, one ncu report
        step native_build 90 bash -c "cmake -S . -B build -DHS_ARCHS=90 >/dev/null && cmake --build build -j8"
        TAIL=12 step native_bench 30 bash -c "for m in tv greedy; do ./build/hedgespec-kernels-bench --mode \$m \
            --n 8 --m 8 --v 128256; ./build/hedgespec-kernels-bench --mode \$m --n 1 --m 8 --v 128256; done"
        if command -v ncu >/dev/null; then
            TAIL=30 step native_ncu 60 ncu --set basic --launch-count 5 \
                ./build/hedgespec-kernels-bench --mode tv --n 8 --m 8 --v 128256 --iters 5 --warmup 0
        fi
    fi
    ;;
tests)
    TAIL=40 step all_tests 540 $PY -m pytest -q -n 16 --maxfail=30 -p no:cacheprovider
    ;;
esac
