#!/usr/bin/env bash
# One GPU benchmark on a fresh lent H100/H200 box: installs hrf-jax with CUDA JAX, runs a
# short `hrf-jax bench` (about 5 minutes) and writes JSON + the markdown table into $OUT.
# Usage, from the repository root:  OUT=/some/dir bash benchmarks/gpu_check.sh
set -euo pipefail
OUT="${OUT:-$PWD/bench_out}"
mkdir -p "$OUT"
python3 -m venv .venv-gpu
. .venv-gpu/bin/activate
pip install -q --upgrade pip
pip install -q -e . "jax[cuda12]" 2>&1 | tail -3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" || true
python -c "import jax; print(jax.devices())" | tee -a "$OUT/gpu.txt"
# each train measurement is capped at 120 s, so the whole run stays under 6 minutes
timeout 330 hrf-jax bench --backbones speechformer conformer \
  --variants light light_merged large S --frames 651 --repeats 5 --repeats-latency 50 \
  --scaling speechformer:S --scaling-frames 651 2400 --timeout 120 \
  --out "$OUT/bench_gpu.json" > "$OUT/bench_gpu.md" 2> "$OUT/bench_gpu.log" \
  || echo "bench exited with $? (see bench_gpu.log)" | tee -a "$OUT/bench_gpu.log"
tail -40 "$OUT/bench_gpu.md" "$OUT/bench_gpu.log"
