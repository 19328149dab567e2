#!/usr/bin/env bash
# The GPU check: the per-pass benchmark at ImageNet scale, full solves in both regimes, the
# host-to-device streaming benchmark, NCCL on one rank, then the CUDA tests. With
# --diagnostics it also shows where a pass's time goes (kernels, idle time, a timeline of
# the host's calls in sweeps and in two short solves, and the solver's own host work per
# pass on this machine's CPU), after the benchmark.
# On one H200 (2026-11-27) the default check took 204 s, 124 s of it the CUDA tests (they
# compile every tuning candidate: at K = 3000, 10-11 Triton and 9-23 CUDA C ones per dtype);
# with --diagnostics it took 235 s. Each phase's end is printed last.
# Logs, the benchmarks' JSON and the timeline's traces go to $OUT (default:
# bench-results/); a runner that brings back fewer files can point OUT elsewhere and pack
# it. On the device runner here (eight files back), with its own $OUT:
#   OUT=/tmp/res bash benchmarks/gpu_check.sh; tar czf "$OUT/res.tgz" -C /tmp res; cp /tmp/res/*.log "$OUT"
# The benchmarks run first: a test run cut short still leaves the figures.
set -u
case "${1:-}" in
    "" | --diagnostics) ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--diagnostics]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
out="${OUT:-bench-results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/device.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    >>"$out/device.txt" 2>&1
python3 -c "import cupy; print('cupy', cupy.__version__)" >>"$out/device.txt" 2>&1
cat "$out/device.txt"
phases="seconds since the start, at the end of each phase:"

timeout -k 5 150 python3 benchmarks/gpu_bench.py "$out/gpu_bench.json" --reps 10 2>&1 | tee "$out/bench.log"
bench=${PIPESTATUS[0]}
phases+=" benchmark ${SECONDS}s"

breakdown=0 host=0 solver_host=0
if [ "${1:-}" = "--diagnostics" ]; then
    timeout -k 5 90 python3 benchmarks/gpu_sweep_breakdown.py "$out/gpu_breakdown.json" 2>&1 \
        | grep -v '^{' | tee "$out/breakdown.log"
    breakdown=${PIPESTATUS[0]}
    phases+=" breakdown ${SECONDS}s"
    timeout -k 5 60 python3 benchmarks/gpu_timeline.py "$out" --sweeps 3 --solve 12 2>&1 \
        | tee "$out/timeline.log"
    host=${PIPESTATUS[0]}
    phases+=" timeline ${SECONDS}s"
    timeout -k 5 60 python3 benchmarks/solver_host.py --ks 3000 --rounds 5 2>&1 \
        | tee "$out/solver_host.log"
    solver_host=${PIPESTATUS[0]}
    phases+=" solver host ${SECONDS}s"
fi

timeout -k 5 90 python3 benchmarks/gpu_solve.py "$out/gpu_solve.json" 2>&1 | tee "$out/solve.log"
solve=${PIPESTATUS[0]}
phases+=" solve ${SECONDS}s"

OUT="$out" timeout -k 5 60 python3 benchmarks/gpu_stream.py
stream=$?
phases+=" stream ${SECONDS}s"

# NCCL on one rank: the distributed path with CUDA tensors end to end.
timeout -k 5 60 torchrun --standalone --nproc_per_node=1 examples/distributed_torchrun.py --exact \
    2>&1 | tee "$out/distributed.log"
dist=${PIPESTATUS[0]}
phases+=" distributed ${SECONDS}s"

timeout -k 5 300 python3 -m pytest -q -m gpu -rs --durations=15 -p no:cacheprovider \
    -p benchmarks.pytest_progress tests/test_gpu.py \
    tests/test_device_stream.py 2>&1 | tee "$out/tests.log"
tests=${PIPESTATUS[0]}
phases+=" tests ${SECONDS}s"

echo "benchmark $bench, breakdown $breakdown, timeline $host, solver host $solver_host," \
    "solve $solve, stream $stream, distributed $dist, tests $tests (exit codes)"
echo "$phases"
[ "$bench" -eq 0 ] && [ "$breakdown" -eq 0 ] && [ "$host" -eq 0 ] && [ "$solver_host" -eq 0 ] \
    && [ "$solve" -eq 0 ] && [ "$stream" -eq 0 ] && [ "$dist" -eq 0 ] && [ "$tests" -eq 0 ]
