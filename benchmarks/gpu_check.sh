#!/usr/bin/env bash
# Check the GPU path end to end on an offline GPU machine, in under 9 minutes.
#
# For every learned method's `paper` profile on HER2ST-6 (leave-one-section-out), with a
# time cap per method, prints: seconds per training step, GPU utilisation (sampled by
# nvidia-smi), peak GPU memory, folds finished and mean PCC. Targets on one H200:
# HisToGene <= 0.1 s per step; `--methods all --profile paper` within 10 minutes.
#
# The machine has no network: bring the wheels gr2st needs beyond its own stack and the
# data, both prepared here by benchmarks/prepare_gpu_carry.sh into .gpu/ (git-ignored):
#   .gpu/wheels/*.whl   installed with pip --no-index --no-deps into a scratch folder
#   .gpu/her2st/        ST-cnts, ST-spotfiles, ST-imgs of B4, C2-C6
# Run it from the repository root (the device tool: `carry` [".gpu"]):
#   bash benchmarks/gpu_check.sh                 # all learned methods, 55 s each
#   CAP=120 METHODS=histogene,gr2st bash benchmarks/gpu_check.sh
# Everything lands in $OUT (default $OUT or results/gpu_check): one folder per method,
# gpu_check.json (the table) and the nvidia-smi samples.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CAP=${CAP:-55}                 # seconds per method (training and prediction)
FEATURE_CAP=${FEATURE_CAP:-150}
METHODS=${METHODS:-gr2st,mclstexp,reg2st,histogene,hist2st,thitogene,hggep}
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-$REPO/.gpu/her2st}
OUT=${OUT:-$REPO/results/gpu_check}
SITE=${SITE:-/tmp/gr2st-site}
PY=${PYTHON:-python3}
START=$SECONDS
say() { echo "== $* ($((SECONDS - START)) s)"; }

mkdir -p "$OUT"
if compgen -G ".gpu/wheels/*.whl" > /dev/null; then
    say "installing the carried wheels into $SITE (no network)"
    timeout 120 "$PY" -m pip install -q --no-index --no-deps --target "$SITE" .gpu/wheels/*.whl \
        || echo "warning: some carried wheels did not install"
fi
export PYTHONPATH="$SITE:$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}


say "environment"
timeout 60 "$PY" -m gr2st --version || { echo "gr2st does not import; stopping"; exit 1; }
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

say "features and patches of HER2ST-6 (cached for every method)"
CACHE="$OUT/cache"
timeout "$FEATURE_CAP" "$PY" -m gr2st features --data "$DATA" --cache "$CACHE" --device "$DEVICE" --no-progress \
    > "$OUT/features.log" 2>&1
echo "features: exit $? ($(tail -n 1 "$OUT/features.log"))"

for method in ${METHODS//,/ }; do
    say "$method (paper profile, cap ${CAP} s)"
    samples="$OUT/$method.nvidia-smi.csv"
    sampler=""
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits \
            -lms 250 > "$samples" 2> /dev/null &
        sampler=$!
    fi
    # One fold at a time is saved under $OUT/$method/folds as it finishes.
    timeout --signal=INT --kill-after=10 "$CAP" \
        "$PY" -m gr2st benchmark --data "$DATA" --cache "$CACHE" --methods "$method" \
        --profile paper --device "$DEVICE" --out "$OUT/$method" --no-progress --no-figures \
        --checkpoint-every 600 > "$OUT/$method.log" 2>&1
    echo "exit $? (124/130: stopped at the cap)"
    [ -n "$sampler" ] && kill "$sampler" 2> /dev/null
done

say "report"
"$PY" "$REPO/benchmarks/gpu_check_report.py" --out "$OUT" --methods "$METHODS" --cap "$CAP"
say "done"
