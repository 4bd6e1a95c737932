"""How `mfnet reconstruct` scales with the number of photos and their size (issue 15, item 4).

    python benchmarks/bm_scale.py [--photos 1,3,5,9] [--sizes 512,1024,2048,4032] [--json]

For each count N and size S: N photos of one synthetic ICT person
(`synthetic.make_realistic_subject`, yaws spread evenly over -40..+40 degrees, rendered at
1024 px and resized to S, as a phone's photos would be larger than their detail), written as
JPEG, then `python -m mfnet_core reconstruct` run as a cold process, as users run it, with
the default options (landmarks detected, flow on, the ICT model). Per run: wall seconds,
the pipeline's own stages (report.json), and the process's peak memory (its maximum resident
set size). Seconds are also given as ratios to the reference workload timed in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from reference import Reference

# Runs one child and prints its peak resident set size (kB; Linux ru_maxrss units).
_MEASURE = (
    "import resource, subprocess, sys; "
    "rc = subprocess.run(sys.argv[1:]).returncode; "
    "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def photos_of_one_person(n: int, size: int, folder: Path) -> list[Path]:
    import cv2

    from mfnet_core.head.registry import load_head_model
    from mfnet_core.synthetic import RealisticOptions, make_realistic_subject

    head = load_head_model("ict")
    yaws = tuple(np.linspace(-40.0, 40.0, n)) if n > 1 else (0.0,)
    subject = make_realistic_subject(
        head, seed=3, options=RealisticOptions(yaws_deg=yaws, image_size=1024)
    )
    paths = []
    for i, view in enumerate(subject.views):
        rgb = cv2.resize(view.photo.rgb, (size, size), interpolation=cv2.INTER_CUBIC)
        path = folder / f"photo_{i}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        paths.append(path)
    return paths


def run_cold(photos: list[Path], out: Path, extra: tuple[str, ...] = ()) -> dict:
    """`python -m mfnet_core reconstruct PHOTOS -o OUT [extra]` as a cold child process:
    wall seconds, peak resident MB, report.json's stages."""
    cmd = [sys.executable, "-m", "mfnet_core", "reconstruct", *map(str, photos), "-o", str(out)]
    cmd += list(extra)
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd, "--progress", "none"],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t
    rc, rss_kb = (int(x) for x in proc.stdout.split()[-2:])
    if rc != 0:
        raise SystemExit(f"reconstruct failed ({rc}): {proc.stderr[-500:]}")
    stages = json.loads((out / "report.json").read_text())["timings_s"]
    return {"wall_s": round(wall, 3), "peak_rss_mb": round(rss_kb / 1024, 1), "stages_s": stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", default="1,3,5,9")
    ap.add_argument("--sizes", default="512,1024,2048,4032")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ref = Reference.start()
    load_before = os.getloadavg()
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.photos.split(",")):
            for size in (int(x) for x in args.sizes.split(",")):
                folder = Path(tmp) / f"{n}x{size}"
                folder.mkdir()
                photos = photos_of_one_person(n, size, folder)
                rows[f"{n}x{size}"] = run_cold(photos, folder / "out")
                if not args.json:
                    r = rows[f"{n}x{size}"]
                    print(
                        f"{n} photos at {size} px: {r['wall_s']} s, {r['peak_rss_mb']} MB",
                        flush=True,
                    )
    ref.finish()
    walls = {k: v["wall_s"] for k, v in rows.items()}
    out = {
        **ref.to_json(),
        "load_average_before": [round(x, 2) for x in load_before],
        "runs": rows,
        "ratio_to_reference": ref.ratios(walls),
    }
    print(json.dumps(out, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
