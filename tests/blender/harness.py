"""pytest side of the Blender tests: find the two Blenders, run a script in one, parse the
`MFNET_RESULT {json}` line it prints.

Blenders: "binary" is a real `blender` executable (CI: Debian's Blender 3.4, where the
add-on installs as a legacy add-on); "bpy" is Blender 5.0 as a Python module in .venv-bpy
(the add-on installs as an extension). Each run gets its own user config/scripts/extensions
folders, so nothing leaks into the developer's Blender.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "tests" / "blender"
RESULT_MARK = "MFNET_RESULT "
KINDS = ("binary", "bpy")


def blender_binary() -> str | None:
    return os.environ.get("MFNET_BLENDER") or shutil.which("blender")


def bpy_python() -> str | None:
    cand = os.environ.get("MFNET_BPY_PYTHON") or str(REPO / ".venv-bpy" / "bin" / "python")
    return cand if Path(cand).exists() else None


def require(kind: str) -> None:
    """Skips with the reason and the fix when that Blender is not installed."""
    if kind == "binary" and not blender_binary():
        pytest.skip("no `blender` binary on PATH (CI: bash .ci/install_blender.sh)")
    if kind == "bpy" and not bpy_python():
        pytest.skip("no bpy 5.0 venv at .venv-bpy (CI: bash .ci/install_blender.sh)")


def isolated_env(home: Path, extra: dict | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(k, None)
    for name in ("CONFIG", "SCRIPTS", "EXTENSIONS", "DATAFILES"):
        env[f"BLENDER_USER_{name}"] = str(home / name.lower())
    env["MFNET_PYTHON"] = sys.executable  # the backend: the venv running these tests
    env.update(extra or {})
    return env


def command(kind: str, script: Path, args: list[str], factory: bool = True) -> list[str]:
    if kind == "binary":
        cmd = [blender_binary(), "-b"]
        if factory:
            cmd.append("--factory-startup")
        return cmd + ["-noaudio", "--python-exit-code", "1", "-P", str(script), "--", *args]
    return [bpy_python(), str(script), *args]


def run(
    kind: str,
    script: str | Path,
    args: list[str],
    home: Path,
    timeout: float = 600,
    env: dict | None = None,
) -> dict:
    """Runs a tests/blender script and returns its result object (asserts it reported)."""
    require(kind)
    script = Path(script)
    if not script.is_absolute():
        script = SCRIPTS / script
    home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        command(kind, script, [str(a) for a in args]),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=isolated_env(home, env),
        cwd=REPO,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if not lines:
        tail = (proc.stdout[-3000:] + "\n--- stderr ---\n" + proc.stderr[-3000:]).strip()
        raise AssertionError(
            f"{script.name} in {kind} Blender printed no result (exit {proc.returncode}):\n{tail}"
        )
    out = json.loads(lines[-1][len(RESULT_MARK) :])
    out["_stdout"] = proc.stdout
    out["_returncode"] = proc.returncode
    if not out.get("ok"):
        raise AssertionError(
            f"{script.name} in {kind} Blender failed: {out.get('error')}\n{out.get('traceback', '')}"
        )
    return out


def built_zip() -> Path:
    """Builds dist/mfnet-<version>.zip with build.py (once per session) and returns it."""
    sys.path.insert(0, str(REPO))
    import build

    version = build.project_version()
    path = build.build(version)
    build.check(path, version)
    return path


def demo_result(tmp_path_factory) -> Path:
    """A result folder made by the real backend: `python -m mfnet_core demo --model
    test-head` (FLAME's file format and LBS). Made once per test session."""
    out = tmp_path_factory.getbasetemp() / "mfnet_demo_result"
    if (out / "rig.npz").is_file():
        return out
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mfnet_core",
            "demo",
            "--model",
            "test-head",  # the FLAME-format model: the parity tests compare with its forward
            "-o",
            str(out),
            "--json",
            "--texture-size",
            "512",
            "--overwrite",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert proc.returncode == 0, f"mfnet demo failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return Path(summary["result_dir"])


def fixture_result(tmp_path_factory, name: str = "fixture_result", **kwargs) -> Path:
    """A synthetic, contract-conformant result folder (tests/blender/make_fixture_result.py)."""
    sys.path.insert(0, str(SCRIPTS))
    from make_fixture_result import make_result

    out = tmp_path_factory.getbasetemp() / name
    if (out / "rig.npz").is_file():
        return out
    return make_result(out, **kwargs)


def ict_result(tmp_path_factory) -> Path:
    """An ICT Face Model result made by the real pipeline (26,719 vertices, the 53 ARKit
    keys, bone-driven DRV- keys), whose left photo has the eyes closed (per-photo
    expressions). Made once per test session (a reconstruction, ~20 s)."""
    import numpy as np
    from test_ict import _person

    from mfnet_core.head.registry import load_head_model
    from mfnet_core.reconstruct import ReconstructOptions, reconstruct

    out = tmp_path_factory.getbasetemp() / "mfnet_ict_result"
    if (out / "rig.npz").is_file():
        return out
    ict = load_head_model("ict")
    names = ict.expression_space.names
    blink = np.zeros(ict.n_expr)
    blink[[names.index("eyeBlink_L"), names.index("eyeBlink_R")]] = 1.0
    inputs = _person(ict, [blink, np.zeros(ict.n_expr), np.zeros(ict.n_expr)])
    reconstruct(inputs, ict, out, ReconstructOptions(device="cpu", texture_size=256))
    return out
