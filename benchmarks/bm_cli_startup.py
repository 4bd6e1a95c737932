"""How fast the CLI answers what needs no model: --version, --help, an argument error and a
missing photo, each in a cold process as users run it (median of --repeats runs, seconds).

    python benchmarks/bm_cli_startup.py [--repeats 5] [--json]

The reference workload (`python -c pass`) is the interpreter's own start, timed the same
way, so each figure is also given as a ratio to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {
    "version": ["--version"],
    "help": ["--help"],
    "argument_error": ["reconstruct", "a.jpg", "-o", "out", "--losses", "flwo"],
    "missing_photo": ["reconstruct", "missing.jpg", "-o", "out"],
}


def _time(cmd: list[str], cwd: str) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    mfnet = shutil.which("mfnet", path=os.path.dirname(sys.executable)) or "mfnet"
    with tempfile.TemporaryDirectory() as tmp:
        ref = statistics.median(
            _time([sys.executable, "-c", "pass"], tmp) for _ in range(args.repeats)
        )
        results = {
            name: statistics.median(_time([mfnet, *argv], tmp) for _ in range(args.repeats))
            for name, argv in CASES.items()
        }
    out = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_avg": [round(x, 2) for x in os.getloadavg()],
        },
        "reference_python_start_s": round(ref, 4),
        "seconds": {k: round(v, 4) for k, v in results.items()},
        "ratio_to_reference": {k: round(v / ref, 2) for k, v in results.items()},
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"reference (python -c pass): {ref:.3f} s")
        for k, v in results.items():
            print(f"mfnet {k:16s} {v:.3f} s  ({v / ref:.1f}x)")


if __name__ == "__main__":
    main()
