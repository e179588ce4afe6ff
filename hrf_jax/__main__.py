"""``python -m hrf_jax`` runs the ``hrf-jax`` command."""

import sys

from hrf_jax.cli import console

sys.exit(console())
