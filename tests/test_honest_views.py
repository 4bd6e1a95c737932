"""Photos that would give a meaningless head are reported, on real pictures: a 90-degree
profile (dlib squeezes a frontal face onto the cheek and the fit follows it to a near-frontal
pose) and photos of different people (fused into a head that is neither). Real faces: the
James capture's two camera views and a profile render of it (tests/data/james, BSD-3),
scikit-image's astronaut (NASA, public domain), matplotlib's Grace Hopper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from mfnet_core.fit.landmark_fit import FitOptions
from mfnet_core.inputs import identity_worker
from mfnet_core.inputs.face_identity import (
    SAME_PERSON_DISTANCE,
    DescriptorJob,
    IdentityCheck,
    check_identity,
    different_people_warnings,
    face_crop,
    face_descriptor,
)
from mfnet_core.inputs.images import load_photo, photo_from_array
from mfnet_core.inputs.landmarks import detect_landmarks
from mfnet_core.outputs.view_names import view_warnings
from mfnet_core.reconstruct import ReconstructOptions, ViewInput, reconstruct

DATA = Path(__file__).resolve().parent / "data" / "james"


def _james_views() -> tuple[np.ndarray, np.ndarray]:
    with Image.open(DATA / "james_views_900.jpg") as im:
        rgb = np.asarray(im.convert("RGB"))
    half = rgb.shape[1] // 2
    return np.ascontiguousarray(rgb[:, :half]), np.ascontiguousarray(rgb[:, half:])


def _options() -> ReconstructOptions:
    return ReconstructOptions(
        device="cpu",
        texture_size=256,
        arkit_keys=False,
        fit=FitOptions(losses=("landmarks", "reg")),
    )


@pytest.fixture(scope="module")
def faces() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Real photos and their dlib landmarks."""
    left, right = _james_views()
    photos = {"james_a": left, "james_b": right, "astronaut": skdata.astronaut()}
    return {k: (v, detect_landmarks(v).landmarks) for k, v in photos.items()}


def test_same_person_close_different_people_far(faces):
    names = list(faces)
    photos = [faces[n][0] for n in names]
    lmk = np.stack([faces[n][1] for n in names])
    check = check_identity(photos, lmk, np.zeros(len(names)))
    d = check.distances
    assert check.compared == [0, 1, 2]
    assert d[0, 1] < SAME_PERSON_DISTANCE - 0.1  # James, two cameras ~70 degrees apart
    assert d[0, 2] > SAME_PERSON_DISTANCE + 0.05 and d[1, 2] > SAME_PERSON_DISTANCE + 0.05
    assert np.allclose(d, d.T) and np.allclose(np.diag(d), 0)
    warnings = different_people_warnings(check, names)
    assert len(warnings) == 1 and "astronaut seems to show somebody else" in warnings[0]
    # two photos: the pair is reported; the same person twice is not
    pair = check_identity(photos[1:], lmk[1:], np.zeros(2))
    assert (
        "james_b and astronaut seem to show different people"
        in (different_people_warnings(pair, names[1:])[0])
    )
    same = check_identity(photos[:2], lmk[:2], np.zeros(2))
    assert different_people_warnings(same, names[:2]) == []


def test_descriptors_from_their_own_process_are_the_in_process_ones(faces):
    """The child process (`DescriptorJob`) reads face crops: its descriptors equal the ones
    from the whole photos, so the check's distances are the same; its folder is removed."""
    photos = [faces[n][0] for n in faces]
    lmk = np.stack([faces[n][1] for n in faces])
    here = np.stack([face_descriptor(p, m) for p, m in zip(photos, lmk, strict=True)])
    # a face in a bigger picture: the crop is smaller, the descriptor the same
    padded = np.pad(photos[2], ((400, 300), (250, 350), (0, 0)))
    crop, local = face_crop(padded, lmk[2] + [250, 400])
    assert crop.shape[0] < padded.shape[0] and crop.shape[1] < padded.shape[1]
    assert np.array_equal(
        face_descriptor(crop, local), face_descriptor(padded, lmk[2] + [250, 400])
    )
    with DescriptorJob(photos, lmk) as job:
        folder = job._folder
        found = job.result()
        check = check_identity(photos, lmk, np.zeros(len(photos)), job)
    assert isinstance(found, np.ndarray) and np.array_equal(found, here)
    assert np.array_equal(check.distances, check_identity(photos, lmk, np.zeros(3)).distances)
    assert not folder.exists()


def test_without_a_child_process_the_check_computes_the_descriptors_itself(faces, monkeypatch):
    photos = [faces[n][0] for n in faces]
    lmk = np.stack([faces[n][1] for n in faces])
    expected = check_identity(photos, lmk, np.zeros(3)).distances
    monkeypatch.setattr("sys.executable", "/nonexistent/python")  # the child cannot start
    with DescriptorJob(photos, lmk) as job:
        assert job.result() is None
        check = check_identity(photos, lmk, np.zeros(3), job)
    assert np.array_equal(check.distances, expected)

    def no_temp_folder(*args, **kwargs):
        raise PermissionError("read-only temp folder")

    monkeypatch.setattr("tempfile.mkdtemp", no_temp_folder)
    with DescriptorJob(photos, lmk) as job:
        assert job.result() is None
        assert np.array_equal(check_identity(photos, lmk, np.zeros(3), job).distances, expected)


def test_the_worker_says_when_dlib_is_missing(faces, tmp_path, monkeypatch):
    photo, lmk = faces["james_a"]
    crop, local = face_crop(photo, lmk)
    np.savez(tmp_path / "faces.npz", landmarks=local[None], crop0=crop)
    monkeypatch.setitem(__import__("sys").modules, "dlib", None)  # import dlib fails
    assert identity_worker.main([str(tmp_path)]) == identity_worker.DLIB_MISSING
    assert not (tmp_path / "descriptors.npy").exists()


def test_grace_hopper_is_not_the_astronaut(faces):
    cbook = pytest.importorskip("matplotlib.cbook", reason="matplotlib ships the Hopper photo")
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        hopper = np.asarray(im.convert("RGB"))
    astro, astro_lmk = faces["astronaut"]
    check = check_identity(
        [hopper, astro], np.stack([detect_landmarks(hopper).landmarks, astro_lmk]), np.zeros(2)
    )
    assert check.distances[0, 1] > SAME_PERSON_DISTANCE


def test_steep_views_and_single_photos_are_not_compared(faces):
    photos = [faces[n][0] for n in faces]
    lmk = np.stack([faces[n][1] for n in faces])
    check = check_identity(photos, lmk, np.array([0.0, 10.0, 75.0]))
    assert check.compared == [0, 1] and np.isnan(check.distances[2]).all()
    assert different_people_warnings(check, list(faces)) == []
    one = check_identity(photos[:1], lmk[:1], np.zeros(1))
    assert one.compared == [] and one.skipped_reason == "one photo"
    assert different_people_warnings(IdentityCheck(np.zeros((0, 0)), []), []) == []


def test_reconstruct_reports_a_different_person(faces, test_head, tmp_path):
    inputs = [
        ViewInput(photo=photo_from_array(faces[n][0], f"{n}.png"), landmarks=faces[n][1])
        for n in faces
    ]
    rec = reconstruct(inputs, test_head, tmp_path / "out", _options())
    hits = [w for w in rec.report["warnings"] if "somebody else" in w]
    astro = rec.view_names[2]
    assert len(hits) == 1 and hits[0].startswith(f"astronaut.png ({astro} view) seems"), rec.report[
        "warnings"
    ]
    section = rec.report["same_person_check"]
    assert len(section["compared"]) == 3 and section["same_person_below"] == SAME_PERSON_DISTANCE
    assert "identity" in rec.report["timings_s"]


def test_profile_photo_is_reported(test_head, tmp_path):
    """A real 90-degree profile: found only by dlib's CNN detector, fitted near frontal, so
    the result would be wrong without a word; report.json and the CLI say so."""
    photo = load_photo(DATA / "james_profile_90.jpg")
    rec = reconstruct([ViewInput(photo=photo)], test_head, tmp_path / "profile", _options())
    hits = [w for w in rec.report["warnings"] if "cannot follow a profile" in w]
    assert hits and hits[0].startswith("james_profile_90.jpg:"), rec.report["warnings"]


def test_view_warnings_flag_a_steep_face_fitted_frontal():
    def flagged(yaw: float, hint: str) -> bool:
        ws = view_warnings(["front"], np.array([yaw]), [None], ["p.jpg"], [hint])
        return any("cannot follow a profile" in w for w in ws)

    assert flagged(5.0, "steep") and flagged(-30.0, "steep")
    assert not flagged(70.0, "steep")  # the fit followed the turn: the usual >60° note only
    assert not flagged(5.0, "frontal") and not flagged(5.0, "") and not flagged(35.0, "turned")
