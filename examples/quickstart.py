"""The README's first example: CSV files read concurrently, NumPy in worker threads."""

import tempfile
from pathlib import Path

import numpy as np

import aflow as af

reading = np.dtype([("ts", "i8"), ("sensor", "i4"), ("value", "f4")])


def calibrate(batch: np.ndarray) -> np.ndarray:
    """Sensor offsets removed, one NumPy call per batch of rows."""
    out = batch.copy()
    out["value"] -= 0.5 * (batch["sensor"] % 2)
    return out


def fib():
    a, b = 0, 1
    while True:  # infinite: the flow takes what it needs
        yield a
        a, b = b, a + b


data = tempfile.TemporaryDirectory()  # three files of 1,000 readings: some NaN, one corrupt
for k in range(3):
    lines = [f"{i},{k},{'nan' if i % 100 == 0 else i % 7}" for i in range(1_000)]
    Path(data.name, f"sensors-{k}.csv").write_text("\n".join([*lines, "not,a,reading"]) + "\n")

bad_lines = []
# The files are read concurrently; a bad line is set aside in bad_lines, not fatal.
flow = (
    af.read_csv(f"{data.name}/sensors-*.csv", reading, on_error=af.dead_letter(bad_lines))
    | af.map_batches(calibrate, thread=True)  # NumPy in worker threads
    | af.filter_rows(lambda b: ~np.isnan(b["value"]))  # vectorized row selection
    | af.reduce(lambda total, b: total + b["value"].sum(), 0.0)
)
result = af.run(flow)  # in async code: result = await flow.run()
print(f"sum of values: {result.value:,.1f}; {len(bad_lines)} bad lines set aside")
print(result.statistics.format())
data.cleanup()

# Python generators too: re-runnable, batched, bounded
batches = af.run(af.from_iterable(fib) | af.take(90) | af.batch(32) | af.collect("list"))
for numbers in batches.value:  # int64 arrays of up to 32 numbers
    print(f"{len(numbers)} Fibonacci numbers up to {numbers[-1]:,}")
