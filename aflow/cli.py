"""The ``aflow`` command: ``aflow demo`` and ``aflow run module:flow``."""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from . import __version__, demo
from ._core.delivery import DEFAULT_COMMIT_INTERVAL
from ._core.run import Run
from .connectors._common import WORKER_ENV, WORKERS_ENV
from .errors import CheckpointInUse, CheckpointMismatch
from .flow import Flow, SinkFlow, run
from .monitor import Monitor, Progress, serve_metrics, watch

SHOWN_ROWS = 50
"""Rows of a record-array result printed before "... N more rows"."""

EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells report it."""
EXIT_TERMINATED = 143
"""Exit status after SIGTERM (128 + SIGTERM): the result printed is partial."""
EXIT_STOPPED = 3
EXIT_USAGE = 2
"""Exit status when ``--checkpoint`` belongs to another flow or input (as for usage
errors): nothing was run."""
"""Exit status when the flow's own code stopped the run before its input ended."""


def _load(target: str, kwargs: dict[str, Any]) -> Any:
    """``package.module:name`` or ``path/to/file.py:name`` -> the object (called with
    ``kwargs`` when it is a function making a flow). Exits with one line when it fails."""
    module_name, _, attr = target.partition(":")
    if not attr:
        raise SystemExit(f"aflow run: expected MODULE:FLOW or FILE.py:FLOW, got {target!r}")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise SystemExit(f"aflow run: no file {str(path)!r}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise SystemExit(f"aflow run: cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, str(Path.cwd()))
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise SystemExit(f"aflow run: no module {exc.name!r} (from {target!r})") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"aflow run: {module_name} has no {attr!r}") from None
    if callable(obj) and not isinstance(obj, Flow | SinkFlow):
        return obj(**kwargs)
    if kwargs:
        raise SystemExit(f"aflow run: {target} is not a function; --arg needs one")
    return obj


def _arg(text: str) -> tuple[str, Any]:
    """``name=value`` -> (name, value): a Python literal when it parses as one, else text."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: must be a number of seconds > 0")
    return value


def _show(value: Any) -> str:
    """A result as text: records with their field names, one per line."""
    if isinstance(value, np.ndarray) and value.dtype.names:
        names = value.dtype.names
        rows = ["\t".join(names)]
        rows.extend("\t".join(str(v) for v in row) for row in value[:SHOWN_ROWS].tolist())
        if len(value) > SHOWN_ROWS:
            rows.append(f"... {len(value) - SHOWN_ROWS:,} more rows")
        return "\n".join(rows)
    return str(value)


def _require(module: str, option: str, package: str) -> None:
    """Exit with one line naming what to install when ``module`` is missing."""
    if importlib.util.find_spec(module) is None:
        raise SystemExit(
            f"aflow run {option} needs the {module!r} module: pip install {package}"
            " (or the cli extra)"
        )


def _monitors(args: argparse.Namespace) -> list[Monitor]:
    """The live displays asked for on the command line, checked before the run starts."""
    monitors: list[Monitor] = []
    if args.progress or (args.progress is None and sys.stderr.isatty()):
        _require("rich", "--progress", "rich")
        monitors.append(Progress(force=True))
    if args.metrics_port is not None:
        _require("prometheus_client", "--metrics-port", "prometheus-client")
        monitors.append(serve_metrics(args.metrics_port, args.metrics_host))
    return monitors


_SUPERVISOR_OPTIONS = ("--workers", "--worker-offset", "--max-restarts")


def _without_workers(argv: list[str]) -> list[str]:
    """``argv`` less the supervisor's options (``--workers N``, ``--worker-offset K``,
    ``--max-restarts M``, or their ``--option=value`` forms)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _SUPERVISOR_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in _SUPERVISOR_OPTIONS)):
            out.append(arg)
    return out


_RESTART_WINDOW = 60.0  # seconds over which --max-restarts counts
_RESTART_BACKOFF = 0.5  # first restart delay of a worker, doubling per recent restart
_RESTART_BACKOFF_MAX = 10.0


def _exit_status(code: int) -> int:
    """A child's return code as an exit status: killed by signal S -> 128 + S."""
    return 128 - code if code < 0 else code


def _run_workers(args: argparse.Namespace) -> int:
    """Start and supervise ``args.workers`` processes of the same ``aflow run`` command.

    Worker ``i`` gets index ``args.worker_offset + i`` in ``AFLOW_WORKER`` (broker
    sources take their consumer names from it). A worker that exits with an error or
    is killed is started again under the same index (so the same consumer re-reads its
    pending messages), after a backoff doubling from 0.5 s to 10 s with its restarts of
    the last minute; more than ``args.max_restarts`` restarts (all workers) within a
    minute stop every worker and fail. SIGINT and SIGTERM are passed on to the workers
    and end the supervision: nothing is restarted then. The exit status is the first
    failing worker's (128 + S for a signal S), else 0.
    """
    command = [sys.executable, "-m", "aflow", *_without_workers(args.argv)]
    total = str(args.worker_offset + args.workers)

    def start(index: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, WORKER_ENV: str(index), WORKERS_ENV: total}
        return subprocess.Popen(command, env=env)

    indexes = [args.worker_offset + i for i in range(args.workers)]
    children: dict[int, subprocess.Popen[bytes]] = {i: start(i) for i in indexes}
    restarts: list[tuple[float, int]] = []  # (time, index) of restarts
    due: dict[int, float] = {}  # index -> when to start it again
    codes: dict[int, int] = {}  # index -> final exit status
    stopping: list[int] = []

    def forward(signum: int, frame: object) -> None:
        stopping.append(signum)
        due.clear()
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    failure, failed = "", 0
    try:
        while len(codes) < len(indexes):
            time.sleep(0.05)
            now = time.monotonic()
            for index, child in list(children.items()):
                if index in codes or index in due or (code := child.poll()) is None:
                    continue
                if code == 0 or stopping or failure:
                    codes[index] = _exit_status(code)
                    continue
                restarts[:] = [(t, i) for t, i in restarts if now - t < _RESTART_WINDOW]
                if len(restarts) >= args.max_restarts:
                    failure = (
                        f"aflow run: worker {index} failed (exit status {_exit_status(code)}) "
                        f"after {len(restarts)} restarts within {_RESTART_WINDOW:.0f} s "
                        f"(--max-restarts {args.max_restarts}); stopping all workers"
                    )
                    print(failure, file=sys.stderr, flush=True)
                    codes[index] = failed = _exit_status(code) or 1
                    due.clear()
                    for other in children.values():
                        if other.poll() is None:
                            other.terminate()
                    continue
                recent = sum(1 for _, i in restarts if i == index)
                delay = min(_RESTART_BACKOFF * 2.0**recent, _RESTART_BACKOFF_MAX)
                print(
                    f"aflow run: worker {index} exited with status {_exit_status(code)}; "
                    f"restarting it in {delay:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
                restarts.append((now, index))
                due[index] = now + delay
            for index, when in list(due.items()):
                if now >= when:
                    del due[index]
                    children[index] = start(index)
            for index in list(due):  # stopped meanwhile (a signal, a failure)
                if stopping or failure:
                    codes[index] = 1
                    del due[index]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for child in children.values():
            if child.poll() is None:
                child.terminate()
                child.wait()
    return failed or next((codes[i] for i in indexes if codes[i] != 0), 0)


def _cmd_run(args: argparse.Namespace) -> int:
    if args.workers > 1 or args.worker_offset > 0:
        return _run_workers(args)
    flow = _load(args.target, dict(args.arg))
    if not isinstance(flow, Flow | SinkFlow):
        raise SystemExit(f"aflow run: {args.target} is a {type(flow).__name__}, not a flow")
    seen: list[Run[Any]] = []

    async def keep(run: Run[Any]) -> None:  # to print statistics after Ctrl-C too
        seen.append(run)

    monitors = [keep, *_monitors(args)]
    try:
        result = run(
            flow,
            backend=args.backend,
            buffer=args.buffer,
            max_bytes_in_flight=args.max_bytes_in_flight,
            monitor=watch(*monitors),
            checkpoint=args.checkpoint,
            commit_interval=args.commit_interval,
        )
    except (CheckpointMismatch, CheckpointInUse) as exc:
        print(f"aflow run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("aflow run: interrupted; partial batches were flushed", file=sys.stderr)
        if args.stats and seen:
            print(seen[0].statistics().format(), file=sys.stderr)
            print("ended: interrupted (Ctrl-C): partial result", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(_show(result.value))
    if args.stats:
        print(result.statistics.format(), file=sys.stderr)
        print(f"ended: {_ending(result.ended)}", file=sys.stderr)
    if result.ended == "interrupted":
        print("aflow run: terminated (SIGTERM); the result above is partial", file=sys.stderr)
        return EXIT_TERMINATED
    if result.ended == "stopped":
        print("aflow run: the flow was stopped; the result above is partial", file=sys.stderr)
        return EXIT_STOPPED
    return 0


def _ending(ended: str) -> str:
    """How a run ended, in words for ``--stats``."""
    return {
        "completed": "completed (all input read)",
        "stopped": "stopped by run.stop(): partial result",
        "interrupted": "interrupted by SIGTERM: partial result",
    }[ended]


def _cmd_demo(args: argparse.Namespace) -> int:
    anyio.run(demo.main, args.rows, backend=args.backend)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="aflow",
        description="Run aflow pipelines: a demo, or a flow defined in Python.",
    )
    parser.add_argument("--version", action="version", version=f"aflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo_p = sub.add_parser("demo", help="run a demo pipeline on data it generates")
    demo_p.add_argument(
        "--rows",
        type=int,
        default=5_000_000,
        help="sensor readings to generate (default: 5,000,000)",
    )
    demo_p.add_argument(
        "--backend", choices=["asyncio", "trio"], default="asyncio", help="event loop"
    )
    demo_p.set_defaults(func=_cmd_demo)
    run_p = sub.add_parser(
        "run",
        help="run a flow defined in Python (MODULE:FLOW)",
        description="Run a flow defined in Python and print its result.",
        epilog=(
            "exit status: 0 the run completed; 143 SIGTERM stopped it (the result printed is "
            "partial); 130 Ctrl-C stopped it; 3 the flow stopped itself (partial); "
            "2 the --checkpoint is another flow's; 1 a stage failed"
        ),
    )
    run_p.add_argument(
        "target",
        help="MODULE:NAME or FILE.py:NAME of a flow, or of a function returning one",
    )
    run_p.add_argument(
        "--arg",
        action="append",
        type=_arg,
        default=[],
        metavar="NAME=VALUE",
        help="keyword argument for a function target (a Python literal, else text); repeatable",
    )
    run_p.add_argument(
        "--backend", choices=["asyncio", "trio"], default="asyncio", help="event loop"
    )
    run_p.add_argument(
        "--buffer", type=int, default=4, help="capacity of each buffer, in messages (default: 4)"
    )
    run_p.add_argument(
        "--max-bytes-in-flight",
        type=int,
        default=None,
        metavar="BYTES",
        help="ceiling on array bytes waiting in all buffers of the run (default: none)",
    )
    run_p.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="commit positions and state to this SQLite file, and resume from it: run the "
        "same flow again with it to go on where it stopped (see 'Delivery guarantees')",
    )
    run_p.add_argument(
        "--commit-interval",
        type=_positive,
        default=DEFAULT_COMMIT_INTERVAL,
        metavar="S",
        help=f"seconds between checkpoint commits (default: {DEFAULT_COMMIT_INTERVAL})",
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
        metavar="PORT",
        help="serve live statistics in Prometheus text format on http://HOST:PORT/metrics",
    )
    run_p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address to serve metrics on (default: 127.0.0.1)",
    )
    run_p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help=(
            "run N processes of the flow, each a consumer of the same broker consumer group "
            "(its index in AFLOW_WORKER), restarting a worker that fails or is killed; "
            "the same command on other machines joins the group (give each --worker-offset)"
        ),
    )
    run_p.add_argument(
        "--worker-offset",
        type=int,
        default=0,
        metavar="K",
        help=(
            "number this machine's workers K, K+1, ... (AFLOW_WORKER): on several machines "
            "give each a distinct range, e.g. 0 and 4 for --workers 4 on two machines"
        ),
    )
    run_p.add_argument(
        "--max-restarts",
        type=int,
        default=5,
        metavar="M",
        help="with --workers: fail after more than M worker restarts within a minute (default 5)",
    )
    run_p.set_defaults(func=_cmd_run)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.argv = argv
    if getattr(args, "workers", 1) < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if getattr(args, "worker_offset", 0) < 0 or getattr(args, "max_restarts", 0) < 0:
        parser.error("--worker-offset and --max-restarts must be at least 0")
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
