"""The ``aflow`` command, run as a real subprocess."""

from __future__ import annotations

import ast
import fcntl
import os
import pty
import signal
import socket
import struct
import subprocess
import sys
import termios
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from _helpers import python_env

import aflow as af
from aflow.cli import _require
from aflow.codecs._csvnative import has_native

# Real subprocesses, each given up to 120 s.
pytestmark = pytest.mark.timeout(150)


def aflow(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aflow", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
        env=python_env(),
    )


def test_demo_runs_and_checks_itself() -> None:
    done = aflow("demo", "--rows", "300000")
    assert done.returncode == 0, done.stderr
    assert "check against single-shot NumPy: identical" in done.stdout
    assert "second run identical: True" in done.stdout
    assert "peak in flight" in done.stdout
    # Issue 14.3: the engine is named first, each section's heading comes before its
    # figures, the broadcast row is explained and the source is pointed to.
    lines = done.stdout.splitlines()
    engine = "aflow's compiled scanner" if has_native() else "pyarrow"
    assert lines[0].startswith(f"aflow demo: five pipelines; CSV decoding with {engine} (")
    assert lines[2].startswith("1. Telemetry: 300,000 readings")
    assert lines[3].endswith("NaN dropped")
    assert "broadcast(2) and the sinks (reduce) pass no items on" in done.stdout
    assert "The demo's pipelines are readable source:" in done.stdout
    source = Path(done.stdout.split("readable source: ")[1].split()[0])
    assert source.name == "demo.py"
    assert "async def telemetry" in source.read_text()


@pytest.mark.slow  # the default run has `aflow run --backend trio` (a file's flow, below)
def test_demo_on_trio() -> None:
    done = aflow("demo", "--rows", "100000", "--backend", "trio")
    assert done.returncode == 0, done.stderr
    assert "identical" in done.stdout


def test_run_a_flow_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "myflows.py").write_text(
        textwrap.dedent(
            """
            import aflow as af
            squares = af.from_iterable(range(5)) | af.map(lambda x: x * x) | af.collect()
            """
        )
    )
    done = aflow("run", "myflows.py:squares", "--stats", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 4, 9, 16]"
    assert "map(lambda)" in done.stderr
    by_module = aflow("run", "myflows:squares", cwd=tmp_path)
    assert by_module.stdout.strip() == "[0, 1, 4, 9, 16]"
    on_trio = aflow("run", "myflows:squares", "--backend", "trio", cwd=tmp_path)
    assert on_trio.returncode == 0, on_trio.stderr
    assert on_trio.stdout.strip() == "[0, 1, 4, 9, 16]"


def test_run_rejects_what_is_not_a_flow(tmp_path: Path) -> None:
    (tmp_path / "notflow.py").write_text("x = 3\n")
    done = aflow("run", "notflow.py:x", cwd=tmp_path)
    assert done.returncode != 0
    assert "not a flow" in done.stderr


SLOW_FLOW = """
import anyio
import aflow as af

async def ticks():
    for i in range(40):
        await anyio.sleep(0.05)
        yield i

slow = af.from_iterable(ticks) | af.map(lambda x: x + 1) | af.collect()
"""


@pytest.mark.slow  # over 2 s: in the slow run (CI runs it)
def test_metrics_port_serves_live_statistics_while_the_run_lasts(tmp_path: Path) -> None:
    (tmp_path / "slowflow.py").write_text(SLOW_FLOW)
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "aflow", "run", "slowflow.py:slow", "--metrics-port", str(port)],
        cwd=tmp_path,
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body = ""
        deadline = time.monotonic() + 10
        while "aflow_stage_items_out" not in body and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
                    body = r.read().decode()
            except OSError:
                time.sleep(0.05)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.strip() == str(list(range(1, 41)))
    assert 'aflow_stage_items_out_total{stage="1:map(lambda)"}' in body
    assert "aflow_peak_bytes_in_flight" in body


@pytest.mark.slow  # over 2 s: in the slow run (CI runs it)
def test_progress_is_shown_on_a_terminal(tmp_path: Path) -> None:
    """Without --progress, a live table appears when stderr is a (pseudo-)terminal."""
    (tmp_path / "slowflow.py").write_text(SLOW_FLOW)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, cols
    proc = subprocess.Popen(
        [sys.executable, "-m", "aflow", "run", "slowflow.py:slow"],
        cwd=tmp_path,
        env=python_env(COLUMNS="120"),
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
    )
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    out, _ = proc.communicate(timeout=30)
    shown = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert out.strip() == str(list(range(1, 41)))
    assert "items out" in shown
    assert "map(lambda)" in shown


def test_no_progress_when_not_a_terminal_and_not_asked(tmp_path: Path) -> None:
    (tmp_path / "slowflow.py").write_text(SLOW_FLOW)
    done = aflow("run", "slowflow.py:slow", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "items out" not in done.stderr


def test_a_missing_extra_is_named_in_one_line() -> None:
    with pytest.raises(SystemExit, match=r"needs the 'no_such_pkg' module: pip install no-such"):
        _require("no_such_pkg", "--progress", "no-such")


def test_version() -> None:
    done = aflow("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"aflow {af.__version__}"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nosuch.py:flow", "aflow run: no file 'nosuch.py'"),
        ("nosuchmodule:flow", "aflow run: no module 'nosuchmodule'"),
        ("slowflow:nosuch", "aflow run: slowflow has no 'nosuch'"),
        ("slowflow", "aflow run: expected MODULE:FLOW or FILE.py:FLOW"),
    ],
)
def test_a_bad_target_is_one_line(tmp_path: Path, target: str, message: str) -> None:
    (tmp_path / "slowflow.py").write_text(SLOW_FLOW)
    done = aflow("run", target, cwd=tmp_path)
    assert done.returncode != 0
    assert done.stderr.strip().startswith(message)
    assert len(done.stderr.strip().splitlines()) == 1


def test_arguments_reach_a_flow_factory_and_records_print_with_names(tmp_path: Path) -> None:
    (tmp_path / "factory.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            import aflow as af

            def readings(n, label="x"):
                rows = np.zeros(n, [("i", "i8"), ("label", "U4")])
                rows["i"] = np.arange(n)
                rows["label"] = label
                return af.from_array(rows, 2) | af.collect()
            """
        )
    )
    done = aflow("run", "factory.py:readings", "--arg", "n=3", "--arg", "label=ab", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["i\tlabel", "0\tab", "1\tab", "2\tab"]
    bad = aflow("run", "factory.py:readings", "--arg", "3", cwd=tmp_path)
    assert bad.returncode == 2
    assert "expected NAME=VALUE" in bad.stderr


def signalled_run(tmp_path: Path, items: int, signum: int) -> subprocess.Popen[str]:
    """``aflow run --stats`` of a slow flow of ``items``, sent ``signum`` once under way."""
    started = tmp_path / "started"
    (tmp_path / "slowflow.py").write_text(
        SLOW_FLOW.replace("range(40)", f"range({items})").replace(
            "        yield i", f"        yield i\n        open({str(started)!r}, 'w').close()"
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "aflow", "run", "slowflow.py:slow", "--stats"],
        cwd=tmp_path,
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while not started.exists() and time.monotonic() < deadline:  # the run is under way
        time.sleep(0.02)
    proc.send_signal(signum)
    return proc


def test_ctrl_c_prints_one_line_and_the_statistics(tmp_path: Path) -> None:
    proc = signalled_run(tmp_path, 4000, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert err.splitlines()[0] == "aflow run: interrupted; partial batches were flushed"
    assert "1:map(lambda)" in err


def test_sigterm_gives_a_partial_result_with_its_own_exit_status(tmp_path: Path) -> None:
    """Issue 14.5: a finite job stopped by SIGTERM prints what it has, says it is partial
    (--stats and stderr) and exits 143, not 0."""
    proc = signalled_run(tmp_path, 1_000_000, signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    got = ast.literal_eval(out)  # the partial list printed
    assert 0 < len(got) < 1_000_000
    assert got == list(range(1, len(got) + 1))  # what was read was flushed, in order
    assert "ended: interrupted by SIGTERM: partial result" in err
    assert "aflow run: terminated (SIGTERM); the result above is partial" in err


def test_a_completed_run_says_so_in_the_statistics(tmp_path: Path) -> None:
    (tmp_path / "myflows.py").write_text(
        "import aflow as af\nsquares = af.from_iterable(range(5)) | af.collect()\n"
    )
    done = aflow("run", "myflows.py:squares", "--stats", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "ended: completed (all input read)" in done.stderr


def test_run_help_gives_the_exit_statuses() -> None:
    done = aflow("run", "--help")
    assert done.returncode == 0
    assert "143 SIGTERM" in " ".join(done.stdout.split())


FOLLOWED_FLOW = """
import aflow as af

def note(line):
    with open("seen.txt", "a") as f:
        f.write(line + "\\n")

follow = af.read_lines("in.log", follow=True, poll_interval=0.02) | af.for_each(note)
other = af.read_lines("in.log") | af.map(str.upper) | af.for_each(note)
"""


INTERVAL = ["--commit-interval", "0.05"]


def _checkpointed_run(tmp_path: Path, target: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aflow", "run", target, "--checkpoint", "cp.db", *INTERVAL],
        cwd=tmp_path,
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _seen(tmp_path: Path, n: int) -> list[str]:
    seen = tmp_path / "seen.txt"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        lines = seen.read_text().splitlines() if seen.exists() else []
        if len(lines) >= n:
            return lines
        time.sleep(0.02)
    return lines


def test_run_with_a_checkpoint_goes_on_where_it_stopped(tmp_path: Path) -> None:
    (tmp_path / "flows.py").write_text(FOLLOWED_FLOW)
    log = tmp_path / "in.log"
    log.write_text("".join(f"a{i}\n" for i in range(50)))
    proc = _checkpointed_run(tmp_path, "flows.py:follow")
    assert len(_seen(tmp_path, 50)) == 50
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    with log.open("a") as f:  # written while it was not running
        f.write("".join(f"b{i}\n" for i in range(50)))
    proc = _checkpointed_run(tmp_path, "flows.py:follow")
    seen = _seen(tmp_path, 100)
    time.sleep(0.3)  # nothing more comes
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    expected = [f"a{i}" for i in range(50)] + [f"b{i}" for i in range(50)]
    assert (tmp_path / "seen.txt").read_text().splitlines() == expected == seen
    # the checkpoint of another flow: a clear error, nothing read
    proc = _checkpointed_run(tmp_path, "flows.py:other")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "was written by another flow" in err
    assert "Traceback" not in err
    assert len((tmp_path / "seen.txt").read_text().splitlines()) == 100
