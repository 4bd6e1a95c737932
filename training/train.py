"""Training MFNet: ``python -m training.train --config FILE``.

Several GPUs: ``torchrun --nproc_per_node=K -m training.train --config FILE`` (DDP; NCCL on
CUDA, gloo on CPU). ``train.batch_size`` is per process, so the global batch is K times it.

What a run writes under ``train.workdir``::

    config.toml                     the full configuration used
    checkpoints/step_XXXXXXX.pt     model, optimizer, scaler, step/epoch, RNG (weights_only-safe)
    checkpoints/last.pt             a copy of the newest one (what --resume auto picks)
    logs/metrics.jsonl              one JSON object per logged step / evaluation
    logs/events.out.tfevents.*      TensorBoard scalars when `tensorboard` is installed

Resuming (``--resume auto`` or ``--resume PATH``) restores weights, optimizer and scaler
state, the step and the position inside the epoch; the data order and the augmentation
are functions of (seed, epoch, index), so a resumed run continues exactly where an
uninterrupted one would be.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mfnet_core.errors import MfnetError
from mfnet_core.network.checkpoints import load_backbone_weights
from mfnet_core.network.mfnet import CHECKPOINT_FORMAT, MFNet, MFNetConfig, count_parameters, decode

from .config import Config, dump_toml, load_config
from .datasets import collate
from .evaluate import evaluate_network_synthetic
from .head_model import load_head
from .interrupt import StopSignal, ignore_stop_signals
from .losses import mfnet_loss, resolve_flow_term

LogFn = Callable[[str], None]


# --------------------------------------------------------------------------------------
# Setup helpers
# --------------------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


TIMING_REPORT_STEP = 10  # the log says where a step's time goes after this many steps


class PhaseTimer:
    """Wall time per phase of a training step (data, forward, loss, flow, backward), so a
    run says where its time goes. On CUDA it synchronises at phase ends: the GPU's queue
    would otherwise bill one phase's kernels to the next."""

    def __init__(self, device: torch.device) -> None:
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.total: dict[str, float] = {}
        self.steps = 0
        self._t = time.perf_counter()

    def mark(self, phase: str) -> None:
        """Bills the time since the previous mark to ``phase``."""
        self.sync()
        now = time.perf_counter()
        self.total[phase] = self.total.get(phase, 0.0) + now - self._t
        self._t = now

    def restart(self) -> None:
        self._t = time.perf_counter()

    def means(self) -> dict[str, float]:
        n = max(self.steps, 1)
        return {k: round(v / n, 4) for k, v in self.total.items()}


def init_distributed(device_pref: str) -> DistInfo:
    """Joins the process group that torchrun describes in the environment (if any)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    use_cuda = device_pref != "cpu" and torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def pick_device(pref: str, info: DistInfo) -> torch.device:
    if pref == "cuda" and not torch.cuda.is_available():
        raise MfnetError("train.device = 'cuda' but PyTorch sees no CUDA GPU")
    if pref in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device(
            "cuda", info.local_rank if info.world > 1 else torch.cuda.current_device()
        )
    if pref not in ("auto", "cpu", "cuda"):
        raise MfnetError(f"unknown train.device {pref!r}; use auto, cpu or cuda")
    return torch.device("cpu")


def build_datasets(
    cfg: Config, flame: nn.Module, info: DistInfo, log: LogFn
) -> tuple[Dataset, Dataset]:
    """(train, val) for the configured dataset; the synthetic set is rendered on first use."""
    d, m = cfg.data, cfg.model
    if d.dataset == "synthetic":
        from .datasets import SyntheticDataset
        from .synthetic_set import ensure_synthetic_set

        s = d.synthetic
        if len(s.yaws_deg) != m.n_views:
            raise MfnetError(
                f"data.synthetic.yaws_deg has {len(s.yaws_deg)} views but model.n_views is {m.n_views}"
            )
        folder = None
        if info.main:
            t0 = time.perf_counter()
            folder = ensure_synthetic_set(
                s, flame, progress=_bar("rendering synthetic set", cfg, info)
            )
            log(
                f"synthetic set: {folder} ({s.n_train} train + {s.n_val} val, {time.perf_counter() - t0:.1f} s)"
            )
        if info.world > 1:
            dist.barrier()
            folder = ensure_synthetic_set(s, flame) if folder is None else folder
        assert folder is not None
        jitter = (d.jitter_shift, d.jitter_scale)
        train = SyntheticDataset(
            folder,
            "train",
            s.n_train,
            m.input_size,
            m.crop_scale,
            cfg.train.seed,
            d.augment,
            jitter,
        )
        val = SyntheticDataset(
            folder, "val", s.n_val, m.input_size, m.crop_scale, cfg.train.seed, False, jitter
        )
        return train, val
    if d.dataset in ("multipie", "facescape"):
        from .datasets import build_real_datasets

        if info.main:
            train, val = build_real_datasets(
                cfg, progress=_bar("landmarks (cached once)", cfg, info)
            )
        if info.world > 1:
            dist.barrier()
            if not info.main:
                train, val = build_real_datasets(cfg)
        return train, val
    raise MfnetError(f"unknown data.dataset {d.dataset!r}; use synthetic, multipie or facescape")


def _bar(desc: str, cfg: Config, info: DistInfo) -> Callable[[int, int], None] | None:
    if not (cfg.train.progress and info.main):
        return None
    from tqdm import tqdm

    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, file=sys.stderr, leave=False)
        state["bar"].n = done
        state["bar"].refresh()
        if done >= total:
            state["bar"].close()

    return update


class MetricLogger:
    """JSON lines always; TensorBoard too when the optional `tensorboard` package is installed."""

    def __init__(self, folder: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.tb = None
        self.note = ""
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        self.jsonl = (folder / "metrics.jsonl").open("a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(folder))
            self.note = f"TensorBoard logs in {folder}"
        except ImportError:
            self.note = f"tensorboard is not installed (pip install 'mfnet[training]'): scalars go to {folder / 'metrics.jsonl'} only"

    def log(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        if not self.enabled or self.jsonl.closed:
            return
        self.jsonl.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()


def epoch_batches(n: int, epoch: int, seed: int, global_batch: int) -> list[np.ndarray]:
    """The epoch's global batches (drop_last), a function of (seed, epoch) only."""
    perm = np.random.default_rng([seed, epoch, 0xDA7A]).permutation(n)
    steps = n // global_batch
    return [perm[i * global_batch : (i + 1) * global_batch] for i in range(steps)]


def set_bn_mode(model: nn.Module, mode: str) -> None:
    """'frozen': every BatchNorm uses (and keeps) its running statistics."""
    if mode == "frozen":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def lr_at(step: int, total: int, cfg: Config) -> float:
    t = cfg.train
    lr = t.lr
    if t.warmup_steps and step < t.warmup_steps:
        return lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "cosine" and total > 0:
        p = min(1.0, (step - t.warmup_steps) / max(1, total - t.warmup_steps))
        return lr * 0.5 * (1 + math.cos(math.pi * p))
    if t.lr_schedule not in ("constant", "cosine"):
        raise MfnetError(f"unknown train.lr_schedule {t.lr_schedule!r}; use constant or cosine")
    return lr


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------
class Trainer:
    """Owns the model, data, optimizer and bookkeeping of one training run (one process)."""

    def __init__(
        self,
        cfg: Config,
        *,
        flame: nn.Module | None = None,
        datasets: tuple[Dataset, Dataset] | None = None,
        log: LogFn | None = None,
        resume: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.info = init_distributed(cfg.train.device)
        self.device = pick_device(cfg.train.device, self.info)
        self.workdir = Path(cfg.train.workdir)
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        seed_everything(cfg.train.seed)
        self.flame = flame.to(self.device) if flame is not None else load_head(cfg, self.device)
        # The network predicts as many coefficients as the head model has (capped by config).
        cfg.model.n_shape = min(cfg.model.n_shape, int(self.flame.n_shape))
        cfg.model.n_expr = min(cfg.model.n_expr, int(self.flame.n_expr))
        self.train_set, self.val_set = datasets or build_datasets(
            cfg, self.flame, self.info, self.log
        )
        t = cfg.train
        self.global_batch = t.batch_size * self.info.world
        if len(self.train_set) < self.global_batch:
            raise MfnetError(
                f"the training set has {len(self.train_set)} samples, fewer than one global batch "
                f"({t.batch_size} x {self.info.world} processes)"
            )
        self.steps_per_epoch = len(self.train_set) // self.global_batch
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch
        torch.manual_seed(t.seed)  # same initial weights in every process
        model = MFNet(cfg.model)
        self.weight_report = None
        if t.backbone_weights:
            self.weight_report = load_backbone_weights(model, t.backbone_weights)
            self.log(self.weight_report.summary())
        if t.bn_mode == "sync" and self.info.world > 1 and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif t.bn_mode not in ("batch", "frozen", "sync"):
            raise MfnetError(f"unknown train.bn_mode {t.bn_mode!r}; use batch, frozen or sync")
        self.model = model.to(self.device)
        self.net: nn.Module = self.model
        if self.info.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DDP(self.model, device_ids=ids)
        self.opt = torch.optim.Adam(
            self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay, foreach=True
        )
        self.amp = t.amp and self.device.type == "cuda"
        self.amp_dtype = (
            torch.bfloat16 if self.amp and torch.cuda.is_bf16_supported() else torch.float16
        )
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp and self.amp_dtype == torch.float16
        )
        a = self.flame.assets
        self.flow_fn, self.flow_status = resolve_flow_term(
            cfg.loss,
            np.asarray(a.faces),
            np.asarray(a.face_region, bool),
            cfg.model.input_size,
            network_on_gpu=self.device.type == "cuda",
        )
        self.step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.history: list[dict[str, float]] = []
        self.timer = PhaseTimer(self.device)
        self.eval_results: list[dict[str, Any]] = []
        self.metrics = MetricLogger(self.workdir / "logs", enabled=self.info.main)
        if resume:
            self.resume(resume)

    # -- logging ------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if self.info.main:
            self._log(msg)

    # -- checkpoints --------------------------------------------------------------------
    def checkpoint_dict(self) -> dict[str, Any]:
        from .synthetic_set import model_identity

        return {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "model_config": self.cfg.model.to_dict(),
            "config": self.cfg.to_dict(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "world_size": self.info.world,
            "rng": rng_state(),
            "head_model": model_identity(self.flame),
            "flow": self.flow_status.message,
            "eval": self.eval_results[-1] if self.eval_results else {},
            "torch_version": str(torch.__version__),
        }

    def save_checkpoint(self) -> Path | None:
        if not self.info.main:
            return None
        folder = self.workdir / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{self.step:07d}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(self.checkpoint_dict(), tmp)
        os.replace(tmp, path)
        last_tmp = folder / "last.pt.tmp"
        shutil.copyfile(path, last_tmp)
        os.replace(last_tmp, folder / "last.pt")
        old = sorted(folder.glob("step_*.pt"))
        for p in old[: max(0, len(old) - max(1, self.cfg.train.keep_checkpoints))]:
            p.unlink(missing_ok=True)
        return path

    def resume(self, which: str) -> None:
        path = Path(which) if which != "auto" else self.workdir / "checkpoints" / "last.pt"
        if which == "auto" and not path.is_file():
            self.log(f"no checkpoint at {path}; starting from scratch")
            return
        if not path.is_file():
            raise MfnetError(f"checkpoint to resume from not found: {path}")
        ck = torch.load(path, map_location="cpu", weights_only=True)
        if ck.get("format") != CHECKPOINT_FORMAT:
            raise MfnetError(f"{path} is not an MFNet training checkpoint")
        if MFNetConfig.from_dict(ck["model_config"]) != self.cfg.model:
            raise MfnetError(
                f"{path} was written for a different model configuration; cannot resume"
            )
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.scaler.load_state_dict(ck["scaler"])
        self.step, self.epoch, self.step_in_epoch = (
            int(ck["step"]),
            int(ck["epoch"]),
            int(ck["step_in_epoch"]),
        )
        if int(ck.get("world_size", 1)) != self.info.world:
            self.log(
                f"note: checkpoint written with {ck.get('world_size')} processes, resuming with {self.info.world}; "
                "the data order continues by global batch"
            )
        set_rng_state(ck["rng"])
        self.log(
            f"resumed from {path} at step {self.step} (epoch {self.epoch}, batch {self.step_in_epoch})"
        )

    # -- data -----------------------------------------------------------------------------
    def _loader(self, epoch: int, start: int) -> Iterator[dict[str, Tensor]]:
        ds = self.train_set
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)
        batches = epoch_batches(len(ds), epoch, self.cfg.train.seed, self.global_batch)[start:]
        b, r = self.cfg.train.batch_size, self.info.rank
        local = [g[r * b : (r + 1) * b].tolist() for g in batches]
        nw = self.cfg.data.num_workers
        loader = DataLoader(
            ds,
            batch_sampler=local,
            num_workers=nw,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            worker_init_fn=ignore_stop_signals if nw > 0 else None,
        )
        return iter(loader)

    # -- one step -----------------------------------------------------------------------
    def train_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        cfg = self.cfg
        self.net.train()
        set_bn_mode(self.net, cfg.train.bn_mode)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        lr = lr_at(self.step, self.total_steps, cfg)
        for g in self.opt.param_groups:
            g["lr"] = lr
        ctx = torch.autocast("cuda", dtype=self.amp_dtype) if self.amp else nullcontext()
        timer = self.timer
        timer.mark("data_to_device")
        with ctx:
            out = self.net(batch["images"])
        timer.mark("network_forward")
        if self.step < cfg.train.pose_warmup_steps:
            # Curriculum: poses first, on the mean head, so that shape and expression do not
            # learn to make up for poses that are still wrong.
            out = replace(
                out, shape=out.shape * 0, expression=out.expression * 0, jaw_pose=out.jaw_pose * 0
            )
        use_flow = self.flow_fn is not None and self.step >= cfg.loss.flow_start_step
        dec = decode(out, self.flame, batch["camera"], cfg.model.input_size, with_vertices=use_flow)
        flow_fn = self._timed_flow if self.flow_fn is not None else None
        loss, terms = mfnet_loss(out, dec, batch, cfg.loss, flow_fn, self.step)
        timer.mark("losses_without_flow")
        if not torch.isfinite(loss):
            raise MfnetError(
                f"the loss became {float(loss)} at step {self.step}; lower train.lr or check the data"
            )
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        gnorm = float("nan")
        if cfg.train.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            gnorm = float(
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
            )
        self.scaler.step(self.opt)
        self.scaler.update()
        timer.mark("backward_and_update")
        timer.steps += 1
        values = {"loss": float(loss.detach()), "lr": lr, "grad_norm": gnorm}
        values.update({k: float(v.detach()) for k, v in terms.items()})
        return values

    def _timed_flow(self, *args: Any) -> Tensor:
        """The flow term, billed to its own phase (it renders and runs DIS per person)."""
        assert self.flow_fn is not None
        self.timer.mark("losses_without_flow")
        value = self.flow_fn(*args)
        self.timer.mark("flow_term")
        return value

    # -- the loop -------------------------------------------------------------------------
    def fit(self, max_steps: int | None = None) -> dict[str, Any]:
        """Trains until ``max_steps`` (default: the configured total); returns a summary."""
        cfg = self.cfg
        stop = min(max_steps or self.total_steps, self.total_steps)
        if self.info.main:
            self.workdir.mkdir(parents=True, exist_ok=True)
            (self.workdir / "config.toml").write_text(dump_toml(cfg))
        self.log(
            f"MFNet {cfg.model.backbone} (width {cfg.model.width}): {count_parameters(self.model) / 1e6:.2f} M "
            f"parameters; {len(self.train_set)} training samples, {self.steps_per_epoch} steps/epoch, "
            f"{stop} steps, global batch {self.global_batch} on {self.info.world} x {self.device}"
            + (f", AMP {str(self.amp_dtype).removeprefix('torch.')}" if self.amp else "")
        )
        self.log(self.flow_status.message)
        if self.metrics.note:
            self.log(self.metrics.note)
        bar = None
        if cfg.train.progress and self.info.main:
            from tqdm import tqdm

            bar = tqdm(
                total=stop, initial=self.step, desc="training", file=sys.stderr, dynamic_ncols=True
            )
        t_start = time.perf_counter()
        epoch_times: list[float] = []
        last_ckpt = None
        interrupted = None
        with StopSignal() as stop_signal:
            while self.step < stop and interrupted is None:
                last_ckpt, interrupted = self._run_epoch(
                    stop, bar, epoch_times, last_ckpt, stop_signal
                )
        if bar is not None:
            bar.close()
        if last_ckpt is None or not str(last_ckpt).endswith(f"step_{self.step:07d}.pt"):
            last_ckpt = self.save_checkpoint() or last_ckpt
        if interrupted is not None:
            self.log(
                f"stopped by {interrupted.name} after step {self.step}; checkpoint {last_ckpt}; "
                "continue with --resume auto"
            )
        if self.info.world > 1:
            dist.barrier()
        elapsed = time.perf_counter() - t_start
        summary = {
            "steps": self.step,
            "epochs_completed": self.epoch,
            "train_seconds": round(elapsed, 2),
            "seconds_per_epoch": round(float(np.mean(epoch_times)), 2) if epoch_times else None,
            "checkpoint": str(last_ckpt) if last_ckpt else None,
            "flow": self.flow_status.message,
            "loss_terms": sorted(self.history[-1]) if self.history else [],
            "seconds_per_step": self.timer.means(),
        }
        if interrupted is not None:
            summary["interrupted"] = interrupted.name
            summary["exit_code"] = 128 + int(interrupted)
        if self.device.type == "cuda":
            summary["max_gpu_memory_gb"] = round(
                torch.cuda.max_memory_allocated(self.device) / 2**30, 3
            )
        return summary

    def _stop_requested(self, stop_signal: StopSignal) -> signal.Signals | None:
        """The signal to stop on, agreed by every process (they must stop at the same step,
        or the next collective would hang)."""
        code = int(stop_signal.received or 0)
        if self.info.world > 1:
            on = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
            flag = torch.tensor([code], device=on)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            code = int(flag.item())
        return signal.Signals(code) if code else None

    def _run_epoch(
        self,
        stop: int,
        bar: Any,
        epoch_times: list[float],
        last_ckpt: Path | None,
        stop_signal: StopSignal,
    ) -> tuple[Path | None, signal.Signals | None]:
        """Steps to the end of the epoch, to `stop`, or to a stop signal (then returned)."""
        cfg = self.cfg
        interrupted = None
        t_epoch = time.perf_counter()
        it = self._loader(self.epoch, self.step_in_epoch)
        self.timer.restart()
        for batch in it:
            self.timer.mark("data_loading")
            try:
                values = self.train_step(batch)
            except Exception as exc:
                if stop_signal.received is None:
                    raise
                # The signal reached the step's own workers too (a batch system signals every
                # process of the job). The optimizer has not stepped: stop at the last step.
                self.log(f"the step after {self.step} stopped with the signal ({exc!r})")
                interrupted = signal.Signals(stop_signal.received)
                break
            self.step += 1
            self.step_in_epoch += 1
            self.history.append(values)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.4f}", epoch=self.epoch)
            if self.step % max(1, cfg.train.log_every) == 0 or self.step == 1:
                self.metrics.log(self.step, values)
            if self.timer.steps == TIMING_REPORT_STEP:
                self.log(f"seconds per step after {TIMING_REPORT_STEP} steps: {self.timer.means()}")
            if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
                last_ckpt = self.save_checkpoint() or last_ckpt
            interrupted = self._stop_requested(stop_signal)
            if self.step >= stop or interrupted is not None:
                break
            self.timer.restart()  # logging and checkpoints are not data loading
        if self.step_in_epoch >= self.steps_per_epoch:
            epoch_times.append(time.perf_counter() - t_epoch)
            self.log(
                f"epoch {self.epoch + 1} took {epoch_times[-1]:.1f} s; "
                f"seconds per step: {self.timer.means()}"
            )
            self.epoch += 1
            self.step_in_epoch = 0
            if interrupted is None:
                if cfg.train.eval_every_epochs and self.epoch % cfg.train.eval_every_epochs == 0:
                    self.evaluate()
                last_ckpt = self.save_checkpoint() or last_ckpt
        return last_ckpt, interrupted

    def close(self) -> None:
        self.metrics.close()
        close_flow = getattr(self.flow_fn, "close", None)
        if close_flow is not None:
            close_flow()

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any] | None:
        """The preview picture, and the vertex error on the validation split (synthetic set
        only)."""
        if not self.info.main or len(self.val_set) == 0:
            return None
        self.write_preview()
        if not hasattr(self.val_set, "subject"):
            return None
        res = evaluate_network_synthetic(
            self.model, self.flame, self.val_set, self.device, batch_size=self.cfg.train.batch_size
        )
        res["step"] = self.step
        self.eval_results.append(res)
        self.metrics.log(
            self.step, {k: v for k, v in res.items() if isinstance(v, int | float)}, kind="val"
        )
        self.log(
            f"epoch {self.epoch}: val median vertex error {res['median_vertex_error_mm']:.2f} mm "
            f"(mean head {res['mean_head_median_vertex_error_mm']:.2f} mm)"
        )
        return res

    def write_preview(self) -> Path | None:
        """<workdir>/previews/step_XXXXXXX.png (and TensorBoard's val/preview)."""
        k = min(self.cfg.train.preview_people, len(self.val_set))
        if k <= 0:
            return None
        from .preview import preview_picture, write_preview

        picture = preview_picture(
            self.model, self.flame, [self.val_set[i] for i in range(k)], self.device
        )
        path = write_preview(picture, self.workdir / "previews" / f"step_{self.step:07d}.png")
        if self.metrics.tb is not None:
            self.metrics.tb.add_image("val/preview", picture, self.step, dataformats="HWC")
        return path


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.train", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--config", help="TOML or JSON configuration (see training/configs/)")
    ap.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override an option"
    )
    ap.add_argument(
        "--resume", default=None, help="'auto' (the workdir's last.pt) or a checkpoint path"
    )
    ap.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps in total"
    )
    ap.add_argument(
        "--prepare-only",
        action="store_true",
        help="render/cache the dataset and landmarks, then exit",
    )
    ap.add_argument(
        "--json", action="store_true", help="print one JSON summary on stdout at the end"
    )
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        if args.no_progress or args.json:
            cfg.train.progress = False
        if args.prepare_only:
            info = init_distributed(cfg.train.device)
            flame = load_head(cfg, torch.device("cpu"))
            train, val = build_datasets(cfg, flame, info, lambda m: print(m, file=sys.stderr))
            print(json.dumps({"train_samples": len(train), "val_samples": len(val)}))
            return 0
        trainer = Trainer(cfg, resume=args.resume)
        summary = trainer.fit(args.max_steps)
        stopped = "interrupted" in summary
        if not stopped and (
            not trainer.eval_results or trainer.eval_results[-1].get("step") != trainer.step
        ):
            trainer.evaluate()  # the final weights (synthetic set only)
        if trainer.eval_results:
            summary["eval"] = trainer.eval_results[-1]
        trainer.close()
        if trainer.info.main and args.json:
            print(json.dumps(summary, default=str))
        return int(summary["exit_code"]) if stopped else 0
    except MfnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the training loop, or a second Ctrl-C
        print("interrupted; no checkpoint written for the unfinished step", file=sys.stderr)
        return 130
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
