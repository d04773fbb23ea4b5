"""The pipeline of the delivery proof (run as a subprocess by tests/test_delivery_kill.py):
follow a rotated log of ``key,value`` lines into a CSV file sink (writing each batch as it
comes, so a kill leaves uncommitted lines in it) and a keyed aggregate,
with a checkpoint; at a graceful stop, write the aggregate as JSON."""

from __future__ import annotations

import json
import sys

import numpy as np

import aflow as af

DT = np.dtype([("key", "i8"), ("value", "i8")])


def main() -> None:
    log, out, db, result, backend = sys.argv[1:6]
    flow = af.read_csv(log, DT, follow=True, poll_interval=0.05, rotate_wait=0.5) | af.broadcast(
        af.to_csv(out, chunk_bytes=1), af.to_aggregate("key", "value", ("count", "sum"))
    )
    r = af.run(flow, checkpoint=db, commit_interval=0.2, backend=backend)
    agg = r.value[1]
    with open(result, "w") as f:
        json.dump({str(k): [int(c), int(s)] for k, c, s in agg.tolist()}, f)


if __name__ == "__main__":
    main()
