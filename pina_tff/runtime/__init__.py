"""Process-level robustness: locks, output-path checks, signal handling, stale-file sweeps.

Nothing here imports TensorFlow or TFF, so the pieces can run before the heavy imports.
"""
