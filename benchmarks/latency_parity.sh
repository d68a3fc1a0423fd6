#!/usr/bin/env bash
# Latency and parity of a bundle on ../shared/datasets: the numbers of BENCHMARKS.md, "Latency and parity".
#
#   benchmarks/latency_parity.sh [BUNDLE] [OUT]
#
# BUNDLE defaults to the default bundle `edge-retina demo` builds; OUT (default artifacts/bench) gets
# the JSON reports, the HTML reports and the inputs made here (a 12 MP JPEG, the labels CSVs); a
# re-run replaces them.
# BENCH overrides how `edge-retina bench` is called; ITERATIONS and THREADS tune the latency runs;
# CHECKPOINT is the teacher checkpoint when it is not the family's embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${1:-artifacts/demo/default-bundle}
OUT=${2:-artifacts/bench}
PY=${PY:-.venv/bin/python}
BENCH=${BENCH:-"$PY -m edge_retina bench"}
DATASETS=${EDGE_RETINA_DATASETS:-../shared/datasets}
ITERATIONS=${ITERATIONS:-20}
THREADS=${THREADS:-1}  # one thread per engine: see BENCHMARKS.md (oversubscribed shared machine)
TEACHER=(${CHECKPOINT:+--checkpoint "$CHECKPOINT"})
mkdir -p "$OUT/labels"

# A 12 MP camera JPEG (4000x3000, quality 95) from a real HEI-MED original, as in bench_preprocess.py.
$PY -c "import sys; from pathlib import Path; sys.path.insert(0, 'benchmarks'); \
from bench_preprocess import make_12mp_jpeg; \
make_12mp_jpeg(Path('$DATASETS/heimed/full/heimed_00000003.jpg'), Path('$OUT/camera-12mp.jpg'))"

# Latency: deployed engines vs the research-code way, on the 12 MP JPEG and on the 8 real 4.3 MP originals.
$BENCH latency --bundle "$BUNDLE" --images "$OUT/camera-12mp.jpg" --baseline research "${TEACHER[@]}" --iterations "$ITERATIONS" \
  --threads "$THREADS" --streams 2 --cold-runs 5 --overwrite --out "$OUT/latency-12mp.json" --html "$OUT/latency-12mp.html"
$BENCH latency --bundle "$BUNDLE" --images "$DATASETS/heimed/full" --baseline research "${TEACHER[@]}" \
  --iterations $(( (ITERATIONS + 3) / 4 )) --threads "$THREADS" --streams 2 --cold-runs 0 --overwrite --out "$OUT/latency-heimed-full.json"

# Parity against the PyTorch FP32 teacher on each shared dataset's held-out test split.
status=0
for dataset in heimed rimone eye4class odir palm; do
  $BENCH labels --dataset "$dataset" --split test --datasets "$DATASETS" --out "$OUT/labels/$dataset-test.csv"
  $BENCH parity --bundle "$BUNDLE" --labels "$OUT/labels/$dataset-test.csv" --reference teacher "${TEACHER[@]}" \
    --threads "$THREADS" --overwrite --out "$OUT/parity-$dataset.json" --html "$OUT/parity-$dataset.html" \
    --latency-json "$OUT/latency-12mp.json" || status=$?
done
exit $status
