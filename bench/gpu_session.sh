#!/usr/bin/env bash
# Everything a lent GPU can tell us, in calls of under 10 minutes each (the device tool's limit). Each stage installs
# the package (a fresh machine is bare), runs its steps with their own time limits, prints each step's tail and packs
# every log and JSON into $OUT/results.tgz (the device tool returns at most 8 files).
#
#   bash bench/gpu_session.sh check   # versions, CUDA tests (kernels + engine), kernel microbenchmarks
#   bash bench/gpu_session.sh time    # engine overhead per round, end-to-end bench on the zoo, trees, ncu profile
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
tests)
    TAIL=40 step all_tests 540 $PY -m pytest -q -n 16 --maxfail=30 -p no:cacheprovider
    ;;
esac
