"""Run every benchmark (``benchmarks/bench_*.py``) in turn: ``make bench``.

Each prints its medians; docs/BENCHMARKS.md holds the latest figures and how they were taken.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).parent
    failed = []
    for script in sorted(here.glob("bench_*.py")):
        name = f"benchmarks.{script.stem}"
        print(f"\n=== {name}", flush=True)
        rc = subprocess.call([sys.executable, "-m", name], cwd=here.parent)
        if rc:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
