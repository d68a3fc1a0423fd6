#!/usr/bin/env bash
# Distillation of the reference teacher into the default student: the numbers of BENCHMARKS.md,
# "Distillation".
#
#   benchmarks/distillation.sh [WORK] [BUNDLE]
#
# WORK (default runs/bench-distill) gets the caches, checkpoints, the student and the reports; it is
# emptied first, so the wall time is that of a run from empty caches. BUNDLE (default: the default
# bundle `edge-retina demo` builds) supplies the referral thresholds for the decision agreement.
# THREADS is the torch thread count of the distillation (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/bench-distill}
BUNDLE=${2:-artifacts/demo/default-bundle}
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-2}
rm -rf "$WORK"
mkdir -p "$WORK"

# Candidate students against the teacher: parameters, FLOPs, interleaved FP32 latency.
$PY -m converters.distill.compare_students --json "$WORK/students.json"

# The default recipe from empty caches, timed (GNU time: wall clock and peak RSS).
/usr/bin/time -v $PY -m edge_retina distill --work-dir "$WORK" --out "$WORK/student.safetensors" \
  --threads "$THREADS" --quiet 2> >(tee "$WORK/distill.log" >&2)

# Teacher vs student on the held-out splits (val: recipe choices; test: the reported numbers).
THRESHOLDS=()
[ -d "$BUNDLE" ] && THRESHOLDS=(--bundle "$BUNDLE")
$PY -m converters.distill.report --student "$WORK/student.safetensors" --split val --no-latency \
  --json "$WORK/report-val.json" --markdown "$WORK/report-val.md"
$PY -m converters.distill.report --student "$WORK/student.safetensors" --split test "${THRESHOLDS[@]}" \
  --json "$WORK/report-test.json" --markdown "$WORK/report-test.md"
