"""``python -m hrf_jax_runtime MODEL AUDIO...``."""

import sys

from hrf_jax_runtime.model import main

sys.exit(main())
