"""Sinks: where flows end. Collections and callbacks (collect, reduce, for_each, discard),
routing (broadcast, partition), keyed aggregates, histograms and quantiles, files (CSV,
JSON lines, .npy, Parquet), sockets (TCP, UDP) and asyncio queues."""
