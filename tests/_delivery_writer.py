"""Writes ``n`` lines ``key,value`` to a log, renaming it away every ``every`` lines
(run as a subprocess by tests/test_delivery_kill.py)."""

from __future__ import annotations

import os
import sys
import time


def main() -> None:
    path, n, every, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    f = open(path, "a")  # noqa: SIM115 - reopened at each rotation
    rotation = 0
    for i in range(n):
        f.write(f"{i % 13},{i}\n")
        if i % 50 == 49:
            f.flush()
            time.sleep(50 / rate)
        if i % every == every - 1:
            f.close()
            rotation += 1
            os.rename(path, f"{path}.{rotation}")
            f = open(path, "a")  # noqa: SIM115
    f.close()


if __name__ == "__main__":
    main()
