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

__all__ = ["Monitor", "Progress", "done_line", "serve_metrics", "watch"]


WIDTH_OFF_TERMINAL = 160
"""Columns of the table written to a file or pipe (rich would assume 80)."""


def _rate(now: StageStatistics, before: StageStatistics | None, seconds: float) -> float:
    """Items out per second since ``before`` (since the start without it)."""
    if seconds <= 0:
        return 0.0
    return (now.items_out - (before.items_out if before is not None else 0)) / seconds


def _amount(n: float, unit: str) -> str:
    """``1,234 rows`` or ``12.3 MB``: bytes in decimal megabytes, rows counted."""
    return f"{n / 1e6:,.1f} MB" if unit == "bytes" else f"{n:,.0f} {unit}"


def _duration(seconds: float) -> str:
    """``42 s``, ``3:05`` or ``1:02:03``, as tqdm shows times."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def done_line(stats: RunStatistics, size: tuple[int, str] | None) -> str:
    """The headline: time so far, and with a known input size % done, totals and ETA.

    ``size`` is :meth:`aflow.Run.input_size`: ``(amount, "rows" | "bytes")`` of the source.
    """
    head = f"aflow: {_duration(stats.seconds)}"
    if not stats.stages:
        return head
    source = stats.stages[0]
    if size is None or size[0] <= 0:
        return f"{head}, {_amount(source.items_out, 'rows')} from the source"
    total, unit = size
    fraction = min(1.0, source.items_out / total)
    line = f"{head}, {fraction:.1%} of the input ({_amount(source.items_out, unit)}"
    line += f" of {_amount(total, unit)})"
    if 0 < fraction < 1:
        line += f", ETA {_duration(stats.seconds * (1 - fraction) / fraction)}"
    return line


class Progress:
    """A live table on the terminal, as tqdm and ``vector top`` show progress: % done and
    ETA when the input size is known (files, ``from_array``), then per stage the items
    out, their rate (rows/s, or MB/s for a source of bytes), MB/s of array batches,
    errors, buffer fill and blocked time, with totals below.

    Args:
        interval: seconds between refreshes.
        force: show it even when standard error is not a terminal (then only the final
            table is printed, ending with a newline).
    """

    def __init__(self, interval: float = 0.5, *, force: bool = False) -> None:
        self.interval = interval
        self.enabled = force or sys.stderr.isatty()

    def render(
        self,
        stats: RunStatistics,
        before: RunStatistics | None,
        size: tuple[int, str] | None = None,
    ) -> Any:
        """A rich table for ``stats`` (rates against the ``before`` snapshot; % done and
        ETA against ``size``, the source's ``(amount, unit)``)."""
        from rich.table import Table

        seconds = stats.seconds - (before.seconds if before is not None else 0.0)
        previous = {s.name: s for s in before.stages} if before is not None else {}
        table = Table(title=done_line(stats, size), title_justify="left")
        columns = ("stage", "items out", "rate", "MB/s", "errors", "dead", "buffer", "blocked s")
        source_unit = size[1] if size is not None else "rows"
        rows = []
        for i, s in enumerate(stats.stages):
            old = previous.get(s.name)
            unit = source_unit if i == 0 else "rows"
            mb = (s.bytes_out - (old.bytes_out if old else 0)) / 1e6 / max(seconds, 1e-9)
            fill = f"{s.buffer_high_water}/{s.buffer_size}" if s.buffer_size else "fused"
            rows.append(
                (
                    s.name,
                    _amount(s.items_out, unit),
                    f"{_amount(_rate(s, old, seconds), unit)}/s",
                    f"{mb:,.1f}",
                    f"{s.errors:,}",
                    f"{s.dead_lettered:,}",
                    fill,
                    f"{s.blocked_seconds:.2f}",
                )
            )
        for k, column in enumerate(columns):  # names and figures stay whole
            width = max([len(column), *(len(row[k]) for row in rows)])
            table.add_column(column, justify="left" if k == 0 else "right", min_width=width)
        for row in rows:
            table.add_row(*row)
        table.caption = (
            f"total: {stats.seconds:,.1f} s, peak in flight "
            f"{stats.peak_bytes_in_flight / 1e6:.2f} MB, "
            f"{stats.errors:,} errors ({stats.dead_lettered:,} dead-lettered)"
        )
        if stats.rss_bytes is not None:
            table.caption += f", resident memory {stats.rss_bytes / 1e6:,.1f} MB"
        if stats.peak_rss_bytes is not None:
            table.caption += f" (peak {stats.peak_rss_bytes / 1e6:,.1f} MB)"
        return table

    async def __call__(self, run: Run[Any]) -> None:
        """Refresh the display until cancelled (pass it as ``monitor=`` to ``run``/``open``)."""
        if not self.enabled:
            await anyio.sleep_forever()
        from rich.console import Console
        from rich.live import Live

        with anyio.CancelScope(shield=True):  # brief; a short run still gets its table
            size = await anyio.to_thread.run_sync(run.input_size)
        console = Console(stderr=True)
        if not console.is_terminal:
            console = Console(stderr=True, width=WIDTH_OFF_TERMINAL)  # not cut at 80
        before: RunStatistics | None = None
        try:
            with Live(console=console, refresh_per_second=4, transient=False) as live:
                try:
                    while True:
                        stats = run.statistics()
                        live.update(self.render(stats, before, size))
                        before = stats
                        await anyio.sleep(self.interval)
                finally:  # the last table: rates are averages over the whole run
                    live.update(self.render(run.statistics(), None, size), refresh=True)
        finally:
            if not console.is_terminal:
                console.file.write("\n")  # a log file or pipe gets a complete last line
                console.file.flush()


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
            "dropped": "Input lost before it was read (datagrams the kernel dropped)",
            "unwatched": "Files followed without inotify (the kernel refused it)",
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
        memory = {
            "aflow_resident_memory_bytes": ("The process's resident memory", stats.rss_bytes),
            "aflow_peak_resident_memory_bytes": (
                "The process's highest resident memory since it started",
                stats.peak_rss_bytes,
            ),
        }
        for name, (doc, value) in memory.items():
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=value)


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
