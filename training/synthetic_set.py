"""The synthetic multi-view training/evaluation set, rendered once and cached.

Each subject is a random FLAME person (shape, expression, jaw) rendered by
``mfnet_core.synthetic.make_subject`` from a few yaw angles with a procedural skin texture,
random SH light and background, and exact plus noisy landmarks. Everything is
deterministic from ``seed``: subject i of split "train" uses seed ``seed * 1_000_003 + i``,
of split "val" ``seed * 1_000_003 + 500_000 + i``, so the two never share a person.

Cache layout (``root``/<key>/ where key hashes the settings and the head model)::

    index.json                 settings, model identity, counts
    train/subject_00000.npz    images (N,H,W,3) uint8, landmarks (N,68,2) (noisy, the
                               "detections"), landmarks_true, intrinsics (N,4) fx fy cx cy,
                               head_rot (N,3), head_trans (N,3), yaws (N,), shape, expression,
                               jaw_pose, eye_pose, neck_pose, vertices (V,3) (no head pose)
    val/subject_00000.npz
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mfnet_core.errors import MfnetError

from .config import SyntheticData

FORMAT_VERSION = 1
SPLIT_OFFSET = {"train": 0, "val": 500_000}

Progress = Callable[[int, int], None]


def model_identity(flame) -> dict[str, object]:  # noqa: ANN001 - mfnet_core.head.flame.FLAME
    """What distinguishes one head model from another for caching: sizes, the model file's
    hash (blend shapes can change while the template stays) and the template's."""
    a = flame.assets
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(a.v_template, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(a.faces, dtype=np.int64).tobytes())
    return {
        "n_vertices": int(len(a.v_template)),
        "n_faces": int(len(a.faces)),
        "n_shape": int(flame.n_shape),
        "n_expr": int(flame.n_expr),
        "template_sha1": h.hexdigest()[:16],
        "file_sha256": str(getattr(a, "sha256", "")),
        "kind": str(getattr(a, "kind", "")),
        "name": str(getattr(a, "name", "")),
    }


def generator_hash() -> str:
    """Hash of the code that renders the set: a change in it invalidates the cache."""
    import inspect

    import mfnet_core.render as render
    import mfnet_core.synthetic as synthetic

    h = hashlib.sha1()
    for mod in (synthetic, render):
        h.update(inspect.getsource(mod).encode())
    return h.hexdigest()[:12]


def cache_key(cfg: SyntheticData, flame) -> str:  # noqa: ANN001
    settings = asdict(cfg)
    settings.pop("root")
    settings.pop("n_train")
    settings.pop("n_val")
    settings.pop("render_workers", None)
    blob = json.dumps(
        {"v": FORMAT_VERSION, "s": settings, "m": model_identity(flame)}, sort_keys=True
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def subject_seed(cfg: SyntheticData, split: str, i: int) -> int:
    return cfg.seed * 1_000_003 + SPLIT_OFFSET[split] + i


def ensure_synthetic_set(
    cfg: SyntheticData,
    flame,
    progress: Progress | None = None,  # noqa: ANN001
) -> Path:
    """Renders whatever subjects of ``cfg`` are not cached yet; returns the set's folder.

    Safe to call from several processes at once only if they agree on ``cfg`` (DDP: call it
    on rank 0 first, then barrier). Subjects are written atomically (temp file + rename).
    """

    folder = Path(cfg.root) / cache_key(cfg, flame)
    todo = [
        (split, i)
        for split, n in (("train", cfg.n_train), ("val", cfg.n_val))
        for i in range(n)
        if not (folder / split / f"subject_{i:05d}.npz").is_file()
    ]
    index = folder / "index.json"
    if todo:
        for split in ("train", "val"):
            (folder / split).mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        workers = render_worker_count(cfg, len(todo))
        if workers > 1:
            _render_parallel(folder, cfg, flame, todo, workers, progress)
        else:
            _render_serial(folder, cfg, _on_cpu(flame), todo, progress)
        elapsed = time.perf_counter() - start
    else:
        elapsed = 0.0
    meta = {
        "format_version": FORMAT_VERSION,
        "settings": asdict(cfg),
        "model": model_identity(flame),
        "counts": {
            s: len(list((folder / s).glob("subject_*.npz"))) if (folder / s).is_dir() else 0
            for s in ("train", "val")
        },
        "last_generation_s": round(elapsed, 2),
    }
    tmp = index.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, index)
    return folder


def render_worker_count(cfg: SyntheticData, n_todo: int) -> int:
    """Processes for rendering ``n_todo`` subjects: start-up (importing torch) costs a few
    seconds per process, so small sets render in this process."""
    if cfg.render_workers > 0:
        return min(cfg.render_workers, max(n_todo, 1))
    if n_todo < 200:
        return 1
    return max(1, min(os.cpu_count() or 1, 16))


def _on_cpu(flame):  # noqa: ANN001, ANN202 - mfnet_core.head.flame.FLAME
    """The renderer works on CPU tensors: a CUDA model (the trainer's) gets a CPU twin."""
    if next(flame.buffers()).device.type == "cpu":
        return flame
    from mfnet_core.head.flame import FLAME

    return FLAME(flame.assets, int(flame.n_shape), int(flame.n_expr)).eval()


def _texture_index(cfg: SyntheticData, split: str, i: int) -> int:
    return i % max(cfg.n_textures, 1) + (0 if split == "train" else 10_000)


def _render_serial(
    folder: Path,
    cfg: SyntheticData,
    flame,  # noqa: ANN001
    todo: list[tuple[str, int]],
    progress: Progress | None,
    textures: dict[int, np.ndarray] | None = None,
) -> None:
    """Renders `todo` in this process; `textures` caches the procedural textures by index
    (a worker keeps one cache over all its chunks)."""
    from mfnet_core.synthetic import procedural_texture

    textures = {} if textures is None else textures
    for done, (split, i) in enumerate(todo):
        t = _texture_index(cfg, split, i)
        if t not in textures:
            textures[t] = procedural_texture(flame, cfg.texture_size, seed=cfg.seed * 7919 + t)
        _write_subject(folder / split / f"subject_{i:05d}.npz", cfg, flame, textures[t], split, i)
        if progress:
            progress(done + 1, len(todo))


_WORKER_FLAME = None
_WORKER_TEXTURES: dict[int, np.ndarray] = {}


def _worker_init(assets, n_shape: int, n_expr: int) -> None:  # noqa: ANN001
    """Each process builds its own CPU head model: a CUDA model cannot cross processes."""
    global _WORKER_FLAME
    import torch

    from mfnet_core.head.flame import FLAME

    torch.set_num_threads(1)
    _WORKER_FLAME = FLAME(assets, n_shape, n_expr).eval()


def _worker_render(folder: Path, cfg: SyntheticData, chunk: list[tuple[str, int]]) -> int:
    _render_serial(folder, cfg, _WORKER_FLAME, chunk, None, _WORKER_TEXTURES)
    return len(chunk)


def _render_parallel(
    folder: Path,
    cfg: SyntheticData,
    flame,  # noqa: ANN001
    todo: list[tuple[str, int]],
    workers: int,
    progress: Progress | None,
) -> None:
    """Renders chunks of subjects in spawned processes; each subject file is written
    atomically, so an interrupted run keeps what it finished."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # Chunks grouped by texture so each process makes few textures; small enough to keep
    # the progress bar moving.
    ordered = sorted(todo, key=lambda s: (_texture_index(cfg, *s), s))
    size = max(1, min(32, len(ordered) // (workers * 4) or 1))
    chunks = [ordered[k : k + size] for k in range(0, len(ordered), size)]
    done = 0
    with ProcessPoolExecutor(
        workers,
        mp_context=mp.get_context("spawn"),
        initializer=_worker_init,
        initargs=(flame.assets, int(flame.n_shape), int(flame.n_expr)),
    ) as pool:
        futures = [pool.submit(_worker_render, folder, cfg, c) for c in chunks]
        for fut in as_completed(futures):
            done += fut.result()
            if progress:
                progress(done, len(todo))


def _write_subject(
    path: Path, cfg: SyntheticData, flame, texture: np.ndarray, split: str, i: int
) -> None:  # noqa: ANN001
    from mfnet_core.synthetic import make_subject

    seed = subject_seed(cfg, split, i)
    rng = np.random.default_rng(seed + 17)
    yaws = tuple(float(y + rng.uniform(-1, 1) * cfg.yaw_jitter_deg) for y in cfg.yaws_deg)
    subj = make_subject(
        flame,
        texture,
        seed=seed,
        yaws_deg=yaws,
        image_size=cfg.image_size,
        landmark_noise_px=cfg.landmark_noise_px,
    )
    views = subj.views
    arrays = {
        "images": np.stack([v.photo.rgb for v in views]),
        "landmarks": np.stack([v.landmarks_noisy for v in views]).astype(np.float32),
        "landmarks_true": np.stack([v.landmarks_true for v in views]).astype(np.float32),
        "intrinsics": np.stack([v.intrinsics.as_vector() for v in views]).astype(np.float32),
        "head_rot": np.stack([np.asarray(v.head_rot) for v in views]).astype(np.float32),
        "head_trans": np.stack([np.asarray(v.head_trans) for v in views]).astype(np.float32),
        "yaws": np.asarray(yaws, dtype=np.float32),
        "vertices": subj.vertices_true.astype(np.float32),
        **{k: np.asarray(v, dtype=np.float32) for k, v in subj.params.items()},
    }
    tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_subject(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise MfnetError(
            f"synthetic subject {path} is unreadable ({exc}); delete it to regenerate"
        ) from exc
