#!/usr/bin/env bash
# The synthetic-corpus experiment grid on a lent GPU machine (no network there): Python
# packages the image lacks travel as wheels in .whl/ (see experiments/README.md).
# Usage: bash experiments/gpu_run.sh OUT_DIR
set -uo pipefail
out=${1:?usage: gpu_run.sh OUT_DIR}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export HRF_JAX_DATA=/tmp/hrf_data JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
python3 -c "import jax, flax, optax, orbax.checkpoint, tensorflow_datasets, grain, hrf_jax.loop;
print(jax.__version__, flax.__version__, jax.devices())" || exit 1
t0=$(date +%s)
python3 -m hrf_jax.cli prepare synthetic --workers 16 > "$out/prepare.log" 2>&1 || exit 1
echo "prepared in $(( $(date +%s) - t0 )) s"
# one process per (backbone, variant); its three seeds reuse the compilation cache
for b in conformer speechformer convtransformer; do
  for v in light light_hrf4 large; do
    python3 -m experiments.run "synthetic_$b" --variants "$v" --workdir /tmp/runs \
      --results-dir /tmp/partial > "/tmp/log_${b}_${v}.txt" 2>&1 &
  done
done
wait
tail -n 15 /tmp/log_*.txt > "$out/grid.log"
python3 -m experiments.run synthetic_all --workdir /tmp/runs --results-dir "$out" \
  >> "$out/grid.log" 2>&1
echo "grid done in $(( $(date +%s) - t0 )) s"
