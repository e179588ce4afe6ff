"""Benchmarks that need a source checkout (``export_table``) and their committed results;
``hrf-jax bench`` itself lives in ``hrf_jax.bench``. Never asserted in tests."""
