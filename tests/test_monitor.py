"""Live statistics: the Prometheus endpoint scraped over real HTTP, the progress table."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import numpy as np
import pytest
from _helpers import python_env
from rich.console import Console

import aflow as af
from aflow.monitor import Progress, done_line, serve_metrics
from aflow.testing import CountingSource

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def test_prometheus_endpoint_serves_live_statistics() -> None:
    port = free_port()
    flow = af.from_iterable(CountingSource(delay=0.001)) | af.buffer(2) | af.discard()
    async with flow.open() as run, anyio.create_task_group() as tg:
        tg.start_soon(serve_metrics(port), run)
        with anyio.fail_after(5):
            while True:
                try:
                    text = await anyio.to_thread.run_sync(scrape, port)
                except OSError:  # not listening yet
                    await anyio.sleep(0.05)
                    continue
                if 'aflow_stage_items_in_total{stage="2:discard"} 0.0' not in text:
                    break
                await anyio.sleep(0.05)
        run.stop()
        tg.cancel_scope.cancel()
    assert "# TYPE aflow_stage_items_out_total counter" in text
    assert 'aflow_stage_items_out_total{stage="0:from_iterable(CountingSource)"}' in text
    assert "aflow_peak_bytes_in_flight" in text
    with pytest.raises(urllib.error.URLError, match="refused"):  # stopped with the run
        scrape(port)


async def test_progress_table_shows_rates_and_buffers() -> None:
    flow = af.from_iterable(range(10_000)) | af.batch(100) | af.buffer(3) | af.discard()
    result = await flow.run()
    console = Console(record=True, width=120)
    console.print(Progress(force=True).render(result.statistics, None))
    text = console.export_text()
    assert "batch(100)" in text
    assert "10,000" in text
    assert "/3" in text  # the buffer's high-water mark out of its size


def test_progress_is_off_when_not_a_terminal() -> None:
    assert Progress().enabled is False  # pytest captures stderr: not a tty
    assert Progress(force=True).enabled is True


@pytest.mark.parametrize(
    "bad_lines", [10_000, pytest.param(100_000, marks=pytest.mark.slow, id="100000")]
)
async def test_errors_show_in_every_view_of_the_statistics(bad_lines: int) -> None:
    """Issue 14.4: 100,000 skipped lines (and dead-lettered ones) are visible in format(),
    the progress table and the Prometheus metrics (10,000 in the default run: the same
    paths, a tenth of the decoding)."""
    good, bad = b"1,2,3.5\n", b"x,y,z\n"
    lines = [bad] * bad_lines + [good] * 10 + [bad] * 5
    dead: list[af.FailedItem] = []
    record = [("ts", "i8"), ("sensor", "i4"), ("value", "f8")]
    flow = (
        af.from_iterable(lines)
        # a run that starts with bad lines fails fast by default (issue 12); here the
        # skipped lines are the point
        | af.decode_csv(record, on_error="skip", fail_fast=None)
        | af.map_batches(lambda b: b[b["value"] < 0] if len(b) else b)
        | af.discard()
    )
    stats = (await flow.run()).statistics
    assert stats.errors == bad_lines + 5
    table = stats.format()
    shown = f"{bad_lines + 5:,}"
    assert f"{shown} errors (0 dead-lettered, {shown} skipped)" in table
    assert f" {shown} " in table.splitlines()[2 + 1]  # the decode_csv row's errors column
    flow = af.from_iterable([bad, good]) | af.decode_csv(record, on_error=af.dead_letter(dead))
    stats = (await (flow | af.discard()).run()).statistics
    assert (stats.errors, stats.dead_lettered, len(dead)) == (1, 1, 1)
    console = Console(record=True, width=160)
    console.print(Progress(force=True).render(stats, None))
    shown = console.export_text()
    assert "errors" in shown
    assert "1 errors (1 dead-lettered)" in shown
    metrics = await metrics_after(flow | af.discard())
    for family in ("errors", "dead_lettered"):
        [line] = [
            x
            for x in metrics.splitlines()
            if x.startswith(f"aflow_stage_{family}_total") and 'stage="1:decode_csv' in x
        ]
        assert line.endswith("} 1.0")


async def metrics_after(flow: af.SinkFlow[int]) -> str:
    """The Prometheus text served for a run of ``flow`` once it has ended."""
    port = free_port()
    async with flow.open() as run, anyio.create_task_group() as tg:
        await run.wait()
        tg.start_soon(serve_metrics(port), run)
        with anyio.fail_after(5):
            while True:
                try:
                    text = await anyio.to_thread.run_sync(scrape, port)
                    break
                except OSError:  # not listening yet
                    await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    return text


async def test_progress_gives_percent_done_and_eta_when_the_input_size_is_known(
    tmp_path: Path,
) -> None:
    """Issue 14.9: % done, totals and ETA against the source's size, rates with units."""
    rows = np.arange(10_000)
    gate, first = anyio.Event(), anyio.Event()

    async def wait_at_half(b: object) -> None:
        first.set()
        await gate.wait()

    flow = af.from_array(rows, 1000) | af.map_batches(lambda b: b) | af.for_each(wait_at_half)
    async with flow.open(buffer=1) as run:
        size = await anyio.to_thread.run_sync(run.input_size)
        assert size == (10_000, "rows")
        with anyio.fail_after(5):
            await first.wait()
        line = done_line(run.statistics(), size)
        gate.set()
    emitted = int(line.split("(")[1].split(" rows")[0].replace(",", ""))
    assert 0 < emitted < 10_000
    assert f"{emitted / 10_000:.1%} of the input ({emitted:,} rows of 10,000 rows), ETA" in line
    csv = tmp_path / "r.csv"
    csv.write_bytes(b"1,2\n" * 250_000)  # 1 MB
    record = [("a", "i8"), ("b", "i8")]
    async with (af.read_csv(str(csv), record) | af.discard()).open() as run:
        size = await anyio.to_thread.run_sync(run.input_size)
        result = await run.wait()
    assert size == (1_000_000, "bytes")
    assert done_line(result.statistics, size).endswith("100.0% of the input (1.0 MB of 1.0 MB)")
    console = Console(record=True, width=240)
    console.print(Progress(force=True).render(result.statistics, None, size))
    shown = console.export_text()
    assert " MB/s " in shown.splitlines()[4]  # the source's rate, in bytes
    assert "250,000 rows" in shown
    assert "rows/s" in shown
    unknown = af.from_iterable(range(3)) | af.discard()
    async with unknown.open() as run:
        assert await anyio.to_thread.run_sync(run.input_size) is None


def test_progress_off_a_terminal_prints_the_last_table_whole_with_a_final_newline(
    tmp_path: Path,
) -> None:
    (tmp_path / "arr.py").write_text(
        "import numpy as np\nimport aflow as af\n"
        "flow = af.from_array(np.arange(5000), 100) | af.map_batches(lambda b: b + 1)"
        " | af.reduce(lambda t, b: t + int(b.sum()), 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "aflow", "run", "arr.py:flow", "--progress"],
        cwd=tmp_path,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sum(range(1, 5001)))
    assert done.stderr.endswith("\n")
    assert "100.0% of the input (5,000 rows of 5,000 rows)" in done.stderr
    assert "1:map_batches(lambda)" in done.stderr  # whole, not cut at 80 columns
    assert "rows/s" in done.stderr


async def test_resident_memory_shows_in_progress_and_metrics() -> None:
    """Issue 17.4: the process's memory is visible live, beside bytes in flight."""
    flow = af.from_array(np.arange(100_000.0), 10_000) | af.discard()
    stats = (await flow.run()).statistics
    assert stats.rss_bytes is not None
    assert stats.peak_rss_bytes is not None
    assert stats.peak_rss_bytes >= stats.rss_bytes > 0
    console = Console(record=True, width=200)
    console.print(Progress(force=True).render(stats, None))
    assert "resident memory" in console.export_text()
    metrics = await metrics_after(flow)
    gauges = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith(("aflow_resident_memory_bytes", "aflow_peak_resident_memory_bytes"))
    }
    assert gauges["aflow_peak_resident_memory_bytes"] >= gauges["aflow_resident_memory_bytes"] > 0
