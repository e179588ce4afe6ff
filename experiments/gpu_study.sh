#!/usr/bin/env bash
# Cells of the HRF study (experiments/hrf_study.py) on a lent GPU machine: prepares the test
# bed's corpus there, starts one process per cell (variant:seed) at once (the GPU is mostly idle
# under one light or large run at batch 32; each process compiles its own steps), and packs
# what `hrf_study report` reads (config, run_info, metrics.jsonl, final.json, the logs; no
# checkpoints) into $OUT/runs.tar.gz. Runs still going $DEADLINE_S s after the script
# started are stopped: their metrics.jsonl (per-epoch validation) comes back, no final.json.
# Touches $DONE_FILE (if set) when training has ended, for a benchmark waiting on the GPU.
# Usage: OUT=dir [DEADLINE_S=480] bash experiments/gpu_study.sh TESTBED "large:0 light:0 ..." \
#            [more `hrf_study train` options, e.g. --recipe sgd]
set -uo pipefail
testbed=${1:?usage: gpu_study.sh TESTBED CELLS [train options]}; cells=${2:?}; shift 2
t0=$(date +%s)
trap '[ -n "${DONE_FILE:-}" ] && touch "$DONE_FILE"' EXIT  # also when preparing fails
out=${OUT:?set OUT}; work=${WORKDIR:-/tmp/study_runs}
mkdir -p "$out" "$work/logs"
source experiments/gpu_env.sh || exit 1
python3 -m experiments.hrf_study prepare --testbed "$testbed" --workers "$(nproc)" \
  > "$work/logs/prepare.log" 2>&1 || { tail -n 20 "$work/logs/prepare.log"; exit 1; }
echo "prepared in $(( $(date +%s) - t0 )) s"
left=$(( ${DEADLINE_S:-480} - ($(date +%s) - t0) ))
for cell in $cells; do
  timeout "$left" python3 -m experiments.hrf_study train --testbed "$testbed" \
    --variants "${cell%%:*}" --seeds "${cell##*:}" --workdir "$work" "$@" \
    > "$work/logs/${cell/:/_}.log" 2>&1 &
done
wait
echo "training ended at $(( $(date +%s) - t0 )) s"
[ -n "${DONE_FILE:-}" ] && touch "$DONE_FILE"  # the GPU is free: a waiting benchmark may time
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$work/logs/gpu.txt"
(cd "$work" && find . \( -name checkpoints -o -name best \) -prune -o -type f -print \
  | tar czf "$out/runs.tar.gz" -T -)
grep -h '"epoch"' "$work"/synthetic_*/*/*/*/*/metrics.jsonl 2>/dev/null | wc -l \
  | xargs echo "epochs recorded:"
find "$work" -name final.json | sed "s|$work/||"
