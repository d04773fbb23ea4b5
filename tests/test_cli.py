"""The ``aflow`` command, run as a real subprocess."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _helpers import python_env

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


def test_run_rejects_what_is_not_a_flow(tmp_path: Path) -> None:
    (tmp_path / "notflow.py").write_text("x = 3\n")
    done = aflow("run", "notflow.py:x", cwd=tmp_path)
    assert done.returncode != 0
    assert "not a flow" in done.stderr
