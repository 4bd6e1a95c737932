"""Naming the views left/front/right from the fitted poses, and what to warn about them.

Users give photos in any order and with any file names; the fit's yaw decides which is
which, and a file called "left" that the fit sees from the right is reported, not trusted.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

NAMED_VIEWS = ("left", "front", "right")


def label_from_filename(path: Path | None) -> str | None:
    if path is None:
        return None
    m = re.search(r"(left|front|right|center|centre)", path.stem.lower())
    if not m:
        return None
    return {"center": "front", "centre": "front"}.get(m.group(1), m.group(1))


def name_views(yaws: np.ndarray) -> list[str]:
    """Left/front/right from fitted yaw (negative yaw: the camera sees the left cheek)."""
    n = len(yaws)
    if n == 1:
        return ["front"]
    if n == 3:
        order = np.argsort(yaws)
        names = [""] * 3
        for name, idx in zip(NAMED_VIEWS, order, strict=True):
            names[idx] = name
        return names
    return [f"view{i}" for i in range(n)]


# A face only the CNN detector finds is turned beyond ~60 degrees (HOG's +-45 degree
# detectors miss it); dlib's 68 points then squeeze a frontal face onto the cheek and ear,
# and the fit follows them to a near-frontal pose. A fitted yaw below this says so.
STEEP_BUT_FITTED_FRONTAL_DEG = 40.0


def view_warnings(
    names: list[str],
    yaws: np.ndarray,
    labels: list[str | None],
    files: list[str],
    pose_hints: list[str] | None = None,
) -> list[str]:
    """What to tell the user about each view's pose: a file name that contradicts the fitted
    view, a side view barely turned, a face turned too far for 68 landmarks, and a face the
    detector saw steeply turned that the fit put near frontal (a profile the model cannot
    follow: its landmarks, pose and texture are wrong)."""
    warnings = []
    hints = pose_hints or [""] * len(names)
    for name, yaw, label, file, hint in zip(names, yaws, labels, files, hints, strict=True):
        if hint == "steep" and abs(yaw) < STEEP_BUT_FITTED_FRONTAL_DEG:
            warnings.append(
                f"{file}: the face looks turned beyond ~60° (a profile), but its landmarks fit "
                f"only as a face turned {abs(yaw):.0f}°: the 68-point landmarks cannot follow a "
                "profile, so this view's pose, shape and texture are wrong; use photos turned "
                "no more than 45°"
            )
        if label and label != name and len(names) == 3:
            warnings.append(
                f"{file}: named '{label}' but the fitted pose says '{name}' (yaw {yaw:+.0f}°); using '{name}'"
            )
        if name in ("left", "right") and abs(yaw) < 12:
            warnings.append(
                f"{name} view ({file}): face turned only {abs(yaw):.0f}°; side views of 25-45° constrain the profile best"
            )
        if abs(yaw) > 60:
            warnings.append(
                f"{file}: face turned {abs(yaw):.0f}°; landmarks are unreliable beyond ~60°"
            )
    return warnings


def view_labels(names: list[str], files: list[str]) -> list[str]:
    """Titles for the pictures: left/front/right where the fit named the view, else the
    photo's file stem (a user knows 'IMG_0412', not 'view1'); always unique."""
    labels = [
        n if n in NAMED_VIEWS else (Path(f).stem or n) for n, f in zip(names, files, strict=True)
    ]
    if len(set(labels)) < len(labels):
        labels = [lab if lab == n else f"{n} ({lab})" for n, lab in zip(names, labels, strict=True)]
    return labels
