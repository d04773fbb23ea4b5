"""Shared NumPy kernels: keyed statistics and time units.

Stages, sources, sinks and codecs alike build on these, so they sit below all of them:
a kernel imports NumPy and the standard library, and nothing of aflow but
:mod:`aflow.errors` (``tests/test_layers.py`` checks it).
"""
