"""The child programs the benchmarks run, as ``python -c`` argv lists (no files to ship).

The handler runs them exactly as the raw-pipe baselines do, so both sides
measure the same child.
"""

from __future__ import annotations

import sys

_BULK = """
import sys
total = int(sys.argv[1])
block = b"a" * (1 << 20)
write = sys.stdout.buffer.write
for _ in range(total >> 20):
    write(block)
write(block[: total & ((1 << 20) - 1)])
sys.stdout.buffer.flush()
"""

_TICKER = """
import os, sys, time
count, period, delay = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
time.sleep(delay)
due = time.monotonic()
for i in range(count):
    os.write(1, f"{i} {time.time_ns()}\\n".encode())
    due += period
    pause = due - time.monotonic()
    if pause > 0:
        time.sleep(pause)
"""


def bulk(total_bytes: int) -> list[str]:
    """Writes ``total_bytes`` of ``a`` to stdout in 1 MiB blocks."""
    return [sys.executable, "-c", _BULK, str(total_bytes)]


def lines(count: int) -> list[str]:
    """``count`` short lines (1, 2, 3, …): ``seq``, as a user's command would print them."""
    return ["seq", str(count)]


def ticker(count: int, period: float = 0.01, delay: float = 0.5) -> list[str]:
    """After ``delay`` s, one line ``"<i> <time.time_ns()>"`` every ``period`` s, each written at once."""
    return [sys.executable, "-c", _TICKER, str(count), str(period), str(delay)]
