#!/usr/bin/env bash
# Rerun every test marked `learning` over several seeds and CPU kernels.
#
# A learning test asserts a margin (a model beats the training mean, a loss falls); it
# must hold for any seed and any float summation order, not by the luck of one run.
# The seed reaches the tests through GR2ST_TEST_SEED; the kernel through PyTorch's
# ATEN_CPU_CAPABILITY (default = plain C++, avx2, and avx512 where the CPU has it).
#
# Usage: scripts/check_test_stability.sh [SEEDS] [PYTEST ARGS...]
#        SEEDS defaults to "0 1 2 3 4"; e.g. scripts/check_test_stability.sh "0 1" -x
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
SEEDS=${1:-0 1 2 3 4}
shift || true
KERNELS="default avx2"
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then KERNELS="$KERNELS avx512"; fi

start=$(date +%s)
failures=0
printf '%-8s %-5s %-7s %s\n' kernel seed result summary
for kernel in $KERNELS; do
    for seed in $SEEDS; do
        log=$(mktemp)
        GR2ST_TEST_SEED=$seed ATEN_CPU_CAPABILITY=$kernel OMP_NUM_THREADS=1 \
            "$PYTHON" -m pytest -m learning -q -p no:cacheprovider -n 2 "$@" >"$log" 2>&1
        status=$?
        summary=$(grep -E '[0-9]+ (passed|failed)' "$log" | tail -n 1)
        if [ $status -eq 0 ]; then result=ok; else result=FAIL; failures=$((failures + 1)); fi
        printf '%-8s %-5s %-7s %s\n' "$kernel" "$seed" "$result" "$summary"
        if [ $status -ne 0 ]; then grep -E '^(FAILED|E )' "$log" | head -n 20; fi
        rm -f "$log"
    done
done
echo "wall time: $(( $(date +%s) - start )) s; runs failed: $failures"
exit $(( failures > 0 ))
