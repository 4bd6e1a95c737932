"""How fast the CLI answers what needs no model: --version, --help, an argument error and a
missing photo, each in a cold process as users run it (median of --repeats runs, seconds).

    python benchmarks/bm_cli_startup.py [--repeats 5] [--json]

Each figure is also given as a ratio to two references timed in this run: the
interpreter's own start (`python -c pass`, timed the same way) and the reference workload
every benchmark times in its own process (`benchmarks/reference.py`, timed after the CLI
runs so that its imports warm nothing for them), with the machine's CPU model, cores and load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from reference import Reference, machine

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
    machine_start = machine()
    with tempfile.TemporaryDirectory() as tmp:
        py = statistics.median(
            _time([sys.executable, "-c", "pass"], tmp) for _ in range(args.repeats)
        )
        results = {
            name: statistics.median(_time([mfnet, *argv], tmp) for _ in range(args.repeats))
            for name, argv in CASES.items()
        }
    ref = Reference.start(machine_start=machine_start).finish(repeats=0)
    out = {
        **ref.to_json(),
        "reference_python_start_s": round(py, 4),
        "seconds": {k: round(v, 4) for k, v in results.items()},
        "ratio_to_reference": ref.ratios(results),
        "ratio_to_python_start": {k: round(v / py, 2) for k, v in results.items()},
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(ref.summary())
        print(f"python -c pass: {py:.3f} s")
        for k, v in results.items():
            print(
                f"mfnet {k:16s} {v:.3f} s  ({ref.ratio(v, 2):.2f} x reference, "
                f"{v / py:.1f} x python start)"
            )


if __name__ == "__main__":
    main()
