"""Issue 14, the add-on's animation files: expression/pose sequences (.npz, .json) and pose
libraries are read bounded. Only the keys the importer uses are decompressed, every .npy
header is checked before its data, sizes and frame counts are capped, FIFOs and folders are
refused, and damaged files of any kind give one PoseError line, never a traceback or a hang.
No bpy: poses.py is plain numpy."""

from __future__ import annotations

import io
import json
import os
import time
import traceback
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_addon_safety import npy_member
from test_loader_fuzz import mutate

from blender_addon import poses


def _sequence_arrays(t: int = 40) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "expression": rng.normal(size=(t, 10)).astype(np.float32),
        "jaw_pose": rng.normal(scale=0.1, size=(t, 3)),
        "head_pose": rng.normal(scale=0.1, size=(t, 3)),
        "eye_pose": rng.normal(scale=0.1, size=(t, 6)),
        "fps": np.array(30.0),
    }


def _npz(path: Path, arrays: dict, extra: dict[str, bytes] | None = None) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        for name, raw in (extra or {}).items():
            dst.writestr(f"{name}.npy", raw)
    return path


def _one_line_refusal(path: Path, *fragments: str) -> str:
    with pytest.raises(poses.PoseError) as info:
        poses.load_sequence(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg, msg
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


def test_a_valid_npz_sequence_loads(tmp_path):
    a = _sequence_arrays()
    seq = poses.load_sequence(_npz(tmp_path / "take.npz", a))
    assert seq.n_frames == 40 and seq.fps == 30.0
    assert np.allclose(seq.expression, a["expression"]) and np.allclose(
        seq.root_pose, a["head_pose"]
    )


# A header declaring 3 GB, followed by a little data: must be refused from the header.
HUGE = npy_member({"descr": "<f4", "fortran_order": False, "shape": (250_000_000, 3)}) + bytes(4096)


def test_declared_gigabytes_are_refused_from_the_header(tmp_path):
    a = _sequence_arrays()
    del a["jaw_pose"]
    path = _npz(tmp_path / "huge.npz", a, {"jaw_pose": HUGE})
    tracemalloc.start()
    _one_line_refusal(path, "jaw_pose", "declares 3000000000 bytes")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100e6, f"{peak / 1e6:.0f} MB allocated to refuse it"


def test_members_the_importer_does_not_use_are_never_read(tmp_path):
    """The old reader decompressed every member (`{k: z[k] for k in z.files}`)."""
    path = _npz(tmp_path / "extra.npz", _sequence_arrays(), {"debug_dump": HUGE})
    tracemalloc.start()
    seq = poses.load_sequence(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seq.n_frames == 40 and peak < 100e6


def test_total_size_objects_and_frame_counts_are_capped(tmp_path, monkeypatch):
    a = _sequence_arrays()
    path = _npz(tmp_path / "take.npz", a)
    monkeypatch.setattr(poses, "MAX_SEQUENCE_BYTES", 2000)  # the arrays hold ~4.5 kB
    _one_line_refusal(path, "declare more than")
    monkeypatch.undo()
    monkeypatch.setattr(poses, "MAX_FRAMES", 39)
    _one_line_refusal(path, "more than 39 frames")
    monkeypatch.undo()
    obj = npy_member({"descr": "|O", "fortran_order": False, "shape": (3,)}, b"\x80\x04N.")
    path = _npz(tmp_path / "obj.npz", {k: v for k, v in a.items() if k != "fps"}, {"fps": obj})
    _one_line_refusal(path, "fps", "objects")
    text = npy_member({"descr": "<U4", "fortran_order": False, "shape": (40, 3)}, bytes(640))
    path = _npz(tmp_path / "text.npz", {"fps": a["fps"]}, {"jaw_pose": text})
    _one_line_refusal(path, "jaw_pose", "not numbers")


def test_json_files_are_capped_and_must_be_regular(tmp_path, monkeypatch):
    seq = {"fps": 24, "jaw_pose": [[0.1, 0.0, 0.0]] * 5}
    path = tmp_path / "take.json"
    path.write_text(json.dumps(seq))
    assert poses.load_sequence(path).n_frames == 5
    monkeypatch.setattr(poses, "MAX_SEQUENCE_BYTES", 50)
    _one_line_refusal(path, "larger than")
    lib = tmp_path / "poses.json"
    lib.write_text(json.dumps({"format": "mfnet-poses", "version": 1, "poses": {}}) + " " * 60)
    with pytest.raises(poses.PoseError, match="larger than"):
        poses.load_library(lib)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs need a POSIX system")
@pytest.mark.parametrize("suffix", [".npz", ".json", ".csv"])
def test_fifos_and_folders_are_refused_without_blocking(tmp_path, suffix):
    fifo = tmp_path / f"pipe{suffix}"
    os.mkfifo(fifo)
    t = time.perf_counter()
    _one_line_refusal(fifo, "not a file")
    assert time.perf_counter() - t < 60  # reaching here at all means it did not block
    folder = tmp_path / f"folder{suffix}"
    folder.mkdir()
    _one_line_refusal(folder)


def test_fuzz_sequence_files(tmp_path):
    """Random truncations, bit flips, overwritten and deleted runs and size fields pushed to
    0x7fffffff in a valid .npz and .json sequence: a sequence or one PoseError line, never
    another exception."""
    good_npz = _npz(tmp_path / "good.npz", _sequence_arrays(12)).read_bytes()
    frames = [{"jaw_pose": [0.1 * i, 0, 0], "expression": [0.5] * 4} for i in range(12)]
    good_json = json.dumps({"fps": 30, "frames": frames}).encode()
    rng = np.random.default_rng(14)
    failures, counts = [], {"loaded": 0, "refused": 0}
    for suffix, good in ((".npz", good_npz), (".json", good_json)):
        path = tmp_path / f"case{suffix}"
        for i in range(1500):
            data, what = mutate(good, rng)
            path.write_bytes(data)
            try:
                with np.errstate(all="ignore"):
                    poses.load_sequence(path)
                counts["loaded"] += 1
            except poses.PoseError as e:
                counts["refused"] += 1
                if "\n" in str(e):
                    failures.append(f"{suffix} {i} ({what}): multi-line {str(e)!r}")
            except Exception as e:  # noqa: BLE001 - exactly what this test looks for
                tb = traceback.extract_tb(e.__traceback__)[-1]
                failures.append(
                    f"{suffix} {i} ({what}): {type(e).__name__}: {str(e)[:120]} at "
                    f"{tb.filename}:{tb.lineno}"
                )
    print(counts)
    assert counts["refused"] > 500 and counts["loaded"] > 50, counts
    assert not failures, "\n".join(failures[:15])
