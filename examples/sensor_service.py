"""A sensor ingestion service: devices send readings over UDP and TCP; per-sensor statistics
over 1-second windows of event time are served as JSON over HTTP.

    readings over UDP  --\\
                          merge -> decode_csv -> window(1 s of event time, per sensor)
    readings over TCP  --/                        -> latest statistics -> GET /sensors

Lines are ``ts_ms,sensor,value``. Run the service, then the load generator::

    python examples/sensor_service.py --udp 9901 --tcp 9902 --http 9903 --seconds 30
    python examples/sensor_loadgen.py --udp 9901 --tcp 9902 --devices 50 --seconds 5
    curl http://127.0.0.1:9903/sensors

The service stops after ``--seconds`` (or on Ctrl-C), flushing open windows, and prints
how many readings it counted.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

import aflow as af

READING = np.dtype([("ts", "i8"), ("sensor", "i4"), ("value", "f8")])
WINDOW_MS = 1_000


class Latest:
    """The newest window statistics per sensor, shared with the HTTP thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sensors: dict[int, dict[str, Any]] = {}
        self.readings = 0
        self.rejected: dict[str, int] = {}  # client -> bad lines

    def update(self, windows: np.ndarray) -> None:
        with self.lock:
            for row in windows.tolist():  # one row per (window, sensor): small
                start, end, sensor, count, mean, high = row
                self.sensors[sensor] = {
                    "window_start_ms": start,
                    "window_end_ms": end,
                    "count": count,
                    "mean": mean,
                    "max": high,
                }
                self.readings += count

    def reject(self, failed: af.FailedItem) -> None:
        """A client's bad line: counted per client; the other clients are still served."""
        peer = failed.provenance.source if failed.provenance else failed.stage
        with self.lock:
            self.rejected[peer] = self.rejected.get(peer, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "readings": self.readings,
                "sensors": dict(self.sensors),
                "rejected_lines_by_client": dict(self.rejected),
            }


def serve_http(latest: Latest, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(latest.snapshot()).encode()
            self.send_response(200 if self.path == "/sensors" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def service(udp: int, tcp: int, latest: Latest) -> af.SinkFlow[int]:
    ingest = af.merge(
        af.udp_server(udp, on_error="skip"),
        af.tcp_server(tcp, max_connections=256, idle_timeout=30, on_error="skip"),
    )
    return (
        ingest
        # a client's bad line is set aside (with the client's address and line number)
        # and every client goes on being served; the default, "raise", would stop the service
        | af.decode_csv(READING, on_error=af.dead_letter(latest.reject))
        | af.window(
            WINDOW_MS,
            on="ts",
            key="sensor",
            value="value",
            stats=("count", "mean", "max"),
            allowed_lateness=WINDOW_MS // 2,
        )
        | af.for_each(latest.update)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--udp", type=int, default=9901, help="UDP port for readings")
    parser.add_argument("--tcp", type=int, default=9902, help="TCP port for readings")
    parser.add_argument("--http", type=int, default=9903, help="HTTP port of GET /sensors")
    parser.add_argument("--seconds", type=float, default=None, help="stop after (default: never)")
    args = parser.parse_args()
    try:
        return serve(args)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        print(
            f"sensor_service: a port is in use ({exc.strerror}): udp {args.udp}, tcp {args.tcp},"
            f" http {args.http}; pick free ones with --udp, --tcp and --http",
            file=sys.stderr,
        )
        return 2


def serve(args: argparse.Namespace) -> int:
    """Run the service until ``--seconds`` have passed or Ctrl-C; print what it counted."""
    latest = Latest()
    server = serve_http(latest, args.http)
    flow = service(args.udp, args.tcp, latest)
    print(
        f"listening: udp {args.udp}, tcp {args.tcp}; http://127.0.0.1:{args.http}/sensors",
        flush=True,
    )

    async def stop_later(run: af.Run[Any]) -> None:
        import anyio

        if args.seconds is not None:
            await anyio.sleep(args.seconds)
            run.stop()

    try:
        result = af.run(flow, monitor=stop_later)
    except KeyboardInterrupt:
        result = None
    finally:
        server.shutdown()
        server.server_close()
    snapshot = latest.snapshot()
    print(f"stopped: {snapshot['readings']:,} readings from {len(snapshot['sensors'])} sensors")
    if result is not None:
        decode = next(s for s in result.statistics.stages if "decode_csv" in s.name)
        print(f"malformed lines set aside: {decode.errors}")
        for peer, count in sorted(snapshot["rejected_lines_by_client"].items()):
            print(f"  {peer}: {count:,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
