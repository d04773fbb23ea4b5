"""What the throughput benchmarks share: each implementation in its own subprocess,
runs interleaved, best and median of ``reps``, ratios side by side, the machine's load."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def load() -> str:
    """The 1-minute load average and the core count."""
    return f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def job_imports(name: str, build_decoder: Callable[[], Any]) -> None:
    """Import, before job ``name`` is timed, what it uses: pyarrow for the single shot and
    the hand-written pipelines; for aflow's jobs, aflow and what their decoder imports
    when built (``build_decoder``: pyarrow only for a pyarrow engine, none for the
    compiled scanners). A job's peak RSS then counts the libraries it uses, not another
    job's: every job imported pyarrow before, 35 MB of an aflow run that never used it."""
    if name.startswith("aflow"):
        build_decoder()
    else:
        import pyarrow.csv  # noqa: F401


def measure(script: str, name: str, args: list[str]) -> dict[str, Any]:
    """Run ``script --child name args`` and read the JSON line it prints."""
    out = subprocess.run(
        [sys.executable, script, "--child", name, *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def interleaved(
    script: str, names: list[str], args: list[str], reps: int
) -> dict[str, list[dict[str, Any]]]:
    """``reps`` runs of each implementation, interleaved (a, b, c, a, b, c...), so a
    noisy stretch of the shared machine hits every implementation alike."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(reps):
        for name in names:
            runs[name].append(measure(script, name, args))
    return runs


def report(
    runs: dict[str, list[dict[str, Any]]],
    rows: int,
    reference: str,
    check: Callable[[Any, Any], bool],
) -> dict[str, float]:
    """Print rows/s (best, median), the ratio to ``reference`` (best over best, and
    median over median) and peak RSS; exit 1 if a result differs from the reference's.
    Returns the best-over-best ratio of each implementation."""
    truth = runs[reference][0]["result"]
    best_ref = min(r["seconds"] for r in runs[reference])
    med_ref = statistics.median(r["seconds"] for r in runs[reference])
    print(
        f"{'implementation':<46} {'best rows/s':>12} {'median':>12} {'x ref best':>10} "
        f"{'x ref med':>9} {'RSS':>7}"
    )
    ratios = {}
    for name, rs in runs.items():
        best = min(r["seconds"] for r in rs)
        med = statistics.median(r["seconds"] for r in rs)
        rss = max(r["rss"] for r in rs)
        ratios[name] = best_ref / best
        print(
            f"{name:<46} {rows / best:>12,.0f} {rows / med:>12,.0f} {best_ref / best:>9.2f}x "
            f"{med_ref / med:>8.2f}x {rss / 1e6:>5.0f}MB"
        )
        for r in rs:
            if not check(r["result"], truth):
                raise SystemExit(f"RESULT MISMATCH: {name}: {r['result']} != {truth}")
    return ratios


MEMORY_TARGET = 1 / 3  # issue 13: a streaming run's peak RSS against the single shot's


def memory_verdict(streaming: int, single_shot: int, reference: str = "single shot") -> bool:
    """Print aflow's peak RSS against ``single_shot``'s and the target (at most a third);
    True if met."""
    ratio = streaming / single_shot
    ok = ratio <= MEMORY_TARGET
    print(
        f"peak RSS: aflow {streaming / 1e6:.0f} MB / {reference} {single_shot / 1e6:.0f} MB = "
        f"{ratio:.2f} (target <= 1/3, {single_shot * MEMORY_TARGET / 1e6:.0f} MB): "
        f"{'PASS' if ok else 'FAIL'}"
    )
    return ok


def arrow_numpy(column: Any, dtype: DTypeLike) -> NDArray[Any]:
    """A pyarrow column of ``dtype`` numbers without nulls as one NumPy array, read from
    its buffers. ``to_numpy`` imports pandas where it is installed: 49 MB of peak RSS and
    0.16 s on a process's first call, which the single shots had paid in every run."""
    dt = np.dtype(dtype)
    parts = [
        np.frombuffer(c.buffers()[1], dt, count=len(c), offset=c.offset * dt.itemsize)
        for c in column.chunks
    ]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
