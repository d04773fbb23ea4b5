"""Live statistics of a run: a terminal progress display and a Prometheus endpoint.

Both read ``run.statistics()`` snapshots; neither touches the hot path. They need the
``cli`` extra (``pip install rich prometheus-client``, the ``cli`` extra).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import anyio

from ._core.run import Monitor, Run
from .stats import RunStatistics, StageStatistics

__all__ = ["Monitor", "Progress", "serve_metrics", "watch"]


def _rate(now: StageStatistics, before: StageStatistics | None, seconds: float) -> float:
    if before is None or seconds <= 0:
        return 0.0
    return (now.items_out - before.items_out) / seconds


class Progress:
    """A live table on the terminal: per stage rows/s, MB/s, errors, buffer fill and blocked
    time.

    Args:
        interval: seconds between refreshes.
        force: show it even when standard error is not a terminal.
    """

    def __init__(self, interval: float = 0.5, *, force: bool = False) -> None:
        self.interval = interval
        self.enabled = force or sys.stderr.isatty()

    def render(self, stats: RunStatistics, before: RunStatistics | None) -> Any:
        """A rich table for ``stats`` (rates against the ``before`` snapshot)."""
        from rich.table import Table

        seconds = stats.seconds - (before.seconds if before is not None else 0.0)
        previous = {s.name: s for s in before.stages} if before is not None else {}
        table = Table(title=f"aflow: {stats.seconds:,.1f} s", title_justify="left")
        columns = ("stage", "items out", "rows/s", "MB/s", "errors", "dead", "buffer", "blocked s")
        longest = max((len(s.name) for s in stats.stages), default=5)
        table.add_column("stage", no_wrap=True, min_width=longest)  # names stay whole
        for column in columns[1:]:
            table.add_column(column, justify="right")
        for s in stats.stages:
            old = previous.get(s.name)
            mb = (s.bytes_out - (old.bytes_out if old else 0)) / 1e6 / max(seconds, 1e-9)
            fill = f"{s.buffer_high_water}/{s.buffer_size}" if s.buffer_size else "fused"
            table.add_row(
                s.name,
                f"{s.items_out:,}",
                f"{_rate(s, old, seconds):,.0f}",
                f"{mb:,.1f}",
                f"{s.errors:,}",
                f"{s.dead_lettered:,}",
                fill,
                f"{s.blocked_seconds:.2f}",
            )
        table.caption = (
            f"peak in flight {stats.peak_bytes_in_flight / 1e6:.2f} MB, "
            f"{stats.errors:,} errors ({stats.dead_lettered:,} dead-lettered)"
        )
        return table

    async def __call__(self, run: Run[Any]) -> None:
        """Refresh the display until cancelled (pass it as ``aflow.run(monitor=...)``)."""
        if not self.enabled:
            await anyio.sleep_forever()
        from rich.console import Console
        from rich.live import Live

        before: RunStatistics | None = None
        with Live(console=Console(stderr=True), refresh_per_second=4, transient=False) as live:
            try:
                while True:
                    stats = run.statistics()
                    live.update(self.render(stats, before))
                    before = stats
                    await anyio.sleep(self.interval)
            finally:
                live.update(self.render(run.statistics(), before))


class _Collector:
    """Prometheus collector reading the run's statistics at scrape time."""

    def __init__(self, run: Run[Any]) -> None:
        self.run = run

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.run.statistics()
        counters = {
            "items_in": "Elements or rows received",
            "items_out": "Elements or rows emitted",
            "batches_out": "Array batches emitted",
            "bytes_out": "Bytes of array batches emitted",
            "errors": "Items that failed: skipped or sent to a dead-letter target",
            "dead_lettered": "Failed items sent to a dead-letter target",
            "busy_seconds": "Seconds spent in the stage's own work",
            "blocked_seconds": "Seconds waiting for room downstream (backpressure)",
        }
        for field, doc in counters.items():
            family = CounterMetricFamily(f"aflow_stage_{field}", doc, labels=["stage"])
            for s in stats.stages:
                family.add_metric([s.name], float(getattr(s, field)))
            yield family
        fill = GaugeMetricFamily(
            "aflow_stage_buffer_high_water", "Most messages waiting", labels=["stage"]
        )
        for s in stats.stages:
            fill.add_metric([s.name], float(s.buffer_high_water))
        yield fill
        yield GaugeMetricFamily(
            "aflow_bytes_in_flight", "Array bytes in buffers now", value=stats.bytes_in_flight
        )
        yield GaugeMetricFamily(
            "aflow_peak_bytes_in_flight",
            "Most array bytes ever in buffers",
            value=stats.peak_bytes_in_flight,
        )


def serve_metrics(port: int, host: str = "127.0.0.1") -> Monitor:
    """A monitor serving the run's statistics in Prometheus text format on
    ``http://host:port/metrics`` (prometheus-client's server, in a daemon thread) while
    the run lasts."""

    async def monitor(run: Run[Any]) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        registry.register(_Collector(run))
        server, thread = start_http_server(port, addr=host, registry=registry)
        try:
            await anyio.sleep_forever()
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    return monitor


def watch(*monitors: Monitor) -> Monitor:
    """One monitor running several side by side (for ``aflow.run(monitor=...)``)."""

    async def both(run: Run[Any]) -> None:
        async with anyio.create_task_group() as tg:
            for m in monitors:
                tg.start_soon(m, run)

    return both
