"""The scripts in examples/ run to completion (as real subprocesses) and print their report."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _helpers import python_env

# Real subprocesses, each given up to 60 s (the sensor service runs for 6 s on purpose).
pytestmark = pytest.mark.timeout(150)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=EXAMPLES.parent,
        env=python_env(),
    )


def assert_ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_sgd_minibatches_converges_on_a_small_stream() -> None:
    out = assert_ok(run_example("sgd_minibatches.py", "--rows", "20000", "--epochs", "2"))
    assert "epochs: 2, rows seen: 40,000" in out
    assert "final held-out MSE:" in out
    assert "true    w:" in out
    assert "learned w:" in out
    assert "peak bytes in flight" in out
    assert "converged: max |w - w_true|" in out


def test_sgd_minibatches_fails_when_the_model_does_not_converge() -> None:
    # Too few rows for SGD to converge: the script's own check must fail it.
    proc = run_example("sgd_minibatches.py", "--rows", "3000", "--epochs", "1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "did not converge" in proc.stderr


def test_generators_tour() -> None:
    out = assert_ok(run_example("generators_tour.py"))
    assert "fibonacci | take(10): [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]" in out
    assert "10 with chunk_size=1" in out
    assert "primes | take_while(p < 100): 25 primes, last 97" in out
    assert "primes | take(10): [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]" in out
    assert "5 int64 batches of [1024, 1024, 1024, 1024, 904] rows" in out
    assert "concat(letters, fibonacci | take(5), range(3)): ['a', 'b', 'c', 0, 1, 1, 2, 3" in out
    assert "second pass [] (exhausted)" in out
    assert "run 1 [1, 2, 5, 10, 17] == run 2 [1, 2, 5, 10, 17]" in out
    assert "run 2 raises SourceReusedError" in out
    assert "merge(a every 40 ms, b every 50 ms):" in out
    assert "all sections ok" in out


@pytest.mark.slow  # over 2 s: in the slow run (CI runs it)
def test_log_pipeline_follows_rotation_and_loses_nothing(tmp_path: Path) -> None:
    out = assert_ok(
        run_example(
            "log_pipeline.py", "--seconds", "1.5", "--rotate", "1500", "--out", str(tmp_path)
        )
    )
    assert "log rotated: True" in out
    assert "malformed lines set aside in dead.txt:" in out
    assert "access.log:" in out  # dead letters say where they came from
    assert "nothing lost" in out
    assert f"output kept in {tmp_path}" in out  # issue 14.11: the files reported stay
    kept = tmp_path
    assert (kept / "per_minute.jsonl").read_text()
    assert (kept / "dead.txt").exists()


@pytest.mark.slow  # over 2 s: in the slow run (CI runs it)
def test_sensor_service_counts_every_reading_sent_over_udp_and_tcp() -> None:
    import json
    import socket
    import time
    import urllib.request

    def free_port(kind: int) -> int:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    udp, tcp, http = (
        free_port(socket.SOCK_DGRAM),
        free_port(socket.SOCK_STREAM),
        free_port(socket.SOCK_STREAM),
    )
    ports = ["--udp", str(udp), "--tcp", str(tcp)]
    service = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / "sensor_service.py"),
            *ports,
            "--http",
            str(http),
            "--seconds",
            "6",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=python_env(),
    )
    assert service.stdout is not None
    assert service.stdout.readline().startswith("listening")
    load = assert_ok(run_example("sensor_loadgen.py", *ports, "--devices", "10", "--seconds", "2"))
    sent = int(load.split()[1].replace(",", ""))
    live = {"readings": 0}
    while live["readings"] == 0 and service.poll() is None:  # a real process: poll it
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/sensors", timeout=5) as r:
                live = json.loads(r.read())
        except OSError:  # the service stopped meanwhile
            break
        time.sleep(0.1)
    out, _ = service.communicate(timeout=30)
    assert service.returncode == 0
    assert live["readings"] > 0  # windows closed while the service ran
    assert f"stopped: {sent:,} readings from 10 sensors" in out


def test_extending_source_reads_across_dropped_connections() -> None:
    out = assert_ok(run_example("extending_source.py"))
    assert "10,000 readings, seq 0..9999, none lost or repeated" in out


def test_extending_stage_drops_duplicates_and_flushes_the_rest() -> None:
    out = assert_ok(run_example("extending_stage.py"))
    assert (
        "11,000 rows in, 10,000 out in 20 batches of 512 rows (the last, from flush(), 272)" in out
    )


def test_extending_sink_retries_and_flushes() -> None:
    out = assert_ok(run_example("extending_sink.py"))
    assert "10,500 rows in 11 requests (the last, sent by flush(), of 500 rows)" in out


def test_the_readme_example_is_quickstart_and_runs_as_written() -> None:
    """Issue 14.8: the README's first code block is examples/quickstart.py, verbatim."""
    readme = (EXAMPLES.parent / "README.md").read_text()
    block = readme.split("```python\n", 1)[1].split("```\n", 1)[0]
    assert block == (EXAMPLES / "quickstart.py").read_text()
    out = assert_ok(run_example("quickstart.py"))
    assert "sum of values: 8,415.0; 3 bad lines set aside" in out
    assert "3 errors (3 dead-lettered, 0 skipped)" in out
    assert "26 Fibonacci numbers up to 1,779,979,416,004,714,189" in out


@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in EXAMPLES.glob("*.py") if p.name != "quickstart.py"),
)
def test_help_describes_an_example_without_running_it(name: str) -> None:
    """Issue 14.11 (quickstart.py is the README's snippet, a script without options)."""
    proc = run_example(name, "--help")
    out = assert_ok(proc)
    assert out.startswith("usage:")
    assert proc.stderr == ""


def test_sensor_service_says_when_a_port_is_in_use() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_example("sensor_service.py", "--http", str(port), "--seconds", "1")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "a port is in use" in proc.stderr
    assert f"http {port}; pick free ones with --udp, --tcp and --http" in proc.stderr


def test_sensor_service_docstring_gives_the_window_it_uses() -> None:
    text = (EXAMPLES / "sensor_service.py").read_text()
    assert "WINDOW_MS = 1_000" in text
    assert "1-second windows" in text
    assert "10-second" not in text


def test_asyncio_service_stops_gracefully_on_sigterm() -> None:
    """Issue 14.7: the plain asyncio service recipe, run and sent SIGTERM."""
    import signal

    service = subprocess.Popen(
        [sys.executable, "-W", "error", str(EXAMPLES / "asyncio_service.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
    )
    assert service.stdout is not None
    assert service.stdout.readline() == "service up; health: running\n"
    service.send_signal(signal.SIGTERM)
    out, err = service.communicate(timeout=30)
    assert service.returncode == 0, err
    assert out.startswith("health: ended: stopped; ")
    assert out.endswith(" readings counted\n")


def test_image_classifier_learns_from_a_generated_folder() -> None:
    out = assert_ok(run_example("image_classifier.py", "--images", "450", "--epochs", "3"))
    assert "epoch 3: " in out
    assert "validation accuracy" in out
    assert "classes: blobs, rings, stripes" in out
    assert "resident memory" in out
    assert "learned: final validation accuracy" in out


def test_dataset_memory_compares_both_loaders() -> None:
    out = assert_ok(run_example("dataset_memory.py", "--images", "300", "--side", "48"))
    assert "  list loader: peak resident memory" in out
    assert " aflow loader: peak resident memory" in out
    assert "same per-channel means" in out


def _web_service() -> Any:
    """examples/web_service.py, imported (its app is tested in process, lifespan and all)."""
    spec = importlib.util.spec_from_file_location("web_service", EXAMPLES / "web_service.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_web_service_reports_health_and_statistics_and_stops_with_the_app() -> None:
    """Issue 14.7: the Starlette/FastAPI lifespan recipe, served through its ASGI app."""
    from starlette.testclient import TestClient

    web = _web_service()
    with TestClient(web.make_app()) as client:  # lifespan: the flow starts
        assert client.get("/health").json() == {"state": "running", "errors": 0}
        deadline = time.monotonic() + 10
        while not client.get("/stats").json() and time.monotonic() < deadline:
            time.sleep(0.02)  # the first batch is on its way (a real feed)
        table = client.get("/stats").json()
        pipeline = client.app.state.pipeline  # type: ignore[attr-defined]
    assert {row["sensor"] for row in table} <= set(range(8))
    assert all(row["count"] > 0 and 15 < row["mean"] < 33 for row in table)
    assert pipeline.done  # the shutdown stopped it, gracefully:
    assert pipeline.ended == "stopped"


def test_web_service_says_when_its_flow_ended() -> None:
    from starlette.testclient import TestClient

    web = _web_service()
    with TestClient(web.make_app(batches=3)) as client:
        deadline = time.monotonic() + 10
        while client.get("/health").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        health = client.get("/health")
        stats = client.get("/stats").json()
    assert (health.status_code, health.json()) == (503, {"state": "completed", "errors": 0})
    assert sum(row["count"] for row in stats) == 1500


def test_trio_service_runs_beside_other_tasks_and_stops_gracefully() -> None:
    """Issue 14.7: the trio recipe."""
    out = assert_ok(run_example("trio_service.py", "--seconds", "0.5"))
    assert "heartbeat: " in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("ended: stopped; sum ")
    assert last.endswith(" (on trio)")


def test_notebook_cells_run_as_jupyter_runs_them() -> None:
    """Issue 14.7: examples/notebook.ipynb's code cells, run one after the other in one
    namespace inside a running event loop with top-level await (what IPython does)."""
    import ast
    import asyncio
    import json

    cells = json.loads((EXAMPLES / "notebook.ipynb").read_text())["cells"]
    namespace: dict[str, Any] = {}

    async def kernel() -> list[Any]:
        shown = []
        for cell in cells:
            if cell["cell_type"] != "code":
                continue
            tree = ast.parse("".join(cell["source"]))
            last = tree.body.pop() if isinstance(tree.body[-1], ast.Expr) else None
            flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
            body = compile(tree, "notebook.ipynb", "exec", flags=flags)
            if (done := eval(body, namespace)) is not None:  # a coroutine: top-level await
                await done
            if last is not None:
                code = compile(ast.Expression(last.value), "notebook.ipynb", "eval", flags=flags)
                value = eval(code, namespace)
                shown.append(await value if asyncio.iscoroutine(value) else value)
        return shown

    table, ended, message, delivered = asyncio.run(kernel())
    assert table["count"].sum() == 100_000
    assert ended == "completed"
    assert "use `await flow.run()` instead" in message
    assert delivered == 100_000
