"""The training machinery: resume == uninterrupted, DDP (2 CPU processes, gloo) == one process
on the union batch, checkpoints load with weights_only=True, the loss uses mfnet_core's."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from training.config import Config, load_config

STEPS_PER_EPOCH = 3  # 12 toy people / global batch 4


def tiny_config(workdir: Path, batch_size: int = 4, bn_mode: str = "batch") -> Config:
    cfg = load_config(None)
    m = cfg.model
    m.backbone, m.width, m.input_size, m.fuse_hidden, m.view_hidden = "resnet10", 8, 32, 32, 32
    m.n_shape, m.n_expr = 20, 10
    t = cfg.train
    t.workdir = str(workdir)
    t.device = "cpu"
    t.batch_size = batch_size
    t.epochs = 100
    t.lr = 1e-3
    t.bn_mode = bn_mode
    t.checkpoint_every = 0
    t.eval_every_epochs = 0
    t.progress = False
    t.log_every = 1
    cfg.data.num_workers = 0
    cfg.loss.use_flow = False  # the machinery tests; the flow term has its own test below
    return cfg


_FLAME = None


def flame():
    global _FLAME
    if _FLAME is None:
        from training.head_model import load_head

        cfg = load_config(None)
        cfg.model.n_shape, cfg.model.n_expr = 20, 10
        _FLAME = load_head(cfg, torch.device("cpu"))
    return _FLAME


def toy_sets(fl):
    from training.toy import ToyDataset

    return ToyDataset(fl, 12, crop_size=32), ToyDataset(fl, 2, crop_size=32, seed=1, augment=False)


def make_trainer(cfg: Config, resume: str | None = None):
    from training.train import Trainer

    fl = flame()
    return Trainer(cfg, flame=fl, datasets=toy_sets(fl), log=lambda m: None, resume=resume)


def test_loss_falls_and_checkpoint_is_weights_only(tmp_path: Path):
    tr = make_trainer(tiny_config(tmp_path))
    summary = tr.fit(max_steps=12)
    losses = [h["loss"] for h in tr.history]
    assert set(tr.history[0]) >= {"landmarks", "eye", "lip", "reg", "loss"}
    assert sum(losses[-3:]) < sum(losses[:3])
    ck = torch.load(summary["checkpoint"], map_location="cpu", weights_only=True)
    assert ck["step"] == 12 and ck["epoch"] == 4
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "logs" / "metrics.jsonl").is_file()
    from mfnet_core.network.checkpoints import load_checkpoint

    net, meta = load_checkpoint(summary["checkpoint"])
    assert meta["step"] == 12


def resume_and_compare(workdir: Path, cut: int, total: int, straight) -> list[dict]:
    """Resumes the run in `workdir` from its step `cut` to `total` and checks that the
    weights equal the uninterrupted run's; returns the resumed steps' history."""
    resumed = make_trainer(tiny_config(workdir), resume="auto")
    assert resumed.step == cut
    resumed.fit(max_steps=total)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    return resumed.history


def test_resume_matches_uninterrupted_run(tmp_path: Path):
    total, cut = 2 * STEPS_PER_EPOCH + 2, STEPS_PER_EPOCH + 1  # resume mid-epoch, cross epochs
    straight = make_trainer(tiny_config(tmp_path / "a"))
    straight.fit(max_steps=total)
    first = make_trainer(tiny_config(tmp_path / "b"))
    first.fit(max_steps=cut)
    history = resume_and_compare(tmp_path / "b", cut, total, straight)
    la = [h["loss"] for h in straight.history][cut:]
    lb = [h["loss"] for h in history]
    assert la == pytest.approx(lb, abs=1e-6)


def test_each_evaluation_writes_a_preview_picture(tmp_path: Path):
    """Every evaluation draws the first held-out people: crops, detected (green) and
    predicted (red) landmarks, the predicted mesh's outline (cyan)."""
    import cv2

    from mfnet_core.outputs.overlay import DETECTED_RGB, FITTED_RGB, OUTLINE_RGB
    from training.preview import CELL_PX

    cfg = tiny_config(tmp_path)
    cfg.train.eval_every_epochs = 1
    cfg.train.preview_people = 2
    tr = make_trainer(cfg)
    tr.fit(max_steps=2 * STEPS_PER_EPOCH)
    pictures = sorted((tmp_path / "previews").glob("step_*.png"))
    assert [p.name for p in pictures] == [
        f"step_{STEPS_PER_EPOCH:07d}.png",
        f"step_{2 * STEPS_PER_EPOCH:07d}.png",
    ]
    bgr = cv2.imread(str(pictures[-1]))
    assert bgr.shape == (2 * CELL_PX, cfg.model.n_views * CELL_PX, 3)
    rgb = bgr[..., ::-1].astype(int)
    for colour in (DETECTED_RGB, FITTED_RGB, OUTLINE_RGB):  # each is drawn somewhere
        near = (np.abs(rgb - np.array(colour)) <= 12).all(-1)
        assert near.sum() > 20, colour
    assert not list((tmp_path / "previews").glob(".*"))  # no temporary files left


@pytest.mark.parametrize("step_in_flight", ["finishes", "fails"])
def test_sigterm_saves_a_step_and_resume_equals_uninterrupted_run(
    tmp_path: Path, step_in_flight: str
):
    """SIGTERM (preemption, `kill`) mid-epoch: the step in flight finishes (or, when the
    signal also ended its flow workers, fails before the update), a checkpoint of the last
    finished step is written, and resuming from it gives the uninterrupted run's weights."""
    import signal
    from concurrent.futures.process import BrokenProcessPool

    total, cut = 2 * STEPS_PER_EPOCH + 1, STEPS_PER_EPOCH + 2
    last = cut if step_in_flight == "finishes" else cut - 1
    straight = make_trainer(tiny_config(tmp_path / "a"))
    straight.fit(max_steps=total)
    first = make_trainer(tiny_config(tmp_path / "b"))
    real_step = first.train_step

    def step_then_signal(batch):  # the signal arrives while the step runs
        if first.step == cut - 1:
            os.kill(os.getpid(), signal.SIGTERM)
            if step_in_flight == "fails":  # what a pool whose workers were killed raises
                raise BrokenProcessPool("a worker was terminated")
        return real_step(batch)

    first.train_step = step_then_signal
    missed = []  # were the trainer not to handle it, SIGTERM would end the test run itself

    def not_handled(signum, frame):
        missed.append(signum)

    before = signal.signal(signal.SIGTERM, not_handled)
    try:
        summary = first.fit(max_steps=total)
        assert signal.getsignal(signal.SIGTERM) is not_handled  # restored after the run
    finally:
        signal.signal(signal.SIGTERM, before)
    assert not missed
    assert summary["interrupted"] == "SIGTERM" and summary["exit_code"] == 128 + signal.SIGTERM
    assert summary["steps"] == last
    ck = torch.load(summary["checkpoint"], map_location="cpu", weights_only=True)
    assert ck["step"] == last
    resume_and_compare(tmp_path / "b", last, total, straight)


def test_a_failing_step_without_a_stop_signal_still_raises(tmp_path: Path):
    tr = make_trainer(tiny_config(tmp_path))

    def broken(batch):
        raise RuntimeError("not a stop")

    tr.train_step = broken
    with pytest.raises(RuntimeError, match="not a stop"):
        tr.fit(max_steps=2)


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_to_the_process_group_stops_the_cli_cleanly(tmp_path: Path, signame: str):
    """Ctrl-C in a terminal, or a batch system's SIGTERM, reaches the whole process group
    (the trainer, its data-loading worker and its two flow-target workers): the CLI finishes
    the step, writes a checkpoint, says how to continue and exits with 128 + the signal;
    `--resume auto` continues from there."""
    import contextlib
    import json
    import signal
    import subprocess
    import sys
    import threading

    cfg = cli_config(tmp_path, num_workers=1, loss="flow_workers = 2", max_steps=100000)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "training.train", "--config", str(cfg), "--json"]
    proc = subprocess.Popen(
        cmd,
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    hung = threading.Event()

    def watchdog() -> None:  # hang protection only: the line shows after ~5 s
        hung.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # readline() below then sees the end

    timer = threading.Timer(240, watchdog)
    timer.start()
    try:
        log = []
        while line := proc.stderr.readline():
            log.append(line)
            if "seconds per step after" in line:  # 10 steps done, the loader's worker alive
                timer.cancel()
                os.killpg(proc.pid, getattr(signal, signame))
                break
        try:
            out, err = proc.communicate(timeout=120)  # hang protection: it exits in ~1 s
        except subprocess.TimeoutExpired:
            pytest.fail(f"hang? still running 120 s after {signame}:\n{''.join(log)[-3000:]}")
    finally:
        timer.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if hung.is_set():
        pytest.fail(f"hang? no 'seconds per step after' line in 240 s:\n{''.join(log)[-3000:]}")
    err = "".join(log) + err
    assert proc.returncode == 128 + getattr(signal, signame), err[-3000:]
    assert f"stopped by {signame}" in err and "--resume auto" in err
    assert "Traceback" not in err
    summary = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
    assert summary["interrupted"] == signame
    ck = torch.load(summary["checkpoint"], map_location="cpu", weights_only=True)
    assert ck["step"] == summary["steps"] >= 10
    again = subprocess.run(
        [*cmd, "--resume", "auto", "--max-steps", str(summary["steps"] + 2)],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.splitlines()[-1])["steps"] == summary["steps"] + 2


def cli_config(tmp_path: Path, num_workers: int, loss: str, max_steps: int) -> Path:
    """A TOML config for the CLI tests: a tiny network on 4 synthetic people."""
    path = tmp_path / "run.toml"
    path.write_text(
        f"""
[model]
backbone = "resnet10"
width = 8
input_size = 32
fuse_hidden = 32
view_hidden = 32
n_shape = 20
n_expr = 10

[data]
num_workers = {num_workers}

[data.synthetic]
root = "{tmp_path / "syn"}"
n_train = 4
n_val = 2
image_size = 96
n_textures = 1
texture_size = 128

[loss]
{loss}

[train]
workdir = "{tmp_path / "run"}"
device = "cpu"
batch_size = 2
max_steps = {max_steps}
checkpoint_every = 0
eval_every_epochs = 0
"""
    )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, workdir: str, steps: int) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = tiny_config(Path(workdir), batch_size=2, bn_mode="frozen")
        tr = make_trainer(cfg)
        tr.fit(max_steps=steps)
        torch.save(tr.model.state_dict(), Path(workdir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_cpu_processes_equal_one_process_on_the_union_batch(tmp_path: Path):
    steps = 4
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp"), steps), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "ddp" / "rank1.pt", weights_only=True)
    single = make_trainer(tiny_config(tmp_path / "one", batch_size=4, bn_mode="frozen"))
    # One thread like the workers: with a core count's worth of threads the convolutions sum
    # in another order, and Adam magnifies those roundings on near-zero gradients (seen on a
    # 16-core machine: fuse_head.2.weight off by more than 1e-4).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single.fit(max_steps=steps)
    finally:
        torch.set_num_threads(threads)
    ref = single.model.state_dict()
    moved = 0
    for k in ref:
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0, msg=f"ranks differ: {k}")
        torch.testing.assert_close(r0[k], ref[k], rtol=1e-4, atol=1e-5, msg=f"DDP != single: {k}")
        moved += int(not torch.equal(ref[k], make_initial()[k]))
    assert moved > 0


_INIT = None


def make_initial():
    global _INIT
    if _INIT is None:
        from mfnet_core.network.mfnet import MFNet

        cfg = tiny_config(Path("."))
        torch.manual_seed(cfg.train.seed)
        _INIT = MFNet(cfg.model).state_dict()
    return _INIT


def test_flow_term_from_mfnet_core_joins_the_loss(tmp_path: Path):
    cfg = tiny_config(tmp_path)
    cfg.loss.use_flow = True
    tr = make_trainer(cfg)
    if not tr.flow_status.active:
        pytest.skip(tr.flow_status.message)
    batch = next(tr._loader(0, 0))
    values = tr.train_step(batch)
    assert "flow" in values and values["flow"] >= 0 and values["loss"] == values["loss"]


@pytest.mark.slow
def test_torchrun_cli_two_cpu_processes(tmp_path: Path):
    """`torchrun --nproc_per_node=2 -m training.train --config FILE` end to end (gloo on CPU):
    rank 0 renders the synthetic set, both train, rank 0 writes the checkpoint and the JSON."""
    import json
    import subprocess
    import sys

    cfg = cli_config(tmp_path, num_workers=0, loss="use_flow = false", max_steps=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "training.train",
            "--config",
            str(cfg),
            "--json",
        ],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1  # rank 0 only
    summary = json.loads(lines[0])
    assert summary["steps"] == 2
    ck = torch.load(summary["checkpoint"], map_location="cpu", weights_only=True)
    assert ck["world_size"] == 2 and ck["step"] == 2


@pytest.mark.slow
def test_flow_targets_from_worker_processes_equal_serial(tmp_path: Path):
    """The flow term's per-person targets made in 2 spawned processes give the same loss as
    in this process: each person is seeded by its index, not by where it was computed."""
    values = {}
    for workers in (1, 2):
        cfg = tiny_config(tmp_path / f"w{workers}")
        cfg.loss.use_flow = True
        cfg.loss.flow_workers = workers
        tr = make_trainer(cfg)
        if not tr.flow_status.active:
            pytest.skip(tr.flow_status.message)
        try:
            values[workers] = tr.train_step(next(tr._loader(0, 0)))
        finally:
            tr.close()
    assert values[1]["flow"] > 0
    assert values[2]["flow"] == pytest.approx(values[1]["flow"], rel=1e-6)
    assert values[2]["loss"] == pytest.approx(values[1]["loss"], rel=1e-6)
