"""``hrf-jax bench``: params, FLOPs, train-step time, latency, peak RSS and MFU per config.

``variants`` names the measured configs, ``measure`` times one in this process, ``worker``
runs one train step measurement in a fresh process, ``machine`` probes the machine, ``feed``
times the input pipeline, ``suite`` runs the whole benchmark and ``report`` renders its tables.
``reference`` runs the side-by-side with the official PyTorch SpeechFormer, whose side is
``torch_worker`` (a script for a python with torch and no hrf_jax: of this package it imports
only ``procmem``, stdlib-only, as a plain module of its folder; the workers' own peak RSS).
This module and ``variants`` import no JAX, so ``hrf-jax bench --help`` stays light.
"""
