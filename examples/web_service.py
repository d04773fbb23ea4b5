"""A web application (Starlette; FastAPI is the same) running a flow in its lifespan.

The flow computes per-sensor statistics over a live feed of readings (a generator standing
in for a socket or a followed log) and keeps the table on the application's state.
Endpoints:

* ``/health``: ``{"state": "running"}`` while the flow runs, else how it ended
  (``"completed"``, ``"stopped"``, ``"interrupted"`` or ``"failed"``, with the error), and
  the flow's error count: a load balancer takes the instance out when it is not running;
* ``/stats``: the per-sensor count, mean and p99 so far (``aflow.KeyedStats`` and keyed
  quantiles, updated once per batch).

Shutting the application down (SIGTERM to the server) stops the run gracefully: partial
batches are flushed, then the lifespan exits. A failing flow does not take the web server
down: its error is reported by ``/health``.

Run it with an ASGI server::

    pip install starlette uvicorn
    uvicorn examples.web_service:app
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import aflow as af
from aflow.kernels.quantiles import KeyedQuantiles

READING = np.dtype([("sensor", "i4"), ("value", "f8")])


async def readings(batches: int | None = None) -> AsyncIterator[np.ndarray]:
    """Batches of 500 readings from 8 sensors, about 50 a second (endless by default)."""
    rng = np.random.default_rng(0)
    n = 0
    while batches is None or n < batches:
        rows = np.empty(500, READING)
        rows["sensor"] = rng.integers(0, 8, len(rows))
        rows["value"] = rng.normal(20.0 + rows["sensor"], 1.0)
        yield rows
        n += 1
        await anyio.sleep(0.02)


def make_app(batches: int | None = None) -> Starlette:
    """The application; ``batches`` bounds the feed (tests), ``None`` runs forever."""

    def fold(batch: np.ndarray) -> None:  # Python per batch, NumPy per row
        app.state.stats.update(batch["sensor"], batch["value"])
        app.state.p99.update(batch["sensor"], batch["value"])

    flow = af.from_arrays(lambda: readings(batches)) | af.for_each(fold)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.stats = af.KeyedStats(("count", "mean"))  # fresh state for each run
        app.state.p99 = KeyedQuantiles([0.99])
        app.state.error = None
        async with anyio.create_task_group() as tg:
            app.state.pipeline = await tg.start(_serve, flow, app)
            yield
            app.state.pipeline.stop()  # graceful: flush, close, then the lifespan ends

    app = Starlette(routes=[Route("/health", health), Route("/stats", stats)], lifespan=lifespan)
    return app


async def _serve(flow: af.SinkFlow[int], app: Starlette, *, task_status: Any) -> None:
    """Run ``flow``; keep its error for ``/health`` instead of failing the server."""
    try:
        async with flow.open() as run:
            task_status.started(run)
            await run.wait()
    except Exception as exc:  # reported by /health; the web server stays up
        app.state.error = exc


async def health(request: Request) -> JSONResponse:
    run: af.Run[Any] = request.app.state.pipeline
    error = request.app.state.error
    if error is not None:
        state, status = "failed", 503
    elif not run.done:
        state, status = "running", 200
    else:
        state, status = run.ended, 503
    body = {"state": state, "errors": run.statistics().errors}
    if error is not None:
        body["error"] = repr(error)
    return JSONResponse(body, status_code=status)


async def stats(request: Request) -> JSONResponse:
    table = request.app.state.stats.result("sensor")
    p99 = request.app.state.p99.result(table["sensor"])[:, 0]
    return JSONResponse(
        [
            {"sensor": s, "count": c, "mean": m, "p99": p}
            for (s, c, m), p in zip(table.tolist(), p99.tolist(), strict=True)
        ]
    )


app = make_app()

if __name__ == "__main__":
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    print("serve it with an ASGI server: uvicorn examples.web_service:app")
