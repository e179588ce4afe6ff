#!/usr/bin/env bash
# The synthetic-corpus experiment grid on a lent GPU machine (no network there): Python
# packages the image lacks travel as wheels in .whl/ (see experiments/README.md).
# Usage: bash experiments/gpu_run.sh OUT_DIR [backbone:variant ...] (default: all nine rows)
# One process per row, all rows at once, its seeds one after another: a shared persistent
# compilation cache lets seeds 1 and 2 skip XLA compilation (27 processes compiling at once
# on 16 cores were slower). Cells still running after $LIMIT s are dropped and the table
# holds the finished ones (its `runs` column says how many).
set -uo pipefail
out=${1:?usage: gpu_run.sh OUT_DIR [backbone:variant ...]}; shift
rows=${*:-conformer:light conformer:light_hrf4 conformer:large speechformer:light
speechformer:light_hrf4 speechformer:large convtransformer:light convtransformer:light_hrf4
convtransformer:large}
mkdir -p "$out"
source experiments/gpu_env.sh || exit 1  # wheels of .whl/, PYTHONPATH, caches
t0=$(date +%s)
python3 -m hrf_jax prepare synthetic --workers 16 > "$out/prepare.log" 2>&1 || exit 1
echo "prepared in $(( $(date +%s) - t0 )) s"
for row in $rows; do
  timeout "${LIMIT:-600}" python3 -m experiments.run "synthetic_${row%%:*}" \
    --variants "${row##*:}" --seeds 0 1 2 --workdir /tmp/runs --results-dir /tmp/partial \
    > "/tmp/log_${row/:/_}.txt" 2>&1 &
done
wait
tail -n 4 /tmp/log_*.txt > "$out/grid.log"
python3 -m experiments.run synthetic_all --collect-only --workdir /tmp/runs \
  --results-dir "$out" --name "${NAME:-synthetic_all}" >> "$out/grid.log" 2>&1
echo "grid done in $(( $(date +%s) - t0 )) s"
