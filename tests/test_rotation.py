"""Following a log through every kind of rotation, with a real writer process.

A writer process (``tests/_logwriter.py``) appends numbered lines at a steady rate while
the real ``logrotate`` rotates the file (``create``, ``create`` with a late reopen,
``copytruncate``, ``compress`` + ``delaycompress``), or while the writer rotates faster
than any poll (``fast``). Every line written is compared with every line read: the rename
modes lose and duplicate nothing; ``copytruncate`` loses only lines written between the
copy and the truncation (compared with ``tail -F`` running beside it); files rotated away
unread are counted (``DataLossError`` to ``on_error="skip"``: the source's ``errors``
statistic).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

import aflow as af

WRITER = Path(__file__).with_name("_logwriter.py")
LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux rotation tools"),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # a real-time test of real processes; the follower is backend-neutral


CONFIG = {
    "create": "create\n",
    "late_reopen": "create\n",
    "copytruncate": "copytruncate\n",
    "compress": "create\ncompress\ndelaycompress\n",
}


def write_config(tmp: Path, log: Path, mode: str, pid: int, delay: float) -> Path:
    # (the writer may have finished by the last rotation: nothing to reopen then)
    post = "" if mode == "copytruncate" else f"sleep {delay}; kill -USR1 {pid} || true"
    body = f"{log} {{\n  rotate 1000\n  missingok\n  {CONFIG[mode]}"
    if post:
        body += f"  postrotate\n    {post}\n  endscript\n"
    conf = tmp / "logrotate.conf"
    conf.write_text(body + "}\n")
    return conf


async def follow_while_writing(
    tmp_path: Path, mode: str, *, rate: int, seconds: float, rotations: int, delay: float = 0.0
) -> tuple[int, Counter[int], int, Counter[int] | None]:
    """Run writer, rotations, aflow (and ``tail -F`` for copytruncate); return lines written,
    aflow's lines, aflow's counted losses, tail's lines."""
    log = tmp_path / "app.log"
    log.touch()
    seen: list[str] = []
    flow = af.read_lines(
        str(log),
        follow=True,
        poll_interval=0.05,
        rotate_wait=max(0.5, 2 * delay),
        on_error="skip",
    ) | af.for_each(seen.append)
    tail_out = (tmp_path / "tail.out").open("wb")
    tail = None
    if mode == "copytruncate":
        tail = await anyio.open_process(
            ["tail", "-n", "+1", "-F", str(log)], stdout=tail_out, stderr=subprocess.DEVNULL
        )
    every = max(1, int(rate * seconds / (rotations + 1)))
    writer = await anyio.open_process(
        [sys.executable, str(WRITER), str(log), mode, str(rate), str(seconds), str(every)],
        stderr=None,
    )
    try:
        assert writer.stdout is not None
        lines = BufferedByteReceiveStream(writer.stdout)
        assert await lines.receive_until(b"\n", 100) == b"ready"
        async with flow.open() as run:
            if mode != "fast":
                conf = write_config(tmp_path, log, mode, writer.pid, delay)
                for _ in range(rotations):
                    await anyio.sleep(seconds / (rotations + 1))
                    done = await anyio.run_process(
                        [LOGROTATE, "-f", "-s", str(tmp_path / "state"), str(conf)], check=False
                    )
                    assert done.returncode == 0, done.stderr.decode()
            with anyio.fail_after(seconds + 20):
                written = int(await lines.receive_until(b"\n", 100))
                # until aflow has read everything it can: no new line for a while
                count = -1
                while count != len(seen):
                    count = len(seen)
                    await anyio.sleep(max(1.0, 3 * delay))
            lost = run.statistics().errors
            run.stop()
    finally:
        with anyio.CancelScope(shield=True):
            await writer.wait()
            await writer.aclose()
            if tail is not None:
                await anyio.sleep(0.3)
                tail.send_signal(signal.SIGTERM)
                await tail.wait()
                await tail.aclose()
        tail_out.close()
    tail_lines = None
    if tail is not None:
        text = (tmp_path / "tail.out").read_bytes().decode(errors="replace")
        tail_lines = Counter(int(x) for x in text.split() if x.isdigit())
    return written, Counter(int(x) for x in seen), lost, tail_lines


def check_exact(written: int, got: Counter[int]) -> None:
    missing = [i for i in range(written) if i not in got]
    duplicated = [i for i, n in got.items() if n > 1]
    assert not missing, f"{len(missing)} of {written} lines lost, e.g. {missing[:10]}"
    assert not duplicated, f"{len(duplicated)} lines read twice, e.g. {duplicated[:10]}"
    assert set(got) == set(range(written))


@pytest.mark.parametrize(
    ("mode", "delay"),
    [
        ("create", 0.0),
        pytest.param("late_reopen", 0.3, marks=pytest.mark.slow),  # 4 s each: CI's slow run
        pytest.param("compress", 0.1, marks=pytest.mark.slow),
    ],
)
async def test_rename_modes_lose_and_duplicate_nothing(
    tmp_path: Path, mode: str, delay: float
) -> None:
    written, got, lost, _ = await follow_while_writing(
        tmp_path, mode, rate=2000, seconds=2.0, rotations=4, delay=delay
    )
    assert written > 3000
    check_exact(written, got)
    assert lost == 0
    if mode == "compress":
        assert any(
            name.endswith(".gz") for name in os.listdir(tmp_path)
        )  # logrotate did compress the old ones


@pytest.mark.slow  # 4 s: CI's slow run (with the longer copytruncate test below)
async def test_copytruncate_loses_only_the_copy_window(tmp_path: Path) -> None:
    written, got, _, tail = await follow_while_writing(
        tmp_path, "copytruncate", rate=2000, seconds=2.5, rotations=4
    )
    assert tail is not None
    lost = written - len(set(got) & set(range(written)))
    tail_lost = written - len(set(tail) & set(range(written)))
    print(f"copytruncate: aflow lost {lost}, tail -F lost {tail_lost} of {written}")
    # What was unread at a truncation comes from the copy: only the lines written between
    # logrotate's copy and its truncation can be lost (a few ms of lines per rotation; the
    # issue measured 721-2,642 lost over 8). tail -F, a C process reading on each write,
    # often loses none of those; nor does aflow's guard thread, reading on each write too
    # (the figures side by side are in docs/io.md's table; a timing is no unit test: the
    # bound leaves room for a loaded machine).
    assert lost <= max(tail_lost, 4 * 20), f"aflow lost {lost}, tail -F {tail_lost}"
    assert all(n == 1 for n in got.values()), "a line read twice"


@pytest.mark.parametrize(
    "rotations", [40, pytest.param(2000, marks=[pytest.mark.slow, pytest.mark.timeout(120)])]
)
async def test_fast_rotation_losses_are_whole_files_and_counted(
    tmp_path: Path, rotations: int
) -> None:
    # 40 renames at 8,000 lines/s: one every 50 ms, below the poll interval; 2,000: one a ms
    written, got, lost, _ = await follow_while_writing(
        tmp_path, "fast", rate=8000, seconds=2.0, rotations=rotations
    )
    every = max(1, int(8000 * 2.0 / (rotations + 1)))
    assert all(n == 1 for n in got.values()), "a line read twice"
    missing = sorted(set(range(written)) - set(got))
    # lines lost only in whole files (the writer's file k holds lines k*every ...)
    files = {i // every for i in missing}
    assert len(missing) == sum(min(every, written - k * every) for k in files)
    print(f"fast rotation: {len(missing)} of {written} lines lost in {len(files)} files")
    if rotations <= 40:
        assert lost == len(files), f"{len(files)} files lost, {lost} counted"
    else:  # a rename a millisecond: a few files live and die between two inotify reads
        # and are counted from the writer's create/rename pairs, which can coalesce (a
        # known gap, ~0.1 %): every loss is still counted to within 1 %
        assert abs(lost - len(files)) <= max(2, len(files) // 100), (len(files), lost)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("mode", "delay"), [("create", 0.0), ("late_reopen", 0.5), ("compress", 0.2)]
)
async def test_rename_modes_under_load(tmp_path: Path, mode: str, delay: float) -> None:
    written, got, lost, _ = await follow_while_writing(
        tmp_path, mode, rate=20000, seconds=10.0, rotations=20, delay=delay
    )
    check_exact(written, got)
    assert lost == 0


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_copytruncate_under_load(tmp_path: Path) -> None:
    written, got, _, tail = await follow_while_writing(
        tmp_path, "copytruncate", rate=20000, seconds=10.0, rotations=8
    )
    assert tail is not None
    lost = written - len(set(got) & set(range(written)))
    tail_lost = written - len(set(tail) & set(range(written)))
    print(f"copytruncate: aflow lost {lost}, tail -F lost {tail_lost} of {written}")
    assert lost <= max(tail_lost, 8 * 200), f"aflow lost {lost}, tail -F {tail_lost}"
    assert all(n == 1 for n in got.values()), "a line read twice"


def test_writer_is_a_separate_process() -> None:
    assert WRITER.exists()
    assert os.access(LOGROTATE, os.X_OK)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_copytruncate_loses_only_lines_in_no_copy(tmp_path: Path) -> None:
    # logrotate copies app.log, fsyncs the copy, then truncates: lines written in between
    # are in no copy, and only a reader that read them in that window has them (aflow's
    # guard thread): whatever aflow lost must be such lines (what it had not read at a
    # truncation comes from the copy, then from the guard).
    written, got, _, tail = await follow_while_writing(
        tmp_path, "copytruncate", rate=20000, seconds=10.0, rotations=8
    )
    assert tail is not None
    copied: set[int] = set()
    for name in os.listdir(tmp_path):
        if name.startswith("app.log"):
            copied.update(int(x) for x in (tmp_path / name).read_bytes().split())
    everything = set(range(written))
    lost, tail_lost = everything - set(got), everything - set(tail)
    windows = everything - copied
    print(
        f"copytruncate under load: {len(windows)} of {written} lines in no copy; "
        f"aflow lost {len(lost)}, tail -F lost {len(tail_lost)}"
    )
    assert lost <= windows, f"lines lost that a copy holds: {sorted(lost - windows)[:10]}"
    assert all(n == 1 for n in got.values()), "a line read twice"
