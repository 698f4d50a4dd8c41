#!/usr/bin/env python3
"""A/B of two builds of `examples/cpu_micro` on one shape, the runs alternating (A, B, A, B, ...)
so that both see the same machine: this VM's speed drifts by up to 2x within minutes when other
processes run, which a run of A followed by a run of B would read as a difference.

    python3 scripts/cpu-micro-ab.py MICRO_A MICRO_B ROUNDS ROWS COLS BATCH THREADS ITERS [cold]

Prints each build's W2A8 AVX2 minimum and median over the rounds, and the median over rounds of
B's median / A's median (below 1: B is faster).
"""

import re
import statistics
import subprocess
import sys


def run(binary: str, args: list[str]) -> tuple[float, float]:
    out = subprocess.run([binary, *args], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if "avx2" in ln and "w2a8" in ln)
    low = float(re.search(r"min\s+([\d.]+)", line).group(1))  # type: ignore[union-attr]
    mid = float(re.search(r"median\s+([\d.]+)", line).group(1))  # type: ignore[union-attr]
    return low, mid


def main() -> None:
    a, b, rounds, args = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    ra, rb = [], []
    for _ in range(rounds):
        ra.append(run(a, args))
        rb.append(run(b, args))
    ratio = statistics.median(y[1] / x[1] for x, y in zip(ra, rb))
    print(
        f"{' '.join(args)}: A min {min(x[0] for x in ra):.1f} median {statistics.median(x[1] for x in ra):.1f} us"
        f" | B min {min(y[0] for y in rb):.1f} median {statistics.median(y[1] for y in rb):.1f} us"
        f" | B/A (median of per-round median ratios) {ratio:.3f}"
    )


if __name__ == "__main__":
    main()
