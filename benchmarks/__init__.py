"""Speed, memory and size benchmarks of hrf-jax (``hrf-jax bench``); never asserted in tests."""
