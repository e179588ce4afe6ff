#!/usr/bin/env bash
# One GPU benchmark on a lent H100/H200 machine. Those machines reach no network: their image
# already has jax (CUDA), flax, optax and orbax; what it lacks travels as wheels in .whl/
# (list and download command in experiments/README.md). Runs a short `hrf-jax bench` (every
# train measurement capped at $CAP s, the whole bench at $LIMIT s) and writes the JSON, the
# markdown table and the per-row log into $OUT; rows finished before a cap are kept in the log.
# On an H200 (2026-11-26) no train measurement finished inside a 60 s cap (each is a fresh
# process: imports, CUDA start, XLA compile of the step), hence the 180 s default; the whole
# default run needs a full 10-minute device call.
# Usage, from the repository root:  OUT=/some/dir bash benchmarks/gpu_check.sh
set -uo pipefail
OUT="${OUT:-$PWD/bench_out}"
mkdir -p "$OUT"
source experiments/gpu_env.sh || exit 1  # wheels of .whl/, PYTHONPATH, caches
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" || true
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
timeout "${LIMIT:-540}" python3 -m hrf_jax bench \
  --backbones speechformer conformer convtransformer --variants light light_merged large \
  --frames 651 --repeats 10 --repeats-latency 50 --scaling speechformer:S \
  --scaling-frames 651 2400 --pipeline conformer:light --timeout "${CAP:-180}" \
  --out "$OUT/bench_gpu.json" > "$OUT/bench_gpu.md" 2> "$OUT/bench_gpu.log" \
  || echo "bench exited with $? (see bench_gpu.log)" | tee -a "$OUT/bench_gpu.log"
cat "$OUT/bench_gpu.md"; grep -v '^\s*$' "$OUT/bench_gpu.log" | tail -30
