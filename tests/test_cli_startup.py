"""The CLI answers --help, --version, argument errors and missing files without loading
torch, OpenCV or dlib (seconds of imports); benchmarks/bm_cli_startup.py times it."""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "cv2", "dlib", "smplx", "pygltflib", "trimesh")

PROBE = """
import json, sys
from mfnet_core.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
heavy = sorted(m for m in HEAVY if m in sys.modules)
print(json.dumps({"rc": rc, "heavy": heavy}))
""".replace("HEAVY", repr(HEAVY))


def _probe(*argv: str) -> tuple[dict, str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=300
    )
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.parametrize(
    "argv, rc, message",
    [
        (["--version"], 0, ""),
        (["--help"], 0, ""),
        (["reconstruct"], 2, "required"),
        (["reconstruct", "missing.jpg", "-o", "out"], 2, "missing.jpg: file not found"),
        (["reconstruct", "a.jpg", "-o", "out", "--losses", "flwo"], 2, "unknown loss term"),
        (["reconstruct", "a.jpg", "-o", "out", "--raft-weights", "w.pth"], 2, "raft"),
        (["demo", "--losses", "landmarks,nope"], 2, "unknown loss term"),
    ],
)
def test_quick_answers_load_no_heavy_module(tmp_path, monkeypatch, argv, rc, message):
    monkeypatch.chdir(tmp_path)
    out, err = _probe(*argv)
    assert out["rc"] == rc, err
    assert out["heavy"] == [], f"mfnet {' '.join(argv)} imported {out['heavy']}"
    assert message in err
    assert not (tmp_path / "out").exists()


def test_a_bad_photo_is_refused_before_torch_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out, err = _probe("reconstruct", "broken.jpg", "-o", "out")
    assert out["rc"] == 2 and "broken.jpg" in err
    assert out["heavy"] == []


@pytest.mark.parametrize(
    "argv, rc, out_json, err",
    [
        (["doctor", "--json"], None, True, ""),
        (["reconstruct", "missing.jpg", "-o", "out"], 2, False, "missing.jpg: file not found"),
    ],
)
def test_the_command_ends_at_once_with_its_output_flushed(tmp_path, argv, rc, out_json, err):
    """`python -m mfnet_core` ends with os._exit after main (no interpreter teardown): what
    it printed into a pipe must still arrive whole, with main's exit code."""
    proc = subprocess.run(
        [sys.executable, "-m", "mfnet_core", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    if rc is not None:
        assert proc.returncode == rc, proc.stderr
    else:
        assert proc.returncode in (0, 1), proc.stderr  # doctor: 1 when something is missing
    if out_json:
        assert "python" in json.dumps(json.loads(proc.stdout)).lower()
    assert err in proc.stderr


GC_PROBE = """
import gc, json
from mfnet_core.cli import _no_collection_while_loading
seen = {}
with _no_collection_while_loading():
    seen["inside"] = gc.isenabled()
    kept = [[i] for i in range(1000)]  # objects made while loading
seen["after"] = gc.isenabled()
seen["frozen"] = gc.get_freeze_count()
gc.unfreeze()
gc.disable()
try:
    with _no_collection_while_loading():
        raise KeyError("a failed import")
except KeyError:
    pass
seen["disabled_stays_disabled"] = not gc.isenabled()
print(json.dumps(seen))
"""


def test_loading_runs_without_collections_then_freezes_what_it_made():
    """The heavy imports and the model load run with the collector off; what they made is
    frozen (never scanned again) and the collector is back as it was, after errors too."""
    proc = subprocess.run(
        [sys.executable, "-c", GC_PROBE], capture_output=True, text=True, timeout=120
    )
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["inside"] is False
    assert seen["after"] is True
    assert seen["frozen"] >= 1000
    assert seen["disabled_stays_disabled"] is True
