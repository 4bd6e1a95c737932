"""Builds the ICT Face Model file that ships inside mfnet_core (head/data/ict_face_model.npz)
from the ICT-FaceKit Light conversion in ../shared/assets/ict-facekit-light (MIT licence).

    python tools/build_ict_model.py [SOURCE_DIR] [--out mfnet_core/head/data]

What changes against the source, and why:
- the identity and expression deltas are stored as int16 with one float32 scale per
  component (the largest |delta| / 32767): half the size of float32 and 16x finer than
  float16 at these magnitudes; the error this adds is printed (max and over random faces);
- only the 53 expression shapes ICT lists as its ARKit set are kept (PupilDilate and
  cheekRaiser dropped), in ICT's order;
- geometry stays in centimetres as in ICT's files (the loader converts to metres);
- the landmark indices, jawline substitutes and part ranges published with the model are
  stored beside it; the MIT licence file is copied next to it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT / ".." / "shared" / "assets" / "ict-facekit-light"


def quantise(deltas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K,V,3) float -> (K,V,3) int16 and (K,) float32 scales."""
    scale = np.abs(deltas).reshape(len(deltas), -1).max(1) / 32767.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.round(deltas / scale[:, None, None]).clip(-32767, 32767).astype(np.int16)
    return q, scale


# Entries stored without compression: the int16 identity basis deflates only to 85 % of
# its 16 MB, and inflating it took 95 ms of every model load (a third of it, issue 15).
STORED = ("identity_q",)


def save_model(target: Path, **arrays: np.ndarray) -> None:
    """An .npz as `np.savez_compressed` writes it (one .npy per key, `np.load` reads it),
    except that the `STORED` entries are not deflated."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            kind = zipfile.ZIP_STORED if key in STORED else zipfile.ZIP_DEFLATED
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = kind
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source", nargs="?", default=str(DEFAULT_SOURCE))
    ap.add_argument("--out", default=str(ROOT / "mfnet_core" / "head" / "data"))
    args = ap.parse_args()
    src, out = Path(args.source), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    z = np.load(src / "ict_facekit_light.npz")
    indices = json.loads((src / "vertex_indices.json").read_text())
    regions = json.loads((src / "landmarks_and_regions.json").read_text())
    names = list(z["expression_names"])
    keep = [names.index(n) for n in indices["expressions"]]
    id_q, id_s = quantise(z["identity_deltas"].astype(np.float64))
    ex_d = z["expression_deltas"][keep].astype(np.float64)
    ex_q, ex_s = quantise(ex_d)
    target = out / "ict_face_model.npz"
    save_model(
        target,
        format=np.array("mfnet-ict-face-model-1"),
        units=np.array("cm"),
        vertices=z["vertices"].astype(np.float32),
        faces=z["faces"].astype(np.int32),
        uvs=z["uvs"].astype(np.float32),
        face_uvs=z["face_uvs"].astype(np.int32),
        face_material=z["face_material"].astype(np.int16),
        material_names=z["material_names"],
        identity_names=z["identity_names"],
        identity_q=id_q,
        identity_scale=id_s,
        expression_names=np.array(indices["expressions"]),
        expression_q=ex_q,
        expression_scale=ex_s,
        landmarks_and_regions=np.array(json.dumps(regions)),
    )
    shutil.copy(src / "LICENSE", out / "LICENSE")
    # what the storage changes, in millimetres
    id_err = np.abs(id_q * id_s[:, None, None] - z["identity_deltas"]).max() * 10
    ex_err = np.abs(ex_q * ex_s[:, None, None] - ex_d).max() * 10
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(20):
        a = rng.normal(size=len(id_s))
        w = rng.uniform(0, 1, size=len(ex_s))
        exact = np.tensordot(a, z["identity_deltas"], 1) + np.tensordot(w, ex_d, 1)
        stored = np.tensordot(a, id_q * id_s[:, None, None], 1) + np.tensordot(
            w, ex_q * ex_s[:, None, None], 1
        )
        worst = max(worst, float(np.linalg.norm(exact - stored, axis=-1).max() * 10))
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    print(
        json.dumps(
            {
                "file": str(target),
                "bytes": target.stat().st_size,
                "sha256": digest,
                "max_component_error_mm": round(float(max(id_err, ex_err)), 6),
                "max_vertex_error_mm_20_random_faces": round(worst, 6),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
