"""Dataset loading benchmark: a folder of small PNG images, aflow vs a plain loop (vs torch).

A folder of N (default 20,000) 32x32 RGB PNG images in 10 class folders is generated once
into a temp folder. Each loader reads every image once, in a seeded random order, decodes
it to ``uint8 (32, 32, 3)`` with Pillow and makes batches of 64 images with their labels;
the consumer sums each batch (so every pixel is touched):

- plain: a synchronous generator loop (read, ``np.asarray(Image.open(...).convert("RGB"))``,
  stack), the usual first loader;
- plain+decoder: the same loop with aflow's ``ImageDecoder`` (its PNG fast path), so the
  ratio to it is what worker threads alone add;
- aflow: ``af.read_dataset(root, batch_size=64, workers=W)`` (W batches decoded at once in
  worker threads), for each W of ``--workers``;
- aflow processes: the same with ``processes=True`` (W worker processes, forkserver
  started inside the timed run), for each W of ``--processes``;
- torch: ``torch.utils.data.DataLoader`` with W worker processes (0: in the main process)
  over aflow's ``ImageDecoder``, for each W of ``--torch-workers``, when torch is
  importable by ``--torch-python`` (a separate benchmark environment: torch is never a
  dependency of aflow); otherwise the column is skipped with the reason printed.

Each loader runs in its own subprocess, so each peak resident memory (VmHWM) is its own;
beside it, the peak of the summed proportional set size (PSS, shared pages split among
their processes) of that subprocess and every process under it (worker processes, fork
server), sampled every 100 ms. Prints images/s (best and median of ``--reps`` rounds;
the clock starts after the imports of numpy, Pillow, aflow and torch, and includes
listing the folder and any worker processes' start), the ratio of the best to the plain loop's best, both memory peaks, and the median CPU time
of the whole process tree per 1,000 images (interpreter start and imports included;
worker processes sampled every 100 ms, so their last few ms may be missed): on a busy
machine, where images/s depends on the share of the cores a loader gets, this says how
much work it spends per image. Targets: aflow >= 1.5x the plain loop; >= 0.8x
DataLoader at equal workers, with lower memory.

    python benchmarks/bench_datasets.py                          # 20,000 images
    python benchmarks/bench_datasets.py --quick                  # 2,000 images
    python benchmarks/bench_datasets.py --torch-python VENV/bin/python  # with torch
    python benchmarks/bench_datasets.py --epochs 3               # 3 passes per run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SIDE = 32
BATCH = 64
CLASSES = 10
EPOCHS = 1  # passes over the folder in each timed run (--epochs)


def make_folder(root: Path, n: int) -> None:
    from PIL import Image

    marker = root / f"ready-{n}"
    if marker.exists():
        return
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    for i in range(n):
        folder = root / f"class{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        f = rng.uniform(0.1, 0.6, 2)
        base = (np.sin(xx * f[0] + yy * f[1]) * 60 + 128)[..., None]
        pixels = np.clip(base + rng.normal(0, 20, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.png")
    marker.touch()


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_plain(root: Path, workers: int) -> tuple[int, float]:
    import io

    from PIL import Image

    def decode(data: bytes) -> Any:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))

    return plain_loop(root, decode)


def run_plain_decoder(root: Path, workers: int) -> tuple[int, float]:
    from aflow.codecs.images import ImageDecoder

    return plain_loop(root, ImageDecoder())


def plain_loop(root: Path, decode: Any) -> tuple[int, float]:
    import aflow as af

    table = af.list_dataset(root)
    rng = np.random.default_rng(0)

    def batches() -> Any:
        for _ in range(EPOCHS):
            order = rng.permutation(len(table))
            for start in range(0, len(order), BATCH):
                rows = order[start : start + BATCH]
                x = np.stack([decode((root / table.paths[i]).read_bytes()) for i in rows])
                yield x, table.labels[rows]

    n, total = 0, 0.0
    for x, _y in batches():
        total += float(x.sum())
        n += len(x)
    return n, total


def run_aflow(root: Path, workers: int, processes: bool = False) -> tuple[int, float]:
    import anyio

    import aflow as af

    async def main() -> tuple[int, float]:
        n, total = 0, 0.0
        flow = af.read_dataset(
            root, batch_size=BATCH, epochs=EPOCHS, workers=workers, processes=processes, seed=0
        )
        async with flow.open() as run:
            async for batch in run:
                total += float(batch["x"].sum())
                n += len(batch)
        return n, total

    return anyio.run(main)


def run_aflow_processes(root: Path, workers: int) -> tuple[int, float]:
    return run_aflow(root, workers, processes=True)


def run_torch(root: Path, workers: int) -> tuple[int, float]:
    import torch
    from torch.utils.data import DataLoader, Dataset

    import aflow as af
    from aflow.codecs.images import ImageDecoder

    table = af.list_dataset(root)

    class Folder(Dataset):  # type: ignore[type-arg]
        def __init__(self) -> None:
            self.decode = ImageDecoder()

        def __len__(self) -> int:
            return len(table)

        def __getitem__(self, i: int) -> Any:
            x = self.decode((root / table.paths[i]).read_bytes())
            return torch.from_numpy(x), int(table.labels[i])

    loader = DataLoader(
        Folder(),
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
    )
    n, total = 0, 0.0
    for _ in range(EPOCHS):
        for x, _y in loader:
            total += float(x.numpy().sum())
            n += len(x)
    return n, total


def measure(kind: str, root: Path, workers: int) -> None:
    run = {
        "plain": run_plain,
        "plain+decoder": run_plain_decoder,
        "aflow": run_aflow,
        "aflow-processes": run_aflow_processes,
        "torch": run_torch,
    }[kind]
    # the libraries every loader uses are imported before the clock starts: images/s is
    # the loading, not the interpreter's imports (CPU time below includes them)
    import PIL.Image  # noqa: F401

    import aflow  # noqa: F401

    if kind == "torch":
        import torch  # noqa: F401

    t0 = time.perf_counter()
    n, total = run(root, workers)
    seconds = time.perf_counter() - t0
    import resource

    use = resource.getrusage(resource.RUSAGE_SELF)
    cpu = use.ru_utime + use.ru_stime
    print(json.dumps({"n": n, "total": total, "seconds": seconds, "peak": peak_rss(), "cpu": cpu}))


def child(kind: str, root: Path, workers: int, python: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    argv = [python, __file__, "--child", kind, "--root", str(root), "--workers", str(workers)]
    with subprocess.Popen(
        [*argv, "--epochs", str(EPOCHS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        tree, cpu = 0, {proc.pid: 0.0}
        while proc.poll() is None:
            tree = max(tree, tree_pss(proc.pid, cpu))
            time.sleep(0.1)
        out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{kind} workers={workers} failed:\n{err}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["tree"] = tree
    del cpu[proc.pid]  # its own CPU time it reported, exactly
    result["cpu"] += sum(cpu.values())
    return result


def tree_pss(pid: int, cpu: dict[int, float]) -> int:
    """Summed PSS in bytes of ``pid`` and every process under it (0 where unreadable);
    notes each one's CPU seconds so far in ``cpu``."""
    total = 0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                total += sum(tree_pss(int(c), cpu) for c in f.read().split())
    except (OSError, ValueError):
        pass  # ended meanwhile, or no /proc
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="2,000 images")
    parser.add_argument("--workers", default="2,4", help="comma-separated worker counts")
    parser.add_argument("--processes", default="2", help="aflow worker-process counts")
    parser.add_argument("--torch-workers", default="0,2", help="DataLoader worker counts")
    parser.add_argument("--torch-python", default=sys.executable, help="python with torch")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the folder per run")
    parser.add_argument("--reps", type=int, default=3, help="rounds (best and median)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global EPOCHS
    EPOCHS = args.epochs
    if args.child:
        measure(args.child, args.root, int(args.workers))
        return
    n = 2_000 if args.quick else args.images
    # one folder per size (a folder holding more images would be read whole)
    root = Path(tempfile.gettempdir()) / "aflow-bench-datasets"
    if n != 20_000:
        root = root.with_name(f"{root.name}-{n}")
    t0 = time.perf_counter()
    make_folder(root, n)
    print(
        f"{n:,} PNG images of {SIDE}x{SIDE}x3 in {CLASSES} classes "
        f"(ready in {time.perf_counter() - t0:.1f} s), batches of {BATCH}, "
        f"{EPOCHS} epoch(s) per run, {os.cpu_count()} CPUs"
    )
    cases = [("plain", 1), ("plain+decoder", 1)]
    cases += [("aflow", int(w)) for w in args.workers.split(",")]
    cases += [("aflow-processes", int(w)) for w in args.processes.split(",") if w]
    check = subprocess.run(
        [args.torch_python, "-c", "import torch, PIL, aflow; print(torch.__version__)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    if check.returncode == 0:
        print(f"torch {check.stdout.strip()} from {args.torch_python}")
        cases += [("torch", int(w)) for w in args.torch_workers.split(",")]
    else:
        reason = (check.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"DataLoader skipped: torch is not importable by {args.torch_python} ({reason})")
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {case: [] for case in cases}
    for _ in range(args.reps):
        for kind, workers in cases:
            python = args.torch_python if kind == "torch" else sys.executable
            runs[kind, workers].append(child(kind, root, workers, python))
    plain = min(runs["plain", 1], key=lambda r: r["seconds"])
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"{'loader':<27} {'best img/s':>10} {'median':>8} {'x plain':>8} {'peak MB':>8}"
        f" {'tree MB':>8} {'CPU ms/1k':>9}  (best of {args.reps})"
    )
    for (kind, workers), rs in runs.items():
        rates = sorted(r["n"] / r["seconds"] for r in rs)
        best = max(rs, key=lambda r: r["n"] / r["seconds"])
        label = kind if kind.startswith("plain") else f"{kind} workers={workers}"
        print(
            f"{label:<27} {rates[-1]:>10,.0f} {rates[len(rates) // 2]:>8,.0f} "
            f"{plain['seconds'] / best['seconds']:>8.2f} "
            f"{max(r['peak'] for r in rs) / 1e6:>8.1f} {max(r['tree'] for r in rs) / 1e6:>8.1f}"
            f" {sorted(r['cpu'] / r['n'] for r in rs)[len(rs) // 2] * 1e6:>9.0f}"
        )
        for r in rs:
            if r["n"] != n * EPOCHS or not np.isclose(r["total"], plain["total"]):
                print(f"RESULT MISMATCH: {label} read {r['n']} images, sum {r['total']}")
                sys.exit(1)


if __name__ == "__main__":
    main()
