"""The training flow term's CPU side: per-person flow targets, serially and in processes.

    python benchmarks/bm_flow_targets.py [--people 16] [--workers 0] [--crop 224] [--repeats 3]

On a GPU, most of a training step goes into the flow term's correspondences. They are made
on the CPU, one person at a time or in worker processes (`loss.flow_workers`); see
docs/BENCHMARKS.md, "GPU run". This benchmark makes one real batch the way training does:
synthetic people rendered at 384 px, a small untrained MFNet, the predicted meshes in
--crop px crops. It times `person_flow_targets` for each person in this process, then
the whole batch through a pool of --workers spawned processes (0: one per core, up to
--people), after a warm-up batch: once with one thread per worker (what training does) and
once with the libraries' default threads, with each person's time inside its worker. It
also reports what the machine offers: cores, CPU affinity, the cgroup CPU quota, the load,
and the parallel efficiency of the same number of processes on a pure OpenCV DIS task
(`machine_scaling`: if that is poor too, the machine is the limit, not the flow term).
Prints one JSON object; every time also as a ratio to the reference workload timed in this
process (`benchmarks/reference.py`), with the machine's CPU model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from reference import Reference, cpu_model
from torch.utils.data import default_collate


def cpu_offer() -> dict[str, object]:
    """Cores as the process sees them: a VM or container may give fewer than it lists."""
    quota = None
    for path in ("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"):
        try:
            quota = Path(path).read_text().strip()
            break
        except OSError:
            continue
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity": affinity,
        "cgroup_cpu_quota": quota,
        "torch_threads": torch.get_num_threads(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


def timed_person_flow_targets(task: tuple) -> tuple[float, list]:
    """person_flow_targets in a worker, with the seconds it took there."""
    from training.losses import person_flow_targets

    t = time.perf_counter()
    pairs = person_flow_targets(task)
    return time.perf_counter() - t, pairs


def dis_probe(calls: int = 30, size: int = 224) -> float:
    """Seconds for `calls` single-threaded OpenCV DIS flows between two fixed textured
    images: the same work in every process, so that running it in N processes at once
    shows what the machine itself gives to N processes."""
    import cv2
    import numpy as np

    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    a = cv2.GaussianBlur(rng.integers(0, 255, (size, size), dtype=np.uint8), (0, 0), 2)
    b = np.roll(a, (3, 2), axis=(0, 1))
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.calc(a, b, None)
    t = time.perf_counter()
    for _ in range(calls):
        dis.calc(a, b, None)
    return time.perf_counter() - t


def machine_scaling(workers: int) -> dict[str, float]:
    """Parallel efficiency of `workers` processes on a pure OpenCV task (1.0 = each runs as
    fast as one alone). Far below 1 with idle cores points at the machine (a CPU quota,
    shared SMT cores, memory bandwidth), not at the flow term's code."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    alone = statistics.median(dis_probe() for _ in range(3))
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(dis_probe, [2] * workers))  # start them all
        together = list(pool.map(dis_probe, [30] * workers))
    return {
        "workers": workers,
        "dis_30_calls_alone_s": round(alone, 3),
        "dis_30_calls_each_of_n_at_once_s": round(statistics.median(together), 3),
        "parallel_efficiency": round(alone / statistics.median(together), 2),
    }


def make_batch(people: int, crop: int, root: Path, checkpoint: str | None = None):  # noqa: ANN201
    """(trainer, batch, decoded) for one training batch of `people`, on the CPU: synthetic
    people at 384 px and a small untrained MFNet at `crop` px, or, with `checkpoint`, that
    network and its run's synthetic settings (the held-out people)."""
    from mfnet_core.network.checkpoints import load_checkpoint
    from mfnet_core.network.mfnet import decode
    from training.config import load_config
    from training.train import Trainer

    run = [
        f"train.workdir={root / 'run'}",
        "train.device=cpu",
        f"train.batch_size={people}",
        "data.num_workers=0",
        "data.augment=false",
        "train.progress=false",
    ]
    network, config_file = None, None
    if checkpoint is None:
        run += [
            f"data.synthetic.root={root / 'synthetic'}",
            "data.synthetic.image_size=384",
            "model.backbone=resnet10",
            "model.width=16",
            f"model.input_size={crop}",
        ]
    else:  # the run's own settings; its synthetic set is reused when it is still there
        network, meta = load_checkpoint(checkpoint)
        config_file = root / "checkpoint_config.json"
        config_file.write_text(json.dumps(meta["config"]))
    # Untrained: a training batch. Checkpoint: held-out people, the network in eval mode.
    counts = (people, 2) if network is None else (people, people)
    cfg = load_config(
        config_file,
        [*run, f"data.synthetic.n_train={counts[0]}", f"data.synthetic.n_val={counts[1]}"],
    )
    trainer = Trainer(cfg, log=lambda m: None)
    if network is None:
        batch = next(trainer._loader(0, 0))
    else:
        trainer.model.load_state_dict(network.state_dict())
        trainer.net.eval()
        batch = default_collate([trainer.val_set[i] for i in range(people)])
    with torch.no_grad():
        out = trainer.net(batch["images"])
        dec = decode(out, trainer.flame, batch["camera"], cfg.model.input_size, with_vertices=True)
    return trainer, batch, dec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--people", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    from training.losses import (
        flow_context,
        flow_target_pool,
        flow_tasks,
        flow_worker_count,
        person_flow_targets,
    )

    offer_start = cpu_offer()
    ref = Reference.start()
    with tempfile.TemporaryDirectory() as tmp:
        trainer, batch, dec = make_batch(args.people, args.crop, Path(tmp))
        a = trainer.flame.assets
        context = flow_context(a.faces, a.face_region, args.crop, trainer.cfg.loss.flow_samples)
        tasks = flow_tasks(batch, dec, step=0)
        trainer.close()
    person_flow_targets(tasks[0], context)  # warm-up: imports, OpenCV's first DIS
    threads = torch.get_num_threads()
    per_person_threads: dict[str, float] = {}
    for n_threads in sorted({1, threads}):
        torch.set_num_threads(n_threads)
        times = []
        for task in tasks:
            t = time.perf_counter()
            person_flow_targets(task, context)
            times.append(time.perf_counter() - t)
        per_person_threads[str(n_threads)] = round(1000 * statistics.median(times), 1)
    torch.set_num_threads(threads)
    workers = args.workers or flow_worker_count(0, len(tasks), network_on_gpu=True)
    serial_batch_s = per_person_threads["1"] * len(tasks) / 1000
    pools = {}
    pairs: list = []
    for name, one_thread in (("one_thread_per_worker", True), ("library_default_threads", False)):
        pool = flow_target_pool(workers, context, one_thread=one_thread)
        try:
            t = time.perf_counter()
            list(pool.map(timed_person_flow_targets, tasks))  # warm-up: the processes start
            start_s = time.perf_counter() - t
            batch_times, inside = [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                results = list(pool.map(timed_person_flow_targets, tasks))
                batch_times.append(time.perf_counter() - t)
                inside += [r[0] for r in results]
                pairs = [r[1] for r in results]
        finally:
            pool.shutdown()
        pool_s = statistics.median(batch_times)
        pools[name] = {
            "first_batch_s": round(start_s, 3),
            "batch_s": round(pool_s, 3),
            "speedup_vs_serial": round(serial_batch_s / pool_s, 2),
            # Time inside the worker per person: far above the serial figure means the
            # processes slow each other down (cores, memory, threads), not the IPC.
            "per_person_ms_inside_worker": round(1000 * statistics.median(inside), 1),
        }
    scaling = machine_scaling(workers)
    ref.finish()
    times = {  # seconds
        "per_person_by_torch_threads": {k: v / 1000 for k, v in per_person_threads.items()},
        "serial_batch": serial_batch_s,
        "pools": {
            k: {
                "first_batch": v["first_batch_s"],
                "batch": v["batch_s"],
                "per_person_inside_worker": v["per_person_ms_inside_worker"] / 1000,
            }
            for k, v in pools.items()
        },
        "machine_scaling": {k: v for k, v in scaling.items() if k.endswith("_s")},
    }
    print(
        json.dumps(
            {
                **ref.to_json(),
                "people": len(tasks),
                "crop_px": args.crop,
                "pairs_per_person": round(sum(len(p) for p in pairs) / len(pairs), 2),
                "per_person_ms_by_torch_threads": per_person_threads,
                "serial_batch_s": round(serial_batch_s, 3),
                "workers": workers,
                "pools": pools,
                "machine_scaling": scaling,
                "machine_start": offer_start,
                "machine_end": cpu_offer(),
                "ratio_to_reference": ref.ratios(times),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
