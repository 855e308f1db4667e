"""How fast `safesample --help` answers (shell completion runs the program on every TAB).

Target: under 0.5 s on the 2-core dev machine. Baseline measured in the same run: a bare
`python -c pass`, so the figure separates our import cost from interpreter start-up.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

RUNS = 15
TARGET_S = 0.5


def timed(cmd: list[str]) -> float:
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    bare = timed([sys.executable, "-c", "pass"])
    help_s = timed([sys.executable, "-m", "safesample", "--help"])
    cmd_help = timed([sys.executable, "-m", "safesample", "select", "--help"])
    print(f"python -c pass          : {bare * 1000:7.1f} ms (baseline)")
    print(f"safesample --help       : {help_s * 1000:7.1f} ms  ratio vs baseline {help_s / bare:5.2f}x")
    print(f"safesample select --help: {cmd_help * 1000:7.1f} ms")
    print(f"target {TARGET_S * 1000:.0f} ms: {'PASS' if help_s < TARGET_S else 'FAIL'} "
          f"(ratio to target {help_s / TARGET_S:.2f})")


if __name__ == "__main__":
    main()
