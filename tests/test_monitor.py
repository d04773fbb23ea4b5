"""Live statistics: the Prometheus endpoint scraped over real HTTP, the progress table."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import anyio
import pytest
from rich.console import Console

import aflow as af
from aflow.monitor import Progress, serve_metrics
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
