"""The `mfnet` command as users and the Blender add-on run it: real subprocesses, real files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def run_cli(
    *args: str, env_extra: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MFNET_FLAME_MODEL"}
    env.update({"OMP_NUM_THREADS": "2", **(env_extra or {})})
    return subprocess.run(
        [sys.executable, "-m", "mfnet_core", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    """Empty data and cache folders: no FLAME, the test head generated afresh."""
    return {
        "MFNET_CACHE": str(tmp_path_factory.mktemp("cache")),
        "MFNET_HOME": str(tmp_path_factory.mktemp("home")),
    }


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "astronaut_front.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def test_reconstruct_real_photo_jsonl(tmp_path, astronaut_png, cache_env):
    out = tmp_path / "astro"
    proc = run_cli(
        "reconstruct",
        str(astronaut_png),
        "-o",
        str(out),
        "--progress",
        "jsonl",
        "--texture-size",
        "512",
        env_extra=cache_env,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    stages = [line["stage"] for line in lines]
    assert {"landmarks", "fit", "texture", "export"} <= set(stages)
    fractions = [line["fraction"] for line in lines]
    assert fractions == sorted(fractions)
    assert lines[-1]["stage"] == "done" and Path(lines[-1]["result_dir"]) == out.resolve()
    report = json.loads((out / "report.json").read_text())
    assert report["views"][0]["name"] == "front"
    assert report["views"][0]["landmark_residual_px"]["median"] < 6.0
    from mfnet_core.inputs.mediapipe_landmarks import mediapipe_available

    if mediapipe_available():  # the default (auto) takes MediaPipe's landmarks
        assert report["views"][0]["landmarks_from"] == "mediapipe"
    else:  # dlib, with its false face on her suit
        assert report["views"][0]["landmarks_from"] == "hog"
        assert any("2 faces" in w for w in report["warnings"])
    overlay = np.asarray(Image.open(out / "overlay_front.png"))
    assert overlay.shape == (512, 512, 3)
    tex = np.asarray(Image.open(out / "texture.png"))
    mask = np.asarray(Image.open(out / "texture_mask.png"))
    # RGBA: the default ICT model's eyelash strands are in the alpha channel
    assert tex.shape == (512, 512, 4) and mask.max() == 255
    assert tex[..., :3][mask > 0].std() > 5  # real photo content, not a flat fill
    # One photo with the default losses: flow is requested but skipped, and the report says so.
    assert "flow" in report["loss_terms_requested"] and "flow" not in report["loss_terms_used"]
    assert "two or more photos" in report["loss_terms_skipped"]["flow"]
    assert "dense" not in report and "quality" in report["timings_s"]
    assert 10 < report["views"][0]["psnr_face"] < 60 and 0 < report["views"][0]["ssim_face"] <= 1
    assert (out / "overlay_rerender_front.png").is_file()


def test_bad_photo_gives_clear_error_and_writes_nothing(tmp_path, cache_env):
    bad = tmp_path / "left.jpg"
    bad.write_bytes(b"this is not a jpeg")
    out = tmp_path / "res"
    proc = run_cli(
        "reconstruct", str(bad), "-o", str(out), "--progress", "none", env_extra=cache_env
    )
    assert proc.returncode == 2
    assert "left.jpg" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".res")]


def test_no_face_error_names_the_file(tmp_path, cache_env):
    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((300, 300, 3), 200, np.uint8)).save(blank)
    proc = run_cli(
        "reconstruct",
        str(blank),
        "-o",
        str(tmp_path / "r"),
        "--progress",
        "jsonl",
        env_extra=cache_env,
    )
    assert proc.returncode == 2
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["stage"] == "error" and "wall.png" in last["message"]


def test_demo_json(tmp_path, cache_env):
    proc = run_cli(
        "demo",
        "--json",
        "-o",
        str(tmp_path / "demo"),
        "--image-size",
        "512",
        "--texture-size",
        "512",
        env_extra=cache_env,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["model"] == "ict"  # the default without FLAME: the shipped ICT model
    assert summary["views"] == ["left", "front", "right"]
    assert summary["median_vertex_error_mm"] < 2.0
    assert Path(summary["result_dir"]).is_dir() and summary["seconds"] > 0
    # The default losses run the flow term: its pairs, pictures and value are in the report.
    report = json.loads((Path(summary["result_dir"]) / "report.json").read_text())
    assert report["loss_terms_used"] == ["landmarks", "eye", "lip", "flow", "reg"]
    assert report["dense"]["flow"]["method"] == "dis" and report["losses"]["flow"] > 0
    # pairs the flow term leaves out are listed with the reason (left and right: opposite sides)
    skipped = {(p["from"], p["to"]): p["reason"] for p in report["dense"]["pairs_skipped"]}
    assert "opposite sides" in skipped[("left", "right")] and ("left", "front") not in skipped
    # named ARKit keys, parts and the model's licence travel with the result
    with np.load(Path(summary["result_dir"]) / "rig.npz") as z:
        assert (
            "eyeBlink_L" in z["expression_names"].tolist() and z["expression_basis"].shape[0] == 53
        )
        assert "teeth" in z["part_names"].tolist() and "MIT" in str(z["licence"])
    assert {(p["from"], p["to"]) for p in report["dense"]["pairs"]} >= {
        ("left", "front"),
        ("front", "right"),
    }
    assert (Path(summary["result_dir"]) / "overlay_flow_left_to_front.png").is_file()
    assert all(v["psnr_face"] > 20 for v in report["views"])


def test_demo_with_photo_term(tmp_path, cache_env):
    out = tmp_path / "demo_photo"
    proc = run_cli(
        "demo",
        "--json",
        "-o",
        str(out),
        "--image-size",
        "512",
        "--texture-size",
        "512",
        "--losses",
        "landmarks,eye,lip,flow,reg,photo",
        env_extra=cache_env,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["median_vertex_error_mm"] < 2.0
    report = json.loads((out / "report.json").read_text())
    assert "photo" in report["loss_terms_used"] and "photo" in report["dense"]["timings_s"]
    assert report["losses"]["photo"] > 0
    assert all(0.5 < v["ssim_face"] <= 1 for v in report["views"])


def _blank_photo(tmp_path: Path) -> Path:
    path = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(path)
    return path


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mfnet: error: "), proc.stderr
    assert any(n in lines[0] for n in needles), lines[0]
    return lines[0]


def test_raft_without_weights_is_a_clear_error(tmp_path, cache_env):
    out = tmp_path / "r"
    proc = run_cli(
        "reconstruct",
        str(_blank_photo(tmp_path)),
        "-o",
        str(out),
        "--progress",
        "none",
        "--flow-method",
        "raft",
        env_extra=cache_env,
    )
    line = _assert_one_line_error(proc, "--raft-weights")
    assert "--flow-method raft" in line
    assert not out.exists()


def test_raft_weights_missing_file_is_a_clear_error(tmp_path, cache_env):
    missing = tmp_path / "no" / "raft_large.pth"
    proc = run_cli(
        "reconstruct",
        str(_blank_photo(tmp_path)),
        "-o",
        str(tmp_path / "r"),
        "--progress",
        "none",
        "--flow-method",
        "raft",
        "--raft-weights",
        str(missing),
        env_extra=cache_env,
    )
    line = _assert_one_line_error(proc, str(missing))
    assert "not found" in line


def test_raft_weights_unusable_fail_before_the_fit(tmp_path, cache_env):
    """A file that is not a RAFT state dict (or no torchvision) fails at the start, in one line."""
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a state dict")
    photo = _blank_photo(tmp_path)  # no face: the run would fail later at landmarks otherwise
    proc = run_cli(
        "reconstruct",
        str(photo),
        str(photo),
        "-o",
        str(tmp_path / "r"),
        "--progress",
        "jsonl",
        "--flow-method",
        "raft",
        "--raft-weights",
        str(junk),
        env_extra=cache_env,
    )
    _assert_one_line_error(proc, "torchvision", str(junk))
    stages = [json.loads(line)["stage"] for line in proc.stdout.splitlines() if line.strip()]
    assert stages == ["error"]  # nothing ran before the check


def test_raft_weights_need_the_raft_method(tmp_path, cache_env):
    weights = tmp_path / "raft.pth"
    weights.write_bytes(b"x")
    proc = run_cli(
        "reconstruct",
        str(_blank_photo(tmp_path)),
        "-o",
        str(tmp_path / "r"),
        "--progress",
        "none",
        "--raft-weights",
        str(weights),
        env_extra=cache_env,
    )
    _assert_one_line_error(proc, "--flow-method raft")


def test_unknown_flow_method_is_refused(tmp_path, cache_env):
    proc = run_cli(
        "reconstruct",
        str(_blank_photo(tmp_path)),
        "-o",
        str(tmp_path / "r"),
        "--flow-method",
        "farneback",
        env_extra=cache_env,
    )
    assert proc.returncode == 2
    assert "--flow-method" in proc.stderr and "Traceback" not in proc.stderr


def test_doctor_json(cache_env):
    proc = run_cli("doctor", "--json", env_extra=cache_env)
    report = json.loads(proc.stdout)
    names = " ".join(item["name"] for item in report["items"]).lower()
    assert "flame" in names and "dlib" in names and "mediapipe" in names
    from mfnet_core.inputs.mediapipe_landmarks import mediapipe_available

    mp = next(i for i in report["items"] if i["name"] == "MediaPipe landmarks")
    assert mp["ok"] == mediapipe_available() and mp["optional"] and "--no-deps" in mp["fix"]


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A real MFNet checkpoint from `training` (a tiny network, a few steps on the toy set):
    what `python -m training.train` writes, read back with weights_only=True."""
    import torch

    from training.config import load_config
    from training.head_model import load_head
    from training.toy import ToyDataset
    from training.train import Trainer

    work = tmp_path_factory.mktemp("train")
    cfg = load_config(None)
    m = cfg.model
    m.backbone, m.width, m.input_size, m.fuse_hidden, m.view_hidden = "resnet10", 8, 32, 32, 32
    m.n_shape, m.n_expr = 20, 10
    t = cfg.train
    t.workdir, t.device, t.batch_size, t.checkpoint_every = str(work), "cpu", 4, 0
    t.eval_every_epochs, t.progress = 0, False
    cfg.data.num_workers = 0
    cfg.loss.use_flow = False
    flame = load_head(cfg, torch.device("cpu"))
    sets = ToyDataset(flame, 8, crop_size=32), ToyDataset(flame, 2, crop_size=32, seed=1)
    trainer = Trainer(cfg, flame=flame, datasets=sets, log=lambda m: None)
    summary = trainer.fit(max_steps=3)
    trainer.close()
    return Path(summary["checkpoint"])


def test_reconstruct_starts_from_a_trained_network(
    tmp_path, astronaut_png, cache_env, trained_checkpoint
):
    """`mfnet reconstruct --weights CKPT`: the network's prediction starts the fit, the
    result is complete and report.json says where the fit began."""
    out = tmp_path / "from_net"
    proc = run_cli("reconstruct", str(astronaut_png), "-o", str(out), "--progress", "jsonl",
                   "--texture-size", "512", "--weights", str(trained_checkpoint),
                   env_extra=cache_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    messages = [json.loads(line).get("message", "") for line in proc.stdout.splitlines()]
    assert any("network prediction" in m for m in messages)
    report = json.loads((out / "report.json").read_text())
    start = report["fit_start"]
    assert start["from"] == "network" and Path(start["weights"]) == trained_checkpoint
    assert start["network"]["backbone"] == "resnet10" and start["trained_steps"] == 3
    assert report["views"][0]["landmark_residual_px"]["median"] < 6.0
    assert (out / "head.glb").is_file() and (out / "rig.npz").is_file()


def test_reconstruct_with_a_file_that_is_not_a_checkpoint(tmp_path, astronaut_png, cache_env):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    out = tmp_path / "never"
    proc = run_cli("reconstruct", str(astronaut_png), "-o", str(out), "--progress", "none",
                   "--weights", str(junk), env_extra=cache_env)  # fmt: skip
    assert proc.returncode == 2
    assert "junk.pt" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
