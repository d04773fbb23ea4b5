"""A log writer process for the rotation tests.

``python _logwriter.py PATH MODE RATE SECONDS [EVERY]``:

Appends the lines ``0\\n``, ``1\\n``, ... to PATH at RATE lines per second for SECONDS,
then prints how many it wrote. It writes as daemons do: one descriptor opened with
``O_APPEND`` (so ``copytruncate`` works), reopened on SIGUSR1 (logrotate's ``postrotate``
sends it, as nginx expects). MODE ``fast`` rotates by itself: every EVERY lines it
renames PATH to PATH.1 (replacing the previous PATH.1) and reopens PATH at once.
"""

from __future__ import annotations

import os
import signal
import sys
import time

FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT


def main() -> None:
    path, mode, rate, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    every = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    reopen = False

    def on_usr1(signum: int, frame: object) -> None:
        nonlocal reopen
        reopen = True

    signal.signal(signal.SIGUSR1, on_usr1)
    fd = os.open(path, FLAGS, 0o644)
    print("ready", flush=True)
    seq = 0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate)
        while seq < due:
            os.write(fd, b"%d\n" % seq)
            seq += 1
            if mode == "fast" and seq % every == 0:
                os.replace(path, path + ".1")
                os.close(fd)
                fd = os.open(path, FLAGS, 0o644)
        if reopen:
            reopen = False
            os.close(fd)
            fd = os.open(path, FLAGS, 0o644)
        time.sleep(0.002)
    os.close(fd)
    print(seq, flush=True)


if __name__ == "__main__":
    main()
