"""``make bench``: run every benchmark script under bench/ in turn, each in its own process.

Each script prints its own figures and ratios against a baseline measured in the same run;
this runner only sequences them and says which one failed. Benchmarks never run in CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_"))
    print(f"machine: {os.cpu_count()} cores; {len(scripts)} benchmarks", flush=True)
    failed = []
    for script in scripts:
        print(f"\n=== {script.name}", flush=True)
        if subprocess.run([sys.executable, str(script)], check=False).returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
