"""Export for Games in real Blenders (Debian's 3.4 binary and bpy 5.0): a rig with every
kind of driven motion (the ARKit fixture: DRV- keys driven by the jaw and eye bones,
pose-corrective drivers, MCH- pivot bones moved by the expression) is animated, exported
to .glb and .fbx, and re-imported into an empty scene: the evaluated mesh equals the
original rig's within 0.1 mm at six frames, and the user's rig is exactly as before. The
.glb is also read with pygltflib: ARKit morph-target names, one animation with weights and
rotation channels, no MCH- joint, the texture embedded, weights beyond [0, 1] kept.

The .glb is re-imported with Blender's own glTF importer in both Blenders; in 3.4 the
check script first sets `numpy.bool = bool` (Debian's numpy 1.24 removed it and 3.4's
importer still calls it; see tests/blender/check_game_export.py). The batch's `--export`
runs on a result folder it reuses, so no reconstruction is needed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pygltflib  # a dependency of mfnet itself (pyproject.toml)
import pytest

sys.path.insert(0, str(Path(__file__).parent / "blender"))
import harness  # noqa: E402
from make_fixture_result import ARKIT_NAMES  # noqa: E402

pytestmark = pytest.mark.blender

TOL = 1e-4  # metres: 0.1 mm
BONES = ["root", "neck", "jaw", "eye_L", "eye_R", "head"]  # the joints and the head socket
FIRST_FRAME = {"glb": 0, "fbx": 1}  # where Blender's importers put the take's time 0


@pytest.fixture(scope="module")
def addon_zip() -> Path:
    return harness.built_zip()


@pytest.fixture(scope="module")
def arkit_dir(tmp_path_factory) -> Path:
    return harness.fixture_result(
        tmp_path_factory, "arkit_fixture_result", n_expressions=10, seed=4, arkit=True
    )


@pytest.fixture(scope="module")
def ict_dir(tmp_path_factory) -> Path:
    return harness.ict_result(tmp_path_factory)


# --------------------------------------------------------------------------- glb reading


def _accessor(g, index: int) -> np.ndarray:
    """A float accessor's values (count, n) from the .glb's binary chunk."""
    acc = g.accessors[index]
    view = g.bufferViews[acc.bufferView]
    n = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}[acc.type]
    assert acc.componentType == 5126, "float32 expected"
    start = (view.byteOffset or 0) + (acc.byteOffset or 0)
    stride = view.byteStride or 4 * n
    raw = np.frombuffer(g.binary_blob(), np.uint8, stride * (acc.count - 1) + 4 * n, start)
    rows = [raw[i * stride : i * stride + 4 * n].view(np.float32) for i in range(acc.count)]
    return np.array(rows)


def check_glb(path: Path) -> dict:
    """What the .glb holds, read without Blender."""
    g = pygltflib.GLTF2().load(str(path))
    mesh = g.meshes[0]
    names = mesh.extras["targetNames"]
    assert all(len(p.targets) == len(names) for p in mesh.primitives)
    joints = [g.nodes[j].name for j in g.skins[0].joints]
    assert len(g.animations) == 1, [a.name for a in g.animations]
    anim = g.animations[0]
    channels = {(g.nodes[c.target.node].name, c.target.path): c for c in anim.channels}
    weights = channels[("face", "weights")]
    sampler = anim.samplers[weights.sampler]
    times = _accessor(g, sampler.input).ravel()
    w = _accessor(g, sampler.output).reshape(len(times), len(names))
    node = next(n for n in g.nodes if n.mesh is not None)
    return {
        "names": names,
        "joints": joints,
        "nodes": [n.name for n in g.nodes],
        "channels": set(channels),
        "times": times,
        "weights": {n: w[:, k] for k, n in enumerate(names)},
        "images": [(i.mimeType, i.bufferView, i.uri) for i in g.images],
        "ranges": json.loads(node.extras["mfnet_key_ranges"]),
        "mesh_ranges": json.loads(mesh.extras["mfnet_key_ranges"]),
    }


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("kind", harness.KINDS)
def test_game_export_round_trip(kind, addon_zip, arkit_dir, tmp_path):
    work = tmp_path / "work"
    res = harness.run(
        kind, "check_game_export.py", [arkit_dir, work, "--zip", addon_zip], tmp_path / "home"
    )
    # the rig has every kind of driven motion, and the animation uses it
    keys = res["rig_keys"]
    assert {"DRV-jawOpen", "DRV-eyeLookDown_L", "pose_jaw_12"} <= set(keys)
    assert "MCH-jaw" in res["rig_bones"]
    drv = res["driven_values"]
    assert drv["5"]["DRV-jawOpen"] > 0.5 and drv["1"]["DRV-jawOpen"] == 0.0
    assert drv["5"]["mouthSmile_L"] == pytest.approx(1.6) and drv["10"]["mouthSmile_L"] < -0.2

    # the export leaves the user's rig and scene exactly as they were
    assert res["export_results"] == {"glb": ["FINISHED"], "fbx": ["FINISHED"]}
    assert res["state_changes"] == [] and res["state_keys"] >= 20 and res["mode"] == "POSE"
    assert "exists" in res["refused_overwrite"] and res["kept_file"]
    assert res["leftovers"] == []
    assert res["no_suffix"] == {"result": ["FINISHED"], "files": ["bare.fbx"]}

    arkit = set(ARKIT_NAMES)
    for fmt in ("glb", "fbx"):
        info = res[fmt]
        errs = info["errors"]
        print(f"{kind} Blender {res['blender']} {fmt}: max vertex error per frame (m) {errs}")
        assert max(errs.values()) < TOL, errs
        assert info["covered"] and info["first_frame"] == FIRST_FRAME[fmt]
        assert info["bones"] == BONES and info["drivers"] == 0
        assert arkit <= set(info["keys"]) and "DRV-jawOpen" in info["keys"]
        assert len(info["images"]) == 1 and info["images"][0][1], "the texture, packed"
        still = res[f"still_{fmt}"]
        print(f"{kind} {fmt} still (frame 5): {still['error']:.3g} m")
        assert still["error"] < TOL and still["actions"] == []
    assert res["glb"]["sliders_from_record"] == len(keys) - 1

    # FBX: weights in [0, 1] only; mouthSmile_L (-0.5 to 1.6) is split and scaled
    fbx = res["fbx"]
    scales = json.loads(fbx["mesh_props"]["mfnet_key_scales"])
    assert scales["mouthSmile_L"] == ["mouthSmile_L", pytest.approx(1.6)]
    assert scales["mouthSmile_L_neg"] == ["mouthSmile_L", pytest.approx(-0.5)]
    ranges = json.loads(fbx["mesh_props"]["mfnet_key_ranges"])
    assert ranges["mouthSmile_L"] == [-1.0, 2.0] and ranges["jawOpen"] == [0.0, 1.0]
    assert b"\x89PNG" in (work / "face.fbx").read_bytes(), "the texture, embedded"

    # the .glb, read without Blender
    g = check_glb(work / "face.glb")
    assert arkit <= set(g["names"]) and "DRV-jawOpen" in g["names"]
    assert g["joints"] == BONES and not any(n.startswith("MCH-") for n in g["nodes"])
    for bone in ("root", "neck", "jaw", "eye_L"):
        assert (bone, "rotation") in g["channels"]
    assert g["times"][0] == 0.0 and len(g["times"]) == 12
    smile = g["weights"]["mouthSmile_L"]
    assert smile.max() == pytest.approx(1.6, abs=1e-6) and smile.min() == pytest.approx(-0.5)
    assert g["weights"]["DRV-jawOpen"][4] > 0.5  # frame 5: the jaw's baked key
    assert g["images"] == [("image/png", g["images"][0][1], None)] and g["images"][0][1] is not None
    assert g["ranges"]["mouthSmile_L"] == [-1.0, 2.0] == g["mesh_ranges"]["mouthSmile_L"]


@pytest.mark.slow  # a reconstruction (shared with test_blender_addon.py), then ~25 s in 3.4
@pytest.mark.parametrize("kind", harness.KINDS)
def test_game_export_of_an_ict_rig(kind, addon_zip, ict_dir, tmp_path):
    """The same round trip on a real ICT Face Model rig: 26,719 vertices in one material
    slot per part, the 53 ARKit keys, 11 DRV- keys; the model's licence travels in the .glb."""
    work = tmp_path / "work"
    res = harness.run(
        kind, "check_game_export.py", [ict_dir, work, "--zip", addon_zip], tmp_path / "home"
    )
    assert res["n_vertices"] == 26719 and res["state_changes"] == []
    with np.load(ict_dir / "rig.npz") as z:
        arkit = {str(n) for n in z["expression_names"]}
    assert len(arkit) == 53
    for fmt in ("glb", "fbx"):
        info = res[fmt]
        print(
            f"ICT, {kind} Blender {res['blender']} {fmt} ({info['size'] / 1e6:.1f} MB): "
            f"max vertex error per frame (m) {info['errors']}"
        )
        assert max(info["errors"].values()) < TOL and info["covered"]
        assert arkit <= set(info["keys"]) and info["bones"] == BONES
        assert res[f"still_{fmt}"]["error"] < TOL
    g = check_glb(work / "face.glb")
    assert (
        arkit <= set(g["names"]) and len([n for n in g["names"] if n.startswith("DRV-")]) == 12
    )  # jawOpen/Left/Right/Forward + 8 eyeLook
    assert g["joints"] == BONES and ("jaw", "rotation") in g["channels"]
    copyright = pygltflib.GLTF2().load(str(work / "face.glb")).asset.copyright
    assert "ICT" in copyright and "MIT" in copyright


# --------------------------------------------------------------------------- batch


def _batch(kind: str, inp: Path, out: Path, home: Path, extra: list[str]):
    harness.require(kind)
    script = harness.REPO / "blender_addon" / "batch.py"
    args = ["--input", str(inp), "--output", str(out), "--python", sys.executable, *extra]
    if kind == "binary":
        cmd = [harness.blender_binary(), "-b", "-noaudio", "-P", str(script), "--", *args]
    else:
        cmd = [harness.bpy_python(), str(script), "--", *args]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=900,
        env=harness.isolated_env(home),
        cwd=harness.REPO,
    )


@pytest.mark.parametrize("kind", harness.KINDS)
def test_batch_export_fbx_and_glb(kind, arkit_dir, tmp_path):
    """`--export fbx,glb` writes both beside the .blend (the person's result folder is
    reused, so nothing is reconstructed); `--no-glb` still drops the .glb; a bad list is
    exit code 2."""
    inp, out = tmp_path / "in", tmp_path / "out"
    (inp / "ada").mkdir(parents=True)
    (inp / "ada" / "front.jpg").write_bytes(b"not used: the result folder is reused")
    shutil.copytree(arkit_dir, out / "ada" / "result")
    proc = _batch(kind, inp, out, tmp_path / "home", ["--export", "fbx,glb"])
    log = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, log
    summary = json.loads((out / "summary.json").read_text())
    person = summary["people"][0]
    assert summary["succeeded"] == ["ada"] and "reusing" in proc.stdout
    assert Path(person["glb"]) == out / "ada" / "ada.glb" and Path(person["fbx"]).is_file()
    glb = pygltflib.GLTF2().load(str(out / "ada" / "ada.glb"))
    assert set(ARKIT_NAMES) <= set(glb.meshes[0].extras["targetNames"])
    assert not any(n.name.startswith("MCH-") for n in glb.nodes) and glb.animations == []
    assert (out / "ada" / "ada.fbx").read_bytes()[:18] == b"Kaydara FBX Binary"

    # done is done: a rerun skips; asking for a format not written yet redoes the person
    again = _batch(kind, inp, out, tmp_path / "home", ["--export", "fbx,glb"])
    assert json.loads((out / "summary.json").read_text())["skipped"] == ["ada"], again.stdout
    (out / "ada" / "ada.fbx").unlink()
    only = _batch(kind, inp, out, tmp_path / "home", ["--export", "fbx", "--no-glb"])
    assert only.returncode == 0 and (out / "ada" / "ada.fbx").is_file()
    bad = _batch(kind, inp, out, tmp_path / "home", ["--export", "obj"])
    assert bad.returncode == 2 and "--export takes glb, fbx or none" in bad.stdout
