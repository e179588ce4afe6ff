"""``python -m hrf_jax`` runs the ``hrf-jax`` command."""

import sys

from hrf_jax.cli import main

sys.exit(main())
