#!/usr/bin/env bash
# The GPU check: the CUDA benchmark at ImageNet scale, then the CUDA tests, in under 4 minutes
# on one H100/H200 (tuning compiles up to 8 Triton and 17 CUDA C launch configurations per
# kernel and dtype once; each compiles in about a second or less).
# Logs and the benchmark's JSON go to $OUT (default: bench-results/).
# The benchmark runs first: a test run cut short still leaves the figures.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
out="${OUT:-bench-results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/device.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    >>"$out/device.txt" 2>&1
python3 -c "import cupy; print('cupy', cupy.__version__)" >>"$out/device.txt" 2>&1
cat "$out/device.txt"

timeout -k 5 120 python3 benchmarks/gpu_bench.py "$out/gpu_bench.json" --reps 10 2>&1 | tee "$out/bench.log"
bench=${PIPESTATUS[0]}

timeout -k 5 100 python3 -m pytest -q -m gpu -rs --durations=15 -p no:cacheprovider \
    -p benchmarks.pytest_progress tests/test_gpu.py tests/test_torch_backend.py 2>&1 \
    | tee "$out/tests.log"
tests=${PIPESTATUS[0]}

echo "benchmark exit $bench, tests exit $tests"
[ "$bench" -eq 0 ] && [ "$tests" -eq 0 ]
