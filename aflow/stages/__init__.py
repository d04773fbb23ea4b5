"""Stages: element-wise, batch-wise, concurrent, timed, decoding, windowing and data-loading
steps."""
