"""`make bench`: run every benchmark in bench/ one after another and print their figures.

Each bench_<topic>.py is standalone (`python bench/bench_<topic>.py --help`); this only sequences them so that
no two compete for the two cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    here = Path(__file__).resolve().parent
    scripts = sorted(here.glob("bench_*.py"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="runs, in this order: " + ", ".join(s.name for s in scripts))
    parser.parse_args()
    failed = []
    for script in scripts:
        print(f"\n=== {script.name} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script)], cwd=here.parent)
        print(f"--- {script.name}: exit {rc}, {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(script.name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
