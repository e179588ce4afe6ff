"""``hrf-jax bench``: params, FLOPs, train-step time, latency, peak RSS and MFU per config.

``variants`` names the measured configs, ``measure`` times one in this process, ``worker``
runs one train step measurement in a fresh process, ``machine`` probes the machine, ``feed``
times the input pipeline, ``suite`` runs the whole benchmark and ``report`` renders its tables.
This module and ``variants`` import no JAX, so ``hrf-jax bench --help`` stays light.
"""
