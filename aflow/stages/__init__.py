"""Stages: element-wise, batch-wise, concurrent, timed, routing and data-loading steps."""
