# Sourced by the GPU scripts (experiments/gpu_run.sh, experiments/gpu_study.sh,
# benchmarks/gpu_check.sh) on a lent GPU machine, from the repository root: that machine
# reaches no network and its image has jax (CUDA), flax, optax and orbax; what it lacks
# travels as wheels in .whl/ (list and download command: experiments/README.md). Installs
# them once into /tmp/site and sets the environment the scripts' Python processes share.
if [ ! -e /tmp/site/.installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || return 1
  touch /tmp/site/.installed
fi
export PYTHONPATH=/tmp/site:$PWD:$PWD/runtime PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache
export HRF_JAX_DATA="${HRF_JAX_DATA:-/tmp/hrf_data}"
