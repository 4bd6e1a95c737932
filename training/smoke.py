"""The CI smoke run: ``python -m training --smoke --json``.

Trains MFNet for a few hundred steps on a small synthetic set on CPU (a small ResNet, smoke
run only) and evaluates it on held-out synthetic people against the mean head. Prints one
JSON object: ``loss_first``, ``loss_last`` (means over the first / last ``WINDOW`` steps),
``eval`` (``median_vertex_error_mm``, ``mean_head_median_vertex_error_mm``, ...),
``checkpoint``, timings and what was left out (the flow term without ``mfnet_core.fit.flow``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, load_config

WINDOW = 20
FLOW_STEPS = 20


def smoke_config(workdir: Path, steps: int) -> Config:
    """Small everything: ResNet-10 at width 16 on 96 px crops, 80 + 16 people at 160 px."""
    cfg = load_config(None)
    m = cfg.model
    m.backbone, m.width, m.input_size = "resnet10", 16, 96
    m.fuse_hidden, m.view_hidden = 256, 128
    d = cfg.data
    d.dataset = "synthetic"
    d.num_workers = 0
    d.synthetic.root = str(workdir / "synthetic")
    d.synthetic.n_train, d.synthetic.n_val = 80, 16
    d.synthetic.image_size = 160
    d.synthetic.n_textures = 4
    d.synthetic.texture_size = 256
    d.synthetic.landmark_noise_px = 0.5
    t = cfg.train
    t.workdir = str(workdir / "run")
    t.device = "cpu"
    t.batch_size = 8
    t.max_steps = steps
    t.epochs = 10_000
    t.lr = 1e-3  # the paper's
    t.checkpoint_every = 0
    t.eval_every_epochs = 0
    t.log_every = 10
    t.progress = False
    # The flow term (eq. 6) costs ~0.5 s a step on CPU (render + DIS flow per view pair):
    # the smoke run exercises it on its last FLOW_STEPS steps only.
    cfg.loss.flow_start_step = max(0, steps - FLOW_STEPS)
    return cfg


def run_smoke(workdir: Path, steps: int = 300, log=None) -> dict[str, Any]:  # noqa: ANN001
    from .train import Trainer

    t0 = time.perf_counter()
    cfg = smoke_config(workdir, steps)
    trainer = Trainer(cfg, log=log)
    t_data = time.perf_counter() - t0
    summary = trainer.fit()
    t_eval = time.perf_counter()
    res = trainer.evaluate() or {}
    trainer.close()
    losses = [h["loss"] for h in trainer.history]
    out = {
        "loss_first": float(np.mean(losses[:WINDOW])),
        "loss_last": float(np.mean(losses[-WINDOW:])),
        "loss_first_step": losses[0],
        "loss_last_step": losses[-1],
        "steps": summary["steps"],
        "eval": res,
        "checkpoint": summary["checkpoint"],
        "flow": summary["flow"]
        + (
            f", on steps {cfg.loss.flow_start_step + 1}-{steps}"
            if "from mfnet_core.fit.flow" in summary["flow"]
            else ""
        ),
        "loss_terms": summary["loss_terms"],
        "backbone": f"{cfg.model.backbone} width {cfg.model.width}, {cfg.model.input_size}px crops",
        "seconds": {
            "data": round(t_data, 1),
            "train": summary["train_seconds"],
            "eval": round(time.perf_counter() - t_eval, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
        "torch_threads": torch.get_num_threads(),
    }
    return out


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m training --smoke")
    ap.add_argument("--smoke", action="store_true", required=True)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--workdir", default=".cache/mfnet-training/smoke")
    args = ap.parse_args(argv)
    out = run_smoke(Path(args.workdir), args.steps, _stderr)
    if args.json:
        print(json.dumps(out))
    else:
        e = out["eval"]
        print(
            f"loss {out['loss_first']:.4f} -> {out['loss_last']:.4f} in {out['steps']} steps; "
            f"val median vertex error {e.get('median_vertex_error_mm', float('nan')):.2f} mm "
            f"(mean head {e.get('mean_head_median_vertex_error_mm', float('nan')):.2f} mm); "
            f"checkpoint {out['checkpoint']}; {out['seconds']['total']} s"
        )
    return 0
