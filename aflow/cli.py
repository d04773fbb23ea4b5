"""The ``aflow`` command: ``aflow demo`` and ``aflow run module:flow``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import anyio

from . import _demo
from .flow import Flow, SinkFlow, run


def _load(target: str) -> Any:
    """``package.module:name`` or ``path/to/file.py:name`` -> the object."""
    module_name, _, attr = target.partition(":")
    if not attr:
        raise SystemExit(f"aflow run: expected MODULE:FLOW or FILE.py:FLOW, got {target!r}")
    if module_name.endswith(".py"):
        path = Path(module_name)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise SystemExit(f"aflow run: cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, str(Path.cwd()))
        module = importlib.import_module(module_name)
    obj = getattr(module, attr)
    return obj() if callable(obj) and not isinstance(obj, Flow | SinkFlow) else obj


def _cmd_run(args: argparse.Namespace) -> int:
    flow = _load(args.target)
    if not isinstance(flow, Flow | SinkFlow):
        raise SystemExit(f"aflow run: {args.target} is a {type(flow).__name__}, not a flow")
    try:
        result = run(
            flow,
            backend=args.backend,
            buffer=args.buffer,
            max_bytes_in_flight=args.max_bytes_in_flight,
        )
    except KeyboardInterrupt:
        print("aflow run: interrupted; partial batches were flushed", file=sys.stderr)
        return 130
    print(result.value)
    if args.stats:
        print(result.statistics.format(), file=sys.stderr)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    anyio.run(_demo.main, args.rows, backend=args.backend)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a demo pipeline on data it generates")
    demo.add_argument("--rows", type=int, default=5_000_000, help="readings to generate")
    demo.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    demo.set_defaults(func=_cmd_demo)
    run_p = sub.add_parser("run", help="run a flow defined in Python (MODULE:FLOW)")
    run_p.add_argument("target", help="module:name or file.py:name of a flow (or a function)")
    run_p.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    run_p.add_argument("--buffer", type=int, default=4, help="messages per buffer")
    run_p.add_argument(
        "--max-bytes-in-flight",
        type=int,
        default=None,
        help="ceiling on array bytes waiting in all buffers",
    )
    run_p.add_argument("--stats", action="store_true", help="print statistics to stderr")
    run_p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live per-stage progress on stderr (default: when stderr is a terminal)",
    )
    run_p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve live statistics in Prometheus format on this port (/metrics)",
    )
    run_p.add_argument("--metrics-host", default="127.0.0.1", help="address to serve metrics on")
    run_p.set_defaults(func=_cmd_run)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
