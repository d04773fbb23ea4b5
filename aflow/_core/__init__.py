"""The runtime (private): messages, buffers, segments, the run context and the run handle.

Everything outside this package reaches it through :mod:`aflow.abc` and :mod:`aflow.flow`.
"""
