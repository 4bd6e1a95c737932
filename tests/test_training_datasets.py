"""Dataset indexing and the errors a user sees for missing or malformed dataset folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mfnet_core.errors import MfnetError
from training.config import FaceScapeData, MultiPieData, load_config
from training.datasets import facescape_camera_yaws, index_facescape, index_multipie


def _touch(p: Path) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")


def fake_multipie(root: Path, cams=("05_1", "19_0", "04_1", "08_0", "13_0")) -> None:
    for subj in ("001", "002"):
        for cam in cams:
            for illum in (0, 7):
                digits = cam.replace("_", "")
                _touch(
                    root
                    / "data/session01/multiview"
                    / subj
                    / "01"
                    / cam
                    / f"{subj}_01_01_{digits}_{illum:02d}.png"
                )


def test_multipie_triplets(tmp_path: Path):
    fake_multipie(tmp_path)
    trip = index_multipie(MultiPieData(root=str(tmp_path)))
    assert len(trip) == 4  # 2 subjects x 1 recording x 2 illuminations
    for t in trip:
        left, front, right = (Path(p).parent.name for p in t.paths)
        assert front == "05_1" and left in ("19_0", "04_1") and right in ("08_0", "13_0")
        illums = {Path(p).stem[-2:] for p in t.paths}
        assert len(illums) == 1  # same flash in all three views
    assert index_multipie(MultiPieData(root=str(tmp_path), illuminations=[7]))[0].key.endswith(
        "/07"
    )


def test_multipie_errors(tmp_path: Path):
    with pytest.raises(MfnetError, match="folder not found"):
        index_multipie(MultiPieData(root=str(tmp_path / "missing")))
    (tmp_path / "data").mkdir()
    with pytest.raises(MfnetError, match="session01"):
        index_multipie(MultiPieData(root=str(tmp_path)))
    fake_multipie(tmp_path, cams=("05_1", "19_0"))  # no right-side camera
    with pytest.raises(MfnetError, match="no triplet"):
        index_multipie(MultiPieData(root=str(tmp_path)))


def _rt_for_yaw(yaw_deg: float) -> list[list[float]]:
    """OpenCV extrinsics of a camera 1 m from the origin at the given yaw, looking at it."""
    a = math.radians(yaw_deg)
    centre = np.array([math.sin(a), 0.0, -math.cos(a)])  # world: face looks toward -z
    z = -centre / np.linalg.norm(centre)
    y = np.array([0.0, 1.0, 0.0])  # image down = world +y
    x = np.cross(y, z)
    r = np.stack([x, y, z])
    t = -r @ centre
    return np.concatenate([r, t[:, None]], 1).tolist()


def fake_facescape(root: Path, yaws=(-60, -35, -10, 0, 12, 33, 70), params: bool = True) -> None:
    folder = root / "fsmview_images" / "1" / "1_neutral"
    p = {}
    for n, yaw in enumerate(yaws):
        _touch(folder / f"{n}.jpg")
        p[f"{n}_K"] = [[1000.0, 0, 500], [0, 1000.0, 700], [0, 0, 1]]
        p[f"{n}_Rt"] = _rt_for_yaw(yaw)
        p[f"{n}_valid"] = True
    if params:
        (folder / "params.json").write_text(json.dumps(p))


def test_facescape_picks_front_and_sides_by_yaw(tmp_path: Path):
    fake_facescape(tmp_path)
    params = json.loads((tmp_path / "fsmview_images/1/1_neutral/params.json").read_text())
    yaws = facescape_camera_yaws(params, [str(i) for i in range(7)])
    assert abs(yaws["3"]) < 1e-6  # the camera nearest the mean viewing direction
    assert yaws["1"] == pytest.approx(-35, abs=1e-6) or yaws["1"] == pytest.approx(35, abs=1e-6)
    trip = index_facescape(FaceScapeData(root=str(tmp_path), side_yaw_deg=35))
    assert len(trip) == 1
    names = [Path(p).stem for p in trip[0].paths]
    assert names[1] == "3" and set(names) == {"1", "3", "5"}


def test_facescape_errors(tmp_path: Path):
    with pytest.raises(MfnetError, match="fsmview_images"):
        index_facescape(FaceScapeData(root=str(tmp_path)))
    fake_facescape(tmp_path, params=False)
    with pytest.raises(MfnetError, match="no params.json"):
        index_facescape(FaceScapeData(root=str(tmp_path)))
    (tmp_path / "fsmview_images/1/1_neutral/params.json").write_text("{not json")
    with pytest.raises(MfnetError, match="not JSON"):
        index_facescape(FaceScapeData(root=str(tmp_path)))


def test_config_errors_and_overrides(tmp_path: Path):
    p = tmp_path / "c.toml"
    p.write_text("[train]\nlr = 2e-4\nepochs = 3\n[data.synthetic]\nn_train = 5\n")
    cfg = load_config(p, ['model.backbone="resnet18"', "train.amp=false"])
    assert cfg.train.lr == 2e-4 and cfg.train.epochs == 3 and cfg.data.synthetic.n_train == 5
    assert cfg.model.backbone == "resnet18" and cfg.train.amp is False
    assert (
        cfg.loss.lip == 0.5 and cfg.loss.reg == 1e-4 and cfg.train.lr != 1e-3
    )  # paper defaults elsewhere
    p.write_text("[train]\nlearning_rate = 1\n")
    with pytest.raises(MfnetError, match="unknown option"):
        load_config(p)
    p.write_text("[train]\nepochs = 'ten'\n")
    with pytest.raises(MfnetError, match="expected int"):
        load_config(p)
    with pytest.raises(MfnetError, match="not found"):
        load_config(tmp_path / "none.toml")


def test_paper_defaults():
    cfg = load_config(None)
    assert (cfg.loss.flow, cfg.loss.landmarks, cfg.loss.eye, cfg.loss.lip, cfg.loss.reg) == (
        1,
        1,
        1,
        0.5,
        1e-4,
    )
    assert cfg.train.lr == 1e-3 and cfg.train.epochs == 10
    assert cfg.model.backbone == "resnet50" and cfg.model.n_views == 3


def test_multipie_dataset_detects_once_and_caches(tmp_path: Path, monkeypatch):
    """Real photo (matplotlib's Grace Hopper) in a fake Multi-PIE tree: dlib landmarks are
    detected once, cached, and the dataset yields crops in crop pixels."""
    import matplotlib
    from PIL import Image

    import mfnet_core.inputs.landmarks as lm_mod
    from training.datasets import build_real_datasets

    src = Path(matplotlib.__file__).parent / "mpl-data/sample_data/grace_hopper.jpg"
    img = Image.open(src).convert("RGB").resize((256, 320))
    root = tmp_path / "mpie"
    for cam in ("05_1", "19_0", "08_0"):
        p = (
            root
            / "data/session01/multiview/001/01"
            / cam
            / f"001_01_01_{cam.replace('_', '')}_00.png"
        )
        p.parent.mkdir(parents=True, exist_ok=True)
        img.save(p)
    cfg = load_config(None)
    cfg.data.dataset = "multipie"
    cfg.data.multipie.root = str(root)
    cfg.data.multipie.val_fraction = 0.0
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.model.input_size = 64
    train, val = build_real_datasets(cfg)
    assert len(train) == 1 and len(val) == 0
    item = train[0]
    assert item["images"].shape == (3, 3, 64, 64)
    lm = item["landmarks"]
    assert lm.shape == (3, 68, 2) and bool(((lm > 0) & (lm < 64)).all())
    assert item["lmk_weights"].sum() == 3 * 68
    cache = list((tmp_path / "cache").glob("multipie-*/landmarks.json"))
    assert len(cache) == 1 and len(json.loads(cache[0].read_text())["entries"]) == 3

    def no_detection(*a, **k):
        raise AssertionError("landmarks should come from the cache")

    monkeypatch.setattr(lm_mod, "detect_landmarks", no_detection)
    train2, _ = build_real_datasets(cfg)
    np.testing.assert_allclose(train2[0]["landmarks"].numpy(), lm.numpy(), atol=1e-3)


@pytest.mark.slow
def test_synthetic_set_rendered_by_processes_equals_one_process(tmp_path: Path):
    """Subjects are seeded by index, so 2 rendering processes write byte-identical files to
    one process, and the worker count is not part of the cache key."""
    from mfnet_core.head.flame import FLAME
    from mfnet_core.head.registry import load_model_assets
    from training.config import SyntheticData
    from training.synthetic_set import ensure_synthetic_set, render_worker_count

    flame = FLAME(load_model_assets("test-head"), 20, 10).eval()
    common = dict(n_train=3, n_val=2, image_size=64, n_textures=2, texture_size=64)
    one = ensure_synthetic_set(SyntheticData(root=str(tmp_path / "a"), **common), flame)
    cfg_two = SyntheticData(root=str(tmp_path / "b"), render_workers=2, **common)
    assert render_worker_count(cfg_two, 5) == 2
    two = ensure_synthetic_set(cfg_two, flame)
    assert one.name == two.name
    files = sorted(p.relative_to(one) for p in one.rglob("subject_*.npz"))
    assert len(files) == 5
    assert files == sorted(p.relative_to(two) for p in two.rglob("subject_*.npz"))
    for rel in files:
        with np.load(one / rel) as za, np.load(two / rel) as zb:
            assert za.files == zb.files
            for k in za.files:
                np.testing.assert_array_equal(za[k], zb[k], err_msg=f"{rel}:{k}")
    assert render_worker_count(SyntheticData(), 100) == 1  # small sets: no process start-up
