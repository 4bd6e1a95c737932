"""The identity a track holds fixed: the `shape` of a result folder's rig.npz, with the
model kind that made it (docs/RESULT_FOLDER.md). numpy only, so that the CLI refuses a wrong
folder before torch loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mfnet_core.errors import MfnetError

__all__ = ["Identity", "check_identity_matches", "read_identity"]


@dataclass(frozen=True)
class Identity:
    folder: Path
    shape: np.ndarray  # (S,) float64 identity coefficients
    model_kind: str  # "ict", "flame", "test-head"
    model_name: str
    expression_names: tuple[str, ...] | None  # as rig.npz names the keys (None: not stored)
    # PCA models: the ARKit keys carried onto the fitted face (rig.npz arkit_names /
    # arkit_basis (A,V,3) metres), onto which a track projects its frames
    arkit_names: tuple[str, ...] | None = None
    arkit_basis: np.ndarray | None = None
    # rig.npz model_scale: the result's head is the model's times this (its metric size)
    model_scale: float = 1.0


def read_identity(result_dir: Path | str) -> Identity:
    """The identity of a result folder (or of a rig.npz given directly), or one line saying
    why it cannot be used."""
    path = Path(result_dir)
    rig = path / "rig.npz" if path.is_dir() else path
    if not path.exists():
        raise MfnetError(
            f"--identity {path}: not found (give the result folder of `mfnet reconstruct`)"
        )
    if not rig.is_file():
        raise MfnetError(f"--identity {path}: no rig.npz in it (not an mfnet result folder)")
    try:
        with np.load(rig, allow_pickle=False) as z:
            files = set(z.files)
            if "model_kind" not in files:
                raise MfnetError(
                    f"--identity {rig}: rig.npz does not say which head model made it "
                    "(no model_kind); reconstruct the person again with this mfnet"
                )
            if "shape" not in files:
                raise MfnetError(f"--identity {rig}: rig.npz holds no identity (no shape)")
            kind = str(z["model_kind"])
            name = str(z["model_name"]) if "model_name" in files else ""
            shape = np.asarray(z["shape"], dtype=np.float64).reshape(-1)
            names = (
                tuple(str(n) for n in z["expression_names"])
                if "expression_names" in files
                else None
            )
            scale = float(z["model_scale"]) if "model_scale" in files else 1.0
            arkit_names, arkit_basis = None, None
            if {"arkit_names", "arkit_basis"} <= files:
                arkit_names = tuple(str(n) for n in z["arkit_names"])
                arkit_basis = np.asarray(z["arkit_basis"], dtype=np.float64)
    except MfnetError:
        raise
    except Exception as e:  # a damaged or foreign file: one line, not a traceback
        raise MfnetError(
            f"--identity {rig}: not a readable rig.npz ({type(e).__name__}: {e})"
        ) from None
    if not np.isfinite(shape).all():
        raise MfnetError(f"--identity {rig}: the identity holds NaN or inf (damaged file?)")
    if not (np.isfinite(scale) and 0.5 <= scale <= 2.0):
        raise MfnetError(f"--identity {rig}: model_scale {scale} is not a head size (0.5-2)")
    if arkit_basis is not None and (
        arkit_basis.ndim != 3
        or arkit_basis.shape[0] != len(arkit_names or ())
        or arkit_basis.shape[2] != 3
        or not np.isfinite(arkit_basis).all()
    ):
        raise MfnetError(
            f"--identity {rig}: arkit_basis {arkit_basis.shape} does not fit its "
            f"{len(arkit_names or ())} arkit_names or holds NaN (damaged file?)"
        )
    return Identity(
        path if path.is_dir() else path.parent,
        shape,
        kind,
        name,
        names,
        arkit_names,
        arkit_basis,
        model_scale=scale,
    )


def check_identity_matches(
    identity: Identity, kind: str, n_shape: int, names: tuple[str, ...] | None
) -> None:
    """Refuses (one line) an identity made with another head model than the loaded one
    (`kind`, its identity size and its expression names)."""
    if identity.model_kind != kind:
        raise MfnetError(
            f"--identity {identity.folder} was made with the {identity.model_kind} head model, "
            f"but the {kind} model is loaded; track with --model {identity.model_kind}"
        )
    if len(identity.shape) > n_shape and np.abs(identity.shape[n_shape:]).max() > 0:
        raise MfnetError(
            f"--identity {identity.folder}: {len(identity.shape)} identity coefficients, but the "
            f"loaded {kind} model has {n_shape}; it was made with another version of the model"
        )
    if (
        names
        and identity.expression_names
        and not all(n.startswith("exp_") for n in identity.expression_names)
    ):
        k = min(len(names), len(identity.expression_names))
        if tuple(names[:k]) != tuple(identity.expression_names[:k]):
            raise MfnetError(
                f"--identity {identity.folder}: its expression keys differ from the loaded "
                f"{kind} model's; it was made with another version of the model"
            )
