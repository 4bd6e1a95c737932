"""Multi-view datasets: synthetic (with ground truth), Multi-PIE triplets, FaceScape multi-view.

Every dataset yields one person seen from ``n_views`` cameras (left, front, right), already
cropped around the landmarks with ``mfnet_core.model.crop_box`` (the crop the network also
gets at inference) and expressed in crop pixels:

- ``images`` (N,3,S,S) float in [0,1]
- ``landmarks`` (N,68,2) detected landmarks, crop pixels
- ``lmk_weights`` (N,68) 1 for usable landmarks, 0 otherwise
- ``camera`` (N,4) fx, fy, cx, cy of the crop
- ``index`` () the sample's index
- synthetic only: ``gt_vertices`` (V,3), ``gt_shape`` (S,), ``gt_expression`` (E,),
  ``gt_jaw_pose`` (3,), ``gt_head_rot`` (N,3), ``gt_head_trans`` (N,3)

Crop jitter (augmentation) is drawn from ``(seed, epoch, index)``, so a sample is the same
in every process and after a resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mfnet_core.camera import Intrinsics
from mfnet_core.errors import MfnetError
from mfnet_core.network.crops import crop_box, crop_image, to_tensor_image

from .config import Config, FaceScapeData, MultiPieData
from .synthetic_set import load_subject

Progress = Callable[[int, int], None]


@dataclass
class ViewRef:
    """One photo of a sample: where it is, its landmarks and intrinsics in photo pixels."""

    path: str
    landmarks: np.ndarray  # (68,2)
    intrinsics: np.ndarray  # (4,) fx, fy, cx, cy of the photo as loaded (after downscaling)
    max_side: int = 0  # downscale on load (0: as is)


class MultiViewDataset(Dataset):
    """Common crop/augment logic; subclasses provide ``_views(i)`` and optional ground truth."""

    def __init__(
        self,
        crop_size: int,
        crop_scale: float,
        seed: int,
        augment: bool,
        jitter: tuple[float, float],
    ) -> None:
        self.crop_size = crop_size
        self.crop_scale = crop_scale
        self.seed = seed
        self.augment = augment
        self.jitter_shift, self.jitter_scale = jitter
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _jitter(self, i: int, n: int) -> list[np.ndarray | None]:
        if not self.augment:
            return [None] * n
        rng = np.random.default_rng([self.seed, self.epoch, i, 0x5EED])
        shift = rng.uniform(-1, 1, size=(n, 2)) * self.jitter_shift
        scale = rng.uniform(-1, 1, size=(n, 1)) * self.jitter_scale
        return list(np.concatenate([shift, scale], 1))

    def _crop_views(
        self, i: int, rgbs: list[np.ndarray], lmks: list[np.ndarray], intr: list[np.ndarray]
    ) -> dict[str, Tensor]:
        s = self.crop_size
        jit = self._jitter(i, len(rgbs))
        images, cams, lms = [], [], []
        for rgb, lm, k, j in zip(rgbs, lmks, intr, jit, strict=True):
            box = crop_box(lm, self.crop_scale, j)
            images.append(to_tensor_image(crop_image(rgb, box, s)))
            cams.append(torch.from_numpy(box.intrinsics(k, s)))
            lms.append(torch.from_numpy(box.points(lm, s)))
        lm_t = torch.stack(lms)
        weights = torch.isfinite(lm_t).all(-1).float()
        return {
            "images": torch.stack(images),
            "landmarks": torch.nan_to_num(lm_t),
            "lmk_weights": weights,
            "camera": torch.stack(cams),
            "index": torch.tensor(i),
        }


def collate(samples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Samples (dicts of tensors with equal keys) -> one batch, each tensor stacked."""
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


# --------------------------------------------------------------------------------------
# Synthetic
# --------------------------------------------------------------------------------------
class SyntheticDataset(MultiViewDataset):
    """Subjects rendered by ``training.synthetic_set`` (one npz per person)."""

    def __init__(
        self,
        folder: Path,
        split: str,
        n: int,
        crop_size: int,
        crop_scale: float,
        seed: int,
        augment: bool,
        jitter: tuple[float, float],
    ) -> None:
        super().__init__(crop_size, crop_scale, seed, augment, jitter)
        self.files = [folder / split / f"subject_{i:05d}.npz" for i in range(n)]
        missing = [str(f) for f in self.files if not f.is_file()]
        if missing:
            raise MfnetError(
                f"synthetic set {folder}: {len(missing)} subject file(s) missing, e.g. {missing[0]}"
            )
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        # Small sets live in memory (a subject at 256 px is ~0.6 MB).
        self._keep = n * 3 * 256 * 256 * 3 < 512 * 2**20

    def __len__(self) -> int:
        return len(self.files)

    def subject(self, i: int) -> dict[str, np.ndarray]:
        if i in self._cache:
            return self._cache[i]
        d = load_subject(self.files[i])
        if self._keep:
            self._cache[i] = d
        return d

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        d = self.subject(i)
        n = d["images"].shape[0]
        out = self._crop_views(
            i, list(d["images"]), list(d["landmarks"].astype(np.float64)), list(d["intrinsics"])
        )
        out["gt_vertices"] = torch.from_numpy(d["vertices"])
        out["gt_shape"] = torch.from_numpy(d["shape"])
        out["gt_expression"] = torch.from_numpy(d["expression"])
        out["gt_jaw_pose"] = torch.from_numpy(d["jaw_pose"])
        out["gt_head_rot"] = torch.from_numpy(d["head_rot"]).reshape(n, 3)
        out["gt_head_trans"] = torch.from_numpy(d["head_trans"]).reshape(n, 3)
        return out


# --------------------------------------------------------------------------------------
# Real datasets: photos + cached landmarks
# --------------------------------------------------------------------------------------
class PhotoTripletDataset(MultiViewDataset):
    """Samples of N photos each, with landmarks precomputed (``LandmarkCache``)."""

    def __init__(
        self,
        samples: list[list[ViewRef]],
        crop_size: int,
        crop_scale: float,
        seed: int,
        augment: bool,
        jitter: tuple[float, float],
    ) -> None:
        super().__init__(crop_size, crop_scale, seed, augment, jitter)
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        from mfnet_core.inputs.images import load_photo

        views = self.samples[i]
        rgbs = []
        for v in views:
            photo = load_photo(v.path, max_side=v.max_side or 100_000)
            rgbs.append(photo.rgb)
        return self._crop_views(
            i, rgbs, [v.landmarks for v in views], [v.intrinsics for v in views]
        )


class LandmarkCache:
    """68 landmarks per photo, detected once and kept in ``<cache>/landmarks.json``.

    The file maps a photo path (relative to the dataset root) to its landmarks and the
    photo's size as loaded, or to null when no face was found. Written atomically every
    ``flush_every`` new entries, so an interrupted precompute resumes where it stopped.
    """

    def __init__(self, folder: Path, backend: str, max_side: int, flush_every: int = 200) -> None:
        self.path = folder / "landmarks.json"
        self.backend = backend
        self.max_side = max_side
        self.flush_every = flush_every
        self.entries: dict[str, dict | None] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("backend") == backend and data.get("max_side") == max_side:
                    self.entries = data["entries"]
            except (json.JSONDecodeError, KeyError, TypeError):
                self.entries = {}
        self._dirty = 0

    def get(self, root: Path, rel: str) -> dict | None:
        if rel not in self.entries:
            self.entries[rel] = self._detect(root / rel)
            self._dirty += 1
            if self._dirty >= self.flush_every:
                self.flush()
        return self.entries[rel]

    def _detect(self, path: Path) -> dict | None:
        from mfnet_core.inputs.images import load_photo
        from mfnet_core.inputs.landmarks import detect_landmarks

        try:
            photo = load_photo(path, max_side=self.max_side)
            det = detect_landmarks(photo, backend=self.backend, source_name=str(path))
        except MfnetError:
            return None
        lm = np.asarray(det.landmarks, dtype=np.float64)
        return {
            "landmarks": lm.round(3).tolist(),
            "size": [photo.width, photo.height],
            "scale": float(photo.scale),
        }

    def flush(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(
            json.dumps(
                {"backend": self.backend, "max_side": self.max_side, "entries": self.entries}
            )
        )
        os.replace(tmp, self.path)
        self._dirty = 0


def _cache_folder(cache_dir: str, name: str, root: Path) -> Path:
    h = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:10]
    return Path(cache_dir) / f"{name}-{h}"


def _require_dir(path: Path, what: str, hint: str) -> None:
    if not path.exists():
        raise MfnetError(f"{what}: folder not found: {path}. {hint}")
    if not path.is_dir():
        raise MfnetError(f"{what}: {path} is a file, expected a folder. {hint}")


# -- Multi-PIE ---------------------------------------------------------------------------
_MPIE_FILE = re.compile(r"^(\d{3})_(\d{2})_(\d{2})_(\d{3})_(\d{2})\.png$")
MPIE_HINT = (
    "Expected the Multi-PIE layout <root>/data/session0X/multiview/<subject>/<recording>/"
    "<camera e.g. 05_1>/<subject>_0X_<recording>_<camera digits>_<illumination>.png"
)


@dataclass
class MultiPieTriplet:
    key: str  # session/subject/recording/illumination
    paths: list[str]  # relative to root: left, front, right


def index_multipie(cfg: MultiPieData, seed: int = 0) -> list[MultiPieTriplet]:
    """All (session, subject, recording, illumination) with the front camera and at least
    one left and one right camera; the side cameras are drawn per triplet (deterministic)."""
    root = Path(cfg.root)
    _require_dir(root, "Multi-PIE", MPIE_HINT)
    _require_dir(root / "data", "Multi-PIE", MPIE_HINT)
    sessions = [root / "data" / f"session{s}" / "multiview" for s in cfg.sessions]
    present = [s for s in sessions if s.is_dir()]
    if not present:
        raise MfnetError(f"Multi-PIE: none of {[str(s) for s in sessions]} exists. {MPIE_HINT}")
    want = {cfg.front_camera, *cfg.left_cameras, *cfg.right_cameras}
    groups: dict[str, dict[str, str]] = {}
    n_bad = 0
    for sess in present:
        for subj in sorted(p for p in sess.iterdir() if p.is_dir()):
            for rec in sorted(p for p in subj.iterdir() if p.is_dir()):
                for cam in want:
                    cdir = rec / cam
                    if not cdir.is_dir():
                        continue
                    for f in sorted(cdir.iterdir()):
                        m = _MPIE_FILE.match(f.name)
                        if not m:
                            n_bad += f.suffix.lower() == ".png"
                            continue
                        illum = int(m.group(5))
                        if cfg.illuminations and illum not in cfg.illuminations:
                            continue
                        key = f"{sess.parent.name}/{subj.name}/{rec.name}/{illum:02d}"
                        groups.setdefault(key, {})[cam] = str(f.relative_to(root))
    triplets = []
    for key in sorted(groups):
        g = groups[key]
        left = [c for c in cfg.left_cameras if c in g]
        right = [c for c in cfg.right_cameras if c in g]
        if cfg.front_camera not in g or not left or not right:
            continue
        rng = np.random.default_rng([seed, int(hashlib.md5(key.encode()).hexdigest()[:8], 16)])
        triplets.append(
            MultiPieTriplet(
                key,
                [
                    g[left[rng.integers(len(left))]],
                    g[cfg.front_camera],
                    g[right[rng.integers(len(right))]],
                ],
            )
        )
    if not triplets:
        raise MfnetError(
            f"Multi-PIE: no triplet found under {root} (front camera {cfg.front_camera}, left "
            f"{cfg.left_cameras}, right {cfg.right_cameras}; {n_bad} png files with unexpected names). {MPIE_HINT}"
        )
    return triplets


# -- FaceScape multi-view ----------------------------------------------------------------
FS_HINT = (
    "Expected the FaceScape multi-view layout <root>/fsmview_images/<id>/<expression>/<n>.jpg "
    "with a params.json per expression folder holding '<n>_K', '<n>_Rt' and '<n>_valid'"
)


@dataclass
class FaceScapeTriplet:
    key: str
    paths: list[str]  # relative to root: left, front, right
    k: list[np.ndarray]  # (3,3) per view, full-resolution pixels
    size: list[tuple[int, int]]  # (width, height) at full resolution, 0 when unknown


def facescape_camera_yaws(params: dict, names: list[str]) -> dict[str, float]:
    """Yaw (degrees) of each valid camera about the rig's up axis, relative to the camera
    looking most nearly along the mean viewing direction (the frontal one)."""
    dirs, ups, ok = {}, [], []
    for n in names:
        if not params.get(f"{n}_valid", True):
            continue
        rt = np.asarray(params[f"{n}_Rt"], dtype=np.float64).reshape(3, 4)
        r = rt[:, :3]
        dirs[n] = r[2]  # optical axis (OpenCV z) in world coordinates
        ups.append(-r[1])  # image up in world coordinates
        ok.append(n)
    if not dirs:
        return {}
    up = np.mean(ups, 0)
    up /= np.linalg.norm(up)
    mean_dir = np.mean(list(dirs.values()), 0)
    front = max(dirs, key=lambda n: float(dirs[n] @ mean_dir))

    def flat(v: np.ndarray) -> np.ndarray:
        w = v - (v @ up) * up
        return w / max(np.linalg.norm(w), 1e-9)

    f0 = flat(dirs[front])
    yaws = {}
    for n, d in dirs.items():
        w = flat(d)
        yaws[n] = float(np.degrees(np.arctan2(np.cross(f0, w) @ up, f0 @ w)))
    return yaws


def index_facescape(cfg: FaceScapeData) -> list[FaceScapeTriplet]:
    root = Path(cfg.root)
    _require_dir(root, "FaceScape", FS_HINT)
    base = root / "fsmview_images"
    _require_dir(base, "FaceScape", FS_HINT)
    triplets = []
    problems: list[str] = []
    for sid in sorted(p for p in base.iterdir() if p.is_dir()):
        for expr in sorted(p for p in sid.iterdir() if p.is_dir()):
            pj = expr / "params.json"
            if not pj.is_file():
                problems.append(f"{expr}: no params.json")
                continue
            try:
                params = json.loads(pj.read_text())
            except json.JSONDecodeError as exc:
                problems.append(f"{pj}: not JSON ({exc})")
                continue
            names = sorted(
                {k.rsplit("_", 1)[0] for k in params if k.endswith("_Rt")},
                key=lambda s: (len(s), s),
            )
            names = [n for n in names if (expr / f"{n}.jpg").is_file() and f"{n}_K" in params]
            if len(names) < 3:
                problems.append(f"{expr}: fewer than 3 cameras with an image, K and Rt")
                continue
            yaws = facescape_camera_yaws(params, names)
            if len(yaws) < 3:
                problems.append(f"{expr}: fewer than 3 valid cameras")
                continue
            front = min(yaws, key=lambda n: abs(yaws[n]))
            left = min(yaws, key=lambda n: abs(yaws[n] + cfg.side_yaw_deg))
            right = min(yaws, key=lambda n: abs(yaws[n] - cfg.side_yaw_deg))
            if len({front, left, right}) < 3:
                problems.append(f"{expr}: no distinct left/front/right cameras")
                continue
            views = [left, front, right]
            triplets.append(
                FaceScapeTriplet(
                    key=f"{sid.name}/{expr.name}",
                    paths=[str((expr / f"{n}.jpg").relative_to(root)) for n in views],
                    k=[np.asarray(params[f"{n}_K"], dtype=np.float64).reshape(3, 3) for n in views],
                    size=[tuple(params.get(f"{n}_size", (0, 0))) for n in views],
                )
            )
    if not triplets:
        detail = "; ".join(problems[:3]) if problems else "no <id>/<expression> folders"
        raise MfnetError(
            f"FaceScape: no usable expression folder under {base} ({detail}). {FS_HINT}"
        )
    return triplets


# --------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------
def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction)) if n > 1 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def precompute_landmarks(cfg: Config, progress: Progress | None = None) -> dict[str, int]:
    """Detects and caches the landmarks of every photo the configured real dataset uses."""
    train, val = build_real_datasets(cfg, progress=progress)
    return {"train_samples": len(train), "val_samples": len(val)}


def build_real_datasets(
    cfg: Config, progress: Progress | None = None
) -> tuple[PhotoTripletDataset, PhotoTripletDataset]:
    """Multi-PIE or FaceScape (train, val) datasets; detects missing landmarks on the way."""
    d, m = cfg.data, cfg.model
    jitter = (d.jitter_shift, d.jitter_scale)
    if d.dataset == "multipie":
        trip = index_multipie(d.multipie, cfg.train.seed)
        root = Path(d.multipie.root)
        cache = LandmarkCache(
            _cache_folder(d.cache_dir, "multipie", root), d.landmark_backend, max_side=100_000
        )
        fov = d.multipie.fov_deg
        val_fraction = d.multipie.val_fraction
        paths = [t.paths for t in trip]
        ks: list[list[np.ndarray | None]] = [[None] * 3 for _ in trip]
        max_side = 0
    elif d.dataset == "facescape":
        trip = index_facescape(d.facescape)
        root = Path(d.facescape.root)
        max_side = d.facescape.max_image_side
        cache = LandmarkCache(
            _cache_folder(d.cache_dir, "facescape", root), d.landmark_backend, max_side
        )
        fov = 40.0
        val_fraction = d.facescape.val_fraction
        paths = [t.paths for t in trip]
        ks = [list(t.k) for t in trip]
    else:
        raise MfnetError(f"unknown real dataset {d.dataset!r}")
    samples: list[list[ViewRef]] = []
    total = sum(len(p) for p in paths)
    done = 0
    for views, kk in zip(paths, ks, strict=True):
        refs = []
        for rel, k in zip(views, kk, strict=True):
            e = cache.get(root, rel)
            done += 1
            if progress:
                progress(done, total)
            if e is None:
                refs = []
                break
            w, h = e["size"]
            if k is None:
                intr = Intrinsics.from_fov(w, h, fov).as_vector()
            else:
                # K is for the full-resolution photo; landmarks are for the downscaled one.
                s = float(e.get("scale", 1.0))
                intr = np.array([k[0, 0] * s, k[1, 1] * s, k[0, 2] * s, k[1, 2] * s], np.float32)
            refs.append(
                ViewRef(str(root / rel), np.asarray(e["landmarks"], np.float64), intr, max_side)
            )
        if refs:
            samples.append(refs)
    cache.flush()
    if not samples:
        raise MfnetError(f"{d.dataset}: landmarks were found in no complete triplet under {root}")
    tr, va = _split(len(samples), val_fraction, cfg.train.seed)

    def mk(idx: np.ndarray, aug: bool) -> PhotoTripletDataset:
        chosen = [samples[i] for i in idx]
        return PhotoTripletDataset(chosen, m.input_size, m.crop_scale, cfg.train.seed, aug, jitter)

    return mk(tr, d.augment), mk(va, False)
