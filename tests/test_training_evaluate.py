"""Evaluation paths: the synthetic benchmark (network / fitting / both) and the FS-Lab protocol
on a small fake benchmark folder built from a synthetic person (no dlib: cached landmarks)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mfnet_core.network.mfnet import MFNet, MFNetConfig
from training.config import SyntheticData

TINY = MFNetConfig(
    backbone="resnet10",
    width=8,
    input_size=32,
    fuse_hidden=32,
    view_hidden=32,
    n_shape=20,
    n_expr=10,
)


@pytest.fixture(scope="module")
def flame():
    from training.config import load_config
    from training.head_model import load_head

    cfg = load_config(None)
    cfg.model.n_shape, cfg.model.n_expr = 20, 10
    return load_head(cfg, torch.device("cpu"))


@pytest.fixture(scope="module")
def synthetic_val(flame, tmp_path_factory):
    from training.datasets import SyntheticDataset
    from training.synthetic_set import ensure_synthetic_set

    cfg = SyntheticData(
        root=str(tmp_path_factory.mktemp("syn")),
        n_train=0,
        n_val=2,
        image_size=128,
        n_textures=1,
        texture_size=128,
    )
    folder = ensure_synthetic_set(cfg, flame)
    assert json.loads((folder / "index.json").read_text())["counts"] == {"train": 0, "val": 2}
    return SyntheticDataset(folder, "val", 2, 32, 1.25, 0, False, (0.0, 0.0))


def test_synthetic_benchmark_methods(flame, synthetic_val):
    from training.evaluate import evaluate_synthetic, markdown_table

    torch.manual_seed(0)
    net = MFNet(TINY).eval()
    res = evaluate_synthetic(
        ["mean", "network", "fit", "network+fit", "network+fit-short"],
        synthetic_val,
        flame,
        net,
        torch.device("cpu"),
        facescape_metrics=True,
    )
    m = res["methods"]
    assert set(m) == {"mean", "network", "fit", "network+fit", "network+fit-short"}
    # The landmark fit recovers the person far better than the mean head; from the (untrained)
    # network's start it must get there too.
    assert m["fit"]["median_vertex_error_mm"] < 0.6 * m["mean"]["median_vertex_error_mm"]
    assert m["network+fit"]["median_vertex_error_mm"] < 0.6 * m["mean"]["median_vertex_error_mm"]
    # The product's short schedule (--weights: one fine round) gets there too.
    short = m["network+fit-short"]["median_vertex_error_mm"]
    assert short < 0.6 * m["mean"]["median_vertex_error_mm"]
    for r in m.values():
        assert 0 <= r["cr"] <= 1 and r["cd_mm"] >= 0 and r["mne_rad"] >= 0
    assert m["fit"]["cd_mm"] < m["mean"]["cd_mm"]
    table = markdown_table(res, "test")
    assert "| mean head |" in table and "CD (mm)" in table


def test_predict_init_shapes_for_1_to_4_views(flame, synthetic_val):
    from mfnet_core.network.predict import predict_init

    subj = synthetic_val.subject(0)
    net = MFNet(TINY).eval()
    photos = list(subj["images"])
    lmks = list(subj["landmarks"].astype(np.float64))
    for n in (1, 2, 3, 4):
        ph = (photos * 2)[:n]
        lm = (lmks * 2)[:n]
        p = predict_init(net, ph, lm, flame)
        assert p["shape"].shape == (flame.n_shape,) and p["expression"].shape == (flame.n_expr,)
        assert p["head_pose"].shape == (n, 3) and p["head_translation"].shape == (n, 3)
        assert p["light"].shape == (n, 9, 3) and np.isfinite(p["head_translation"]).all()
        # An untrained network puts the face in front of the camera, about where it is.
        assert (p["head_translation"][:, 2] < 0).all()


def _write_fake_fslab(root: Path, subj: dict[str, np.ndarray], flame) -> None:
    """One FS-Lab tuple set (subject 00, focal 0, views 00-02) made from a synthetic person."""
    from training.metrics import STD_PUPIL_DIST_MM

    data = root / "data"
    (data / "lab_gt_mesh").mkdir(parents=True)
    (data / "lab_cam").mkdir()
    (data / "lab_img").mkdir()
    (root / "code" / "predef").mkdir(parents=True)
    verts_mm = subj["vertices"].astype(np.float64) * 1000.0
    faces = flame.faces.cpu().numpy()
    region = np.asarray(flame.face_region, bool)
    ff = faces[region[faces].all(1)]
    with open(data / "lab_gt_mesh" / "00.obj", "w") as f:
        for v in verts_mm / STD_PUPIL_DIST_MM:
            f.write(f"v {v[0]:.6f} {v[1]:.6f} {v[2]:.6f}\n")
        for t in ff + 1:
            f.write(f"f {t[0]} {t[1]} {t[2]}\n")
    with torch.no_grad():
        out = flame(
            shape=torch.as_tensor(subj["shape"])[None],
            expression=torch.as_tensor(subj["expression"])[None],
            jaw_pose=torch.as_tensor(subj["jaw_pose"])[None],
        )
    pivot = out.joints[0, 0].numpy().astype(np.float64)
    flip = np.diag([1.0, -1.0, -1.0])
    rotations, centre = [], None
    cache = {}
    for v in range(3):
        r_gl = cv2.Rodrigues(subj["head_rot"][v].astype(np.float64))[0]
        t_gl = subj["head_trans"][v].astype(np.float64)
        rot = flip @ r_gl
        t_mm = 1000.0 * flip @ (pivot - r_gl @ pivot + t_gl)
        k = subj["intrinsics"][v]
        kmat = [[float(k[0]), 0.0, float(k[2])], [0.0, float(k[1]), float(k[3])], [0.0, 0.0, 1.0]]
        rt = np.concatenate([rot, (t_mm / STD_PUPIL_DIST_MM)[:, None]], 1)
        name = f"00_0_{v:02d}"
        (data / "lab_cam" / f"{name}.json").write_text(json.dumps([kmat, rt.tolist()]))
        cv2.imwrite(str(data / "lab_img" / f"{name}.png"), subj["images"][v][..., ::-1])
        rotations.append(rot @ np.diag([-1.0, 1.0, -1.0]))  # camera -> face toward -z, y up
        if v == 0:
            centre = (verts_mm @ rot.T + t_mm).mean(0)
        img = subj["images"][v]
        cache[f"data/lab_img/{name}.png"] = {
            "landmarks": subj["landmarks"][v].tolist(),
            "size": [img.shape[1], img.shape[0]],
            "scale": 1.0,
        }
    rotations += [np.eye(3)] * 8
    np.save(root / "code" / "predef" / "lab_rotations.npy", np.stack(rotations))
    np.save(root / "code" / "predef" / "lab_head_centers.npy", np.stack([centre] * 3))
    return cache


def test_fslab_protocol_runs_on_a_fake_benchmark(flame, synthetic_val, tmp_path: Path):
    from training.datasets import _cache_folder
    from training.evaluate import evaluate_facescape_lab

    subj = synthetic_val.subject(0)
    bench = tmp_path / "benchmark"
    entries = _write_fake_fslab(bench, subj, flame)
    cache_dir = tmp_path / "cache"
    folder = _cache_folder(str(cache_dir), "fslab", bench)
    folder.mkdir(parents=True)
    (folder / "landmarks.json").write_text(
        json.dumps({"backend": "dlib", "max_side": 100_000, "entries": entries})
    )
    torch.manual_seed(0)
    net = MFNet(TINY).eval()
    res = evaluate_facescape_lab(bench, net, flame, torch.device("cpu"), cache_dir, limit=1)
    assert res["n_evaluated"] == 1
    assert 0 < res["cr"] <= 1 and np.isfinite(res["cd_mm"]) and np.isfinite(res["mne_rad"])
    assert res["cd_mm"] < 30  # an untrained network still lands on the face (depth-aligned)


def test_fslab_errors_name_what_is_missing(flame, tmp_path: Path):
    from mfnet_core.errors import MfnetError
    from training.evaluate import evaluate_facescape_lab

    net = MFNet(TINY)
    with pytest.raises(MfnetError, match="folder not found"):
        evaluate_facescape_lab(tmp_path / "nope", net, flame, torch.device("cpu"), tmp_path)
    (tmp_path / "b" / "data" / "lab_gt_mesh").mkdir(parents=True)
    (tmp_path / "b" / "data" / "lab_cam").mkdir()
    with pytest.raises(MfnetError, match="lab_rotations.npy"):
        evaluate_facescape_lab(tmp_path / "b", net, flame, torch.device("cpu"), tmp_path)


@pytest.mark.slow  # ~13 s: trains 2 steps, then the CLI evaluates and draws
def test_evaluate_cli_uses_the_networks_crops_and_draws_a_preview(flame, synthetic_val, tmp_path):
    """`python -m training.evaluate --checkpoint CKPT --set data...`: the data settings come
    from --set, the crops from the network (a 224 px default crop fed to a 32 px network
    would be decoded with the wrong camera, silently); --out gets results, table, preview."""
    from training.config import load_config
    from training.evaluate import evaluate_network_synthetic, main
    from training.toy import ToyDataset
    from training.train import Trainer

    cfg = load_config(None)
    cfg.model = TINY
    t = cfg.train
    t.workdir, t.device, t.batch_size, t.checkpoint_every = str(tmp_path / "run"), "cpu", 2, 0
    t.eval_every_epochs, t.progress = 0, False
    cfg.data.num_workers, cfg.loss.use_flow = 0, False
    sets = ToyDataset(flame, 4, crop_size=32), ToyDataset(flame, 2, crop_size=32, seed=1)
    trainer = Trainer(cfg, flame=flame, datasets=sets, log=lambda m: None)
    checkpoint = trainer.fit(max_steps=2)["checkpoint"]
    trainer.close()
    root = synthetic_val.files[0].parents[2]  # <root>/<settings hash>/val/subject_*.npz
    out = tmp_path / "eval"
    rc = main(
        ["--checkpoint", checkpoint, "--methods", "mean,network", "--out", str(out), "--json",
         "--set", f"data.synthetic.root={root}", "--set", "data.synthetic.n_val=2",
         "--set", "data.synthetic.image_size=128", "--set", "data.synthetic.n_textures=1",
         "--set", "data.synthetic.texture_size=128"]
    )  # fmt: skip
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["network"]["input_size"] == 32 and results["network"]["trained_steps"] == 2
    direct = evaluate_network_synthetic(
        trainer.model, flame, synthetic_val, torch.device("cpu"), batch_size=2
    )
    assert results["methods"]["network"]["median_vertex_error_mm"] == pytest.approx(
        direct["median_vertex_error_mm"], rel=1e-5
    )
    assert (out / "table.md").read_text().startswith("### Synthetic set")
    preview = cv2.imread(str(out / "preview.png"))
    assert preview.shape == (2 * 256, 3 * 256, 3)
