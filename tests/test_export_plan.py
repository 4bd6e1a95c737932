"""Export for Games, the bpy-free rules (blender_addon/export_plan.py): formats, batch's
--export list, helper bones, how FBX carries weights outside [0, 1], the records. Plain
pytest, no Blender."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from blender_addon import export_plan as plan


def test_format_from_the_suffix():
    assert plan.format_for_path("a/b/Head.GLB") == "GLB"
    assert plan.format_for_path(Path("x.fbx")) == "FBX"
    for bad in ("x.gltf", "x", "x.obj"):
        with pytest.raises(plan.ExportError, match=r"\.glb or \.fbx") as e:
            plan.format_for_path(bad)
        assert "\n" not in str(e.value)


def test_batch_export_list():
    assert plan.parse_formats("glb") == [".glb"]
    assert plan.parse_formats("fbx,glb") == [".glb", ".fbx"]
    assert plan.parse_formats(" FBX , .glb ,fbx") == [".glb", ".fbx"]
    assert plan.parse_formats("none") == []
    for bad in ("", "obj", "glb,usd", ","):
        with pytest.raises(plan.ExportError, match="--export takes glb, fbx or none"):
            plan.parse_formats(bad)


def test_helper_bones_and_partial_name():
    assert plan.is_helper_bone("MCH-jaw") and not plan.is_helper_bone("jaw")
    assert not plan.is_helper_bone("head")
    part = plan.partial_path(Path("/out/alice.fbx"))
    assert part.parent == Path("/out") and part.suffix == ".fbx" and part.name.startswith(".")
    assert part != Path("/out/alice.fbx")


def test_fbx_keys_reproduce_every_value_with_weights_in_0_1():
    rng = np.random.default_rng(0)
    names = ["jawOpen", "wide", "neg_only", "still", "wide_neg"]  # a name that a split could take
    values = np.stack(
        [
            rng.uniform(0, 1, 20),  # ARKit-like: untouched
            rng.uniform(-0.7, 1.9, 20),  # both sides out of [0, 1]
            rng.uniform(-0.4, 0.0, 20),  # only negative
            np.zeros(20),  # never moves
            rng.uniform(0, 1, 20),
        ],
        1,
    )
    keys = plan.fbx_keys(names, values)
    got = {k.name: k for k in keys}
    # every source key keeps its own name (ARKit names survive)
    assert [k.name for k in keys if k.name == k.source] == names
    assert got["jawOpen"].unchanged and got["still"].unchanged
    assert got["wide"].scale == pytest.approx(values[:, 1].max())
    assert got["wide_neg2"].source == "wide" and got["wide_neg2"].scale == pytest.approx(
        values[:, 1].min()
    )
    assert got["neg_only_neg"].scale == pytest.approx(values[:, 2].min())
    recon = np.zeros_like(values)
    for k in keys:
        w = k.weights(values[:, names.index(k.source)])
        assert w.min() >= 0.0 and w.max() <= 1.0, k
        recon[:, names.index(k.source)] += k.scale * w
    np.testing.assert_allclose(recon, values, atol=1e-12)
    rec = json.loads(plan.scales_record(keys))
    assert set(rec) == {"wide", "wide_neg2", "neg_only_neg"}
    assert rec["wide_neg2"][0] == "wide" and rec["wide_neg2"][1] < 0


def test_gltf_keys_are_unbounded():
    keys = plan.gltf_keys(["a", "b"])
    assert all(k.unchanged for k in keys)
    np.testing.assert_array_equal(keys[0].weights(np.array([-0.5, 1.6])), [-0.5, 1.6])


def test_slider_range_and_ranges_record():
    assert plan.slider_range(np.array([0.2, 0.5])) == (0.0, 1.0)
    lo, hi = plan.slider_range(np.array([-0.5, 1.6]))
    assert lo <= -0.5 and hi >= 1.6 and hi - 1.6 < 1e-5
    assert plan.slider_range(np.array([-30.0, 30.0])) == (-10.0, 10.0)  # Blender's limit
    rec = json.loads(plan.ranges_record({"mouthSmile_L": (-1, 2)}))
    assert rec == {"mouthSmile_L": [-1.0, 2.0]}
