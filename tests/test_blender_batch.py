"""The add-on with the real backend: the child process (progress, errors, clean cancel),
the Reconstruct Face operator inside Blender, and the headless batch through the real
`blender -b -P blender_addon/batch.py` with two people and one broken folder (resume, summary,
exit code). Photos: matplotlib's grace_hopper.jpg and scikit-image's astronaut (both ship in
the dev extras); the backend runs on the generated test head unless FLAME is installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "blender"))
import harness  # noqa: E402

from blender_addon import backend  # noqa: E402

pytestmark = [pytest.mark.blender, pytest.mark.slow]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    mpl = pytest.importorskip("matplotlib.cbook")
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    d = tmp_path_factory.mktemp("photos")
    grace = Path(mpl.get_sample_data("grace_hopper.jpg", asfileobj=False))
    astro = d / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(astro)
    bad = d / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 50)
    return {"grace": grace, "astronaut": astro, "bad": bad}


@pytest.fixture(scope="module")
def addon_zip() -> Path:
    return harness.built_zip()


# --------------------------------------------------------------------------- child process


def _cmd(photo: Path, out: Path) -> list[str]:
    return backend.reconstruct_command(
        sys.executable, [str(photo)], str(out), device="cpu", expressions=10
    )


def test_backend_error_message_reaches_the_add_on(photos, tmp_path):
    job = backend.BackendJob(_cmd(photos["bad"], tmp_path / "out"), tmp_path / "out")
    st = job.wait()
    assert st.done and st.returncode != 0
    assert "broken.jpg" in st.error and "Traceback" not in st.error
    assert not (tmp_path / "out").exists() and not backend.partial_folders(tmp_path / "out")


@pytest.mark.parametrize("parent_ignores_sigint", [False, True])
def test_cancel_ends_the_child_and_leaves_nothing(photos, tmp_path, parent_ignores_sigint):
    """Also when the parent ignores SIGINT (a shell's background job): the child inherits
    SIG_IGN, and the backend must still stop on Cancel."""
    import signal

    out = tmp_path / "out"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if parent_ignores_sigint else None
    try:
        job = backend.BackendJob(_cmd(photos["grace"], out), out)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 300  # hang protection only: the stage shows in ~5 s
    while time.monotonic() < deadline:
        st = job.poll()
        if st.done:
            pytest.fail(f"finished before it could be cancelled: {st.error or st.result_dir}")
        if any(ev["stage"] in ("landmarks", "fit") for ev in st.events):
            break
        time.sleep(0.05)
    else:
        job.cancel(grace=1.0)
        pytest.fail(f"hang? the backend reached no landmarks/fit stage in 300 s: {st.events[-3:]}")
    assert job.proc.poll() is None, "the backend should still be running"
    t0 = time.perf_counter()
    job.cancel()
    took = time.perf_counter() - t0
    assert job.proc.poll() is not None and job.state.done and job.state.error == "cancelled"
    # The child stopped on the interrupt itself (the CLI's exit code for Ctrl-C), not by the
    # SIGKILL that cancel() sends after its grace period: no time limit needed to tell them apart.
    assert job.proc.returncode == 130, f"exit {job.proc.returncode} after {took:.1f} s"
    assert not out.exists(), "a cancelled run must not leave a result folder"
    assert not backend.partial_folders(out), "nor a partial one"
    deadline = time.monotonic() + 30  # usually empty at once; a lingering worker gets time
    while True:
        try:  # signal 0 to the child's process group: fails when no process is left in it
            os.killpg(job.proc.pid, 0)
        except ProcessLookupError:
            break
        if time.monotonic() > deadline:
            pytest.fail("processes left in the child's process group 30 s after the cancel")
        time.sleep(0.1)
    print(f"cancel took {took:.2f} s")


# --------------------------------------------------------------------------- operator


@pytest.mark.parametrize("kind", harness.KINDS)
def test_reconstruct_operator(kind, addon_zip, photos, tmp_path):
    res = harness.run(
        kind,
        "check_operator.py",
        [photos["grace"], photos["bad"], tmp_path / "work", "--zip", addon_zip],
        tmp_path / "home",
    )
    prefs = res["prefs"]
    assert (
        prefs["detect"] == ["FINISHED"]
        and Path(prefs["backend_python"]).resolve() == Path(sys.executable).resolve()
    )
    assert prefs["check"] == ["FINISHED"] and prefs["doctor_lines"][0].startswith("Backend: ")
    assert any("dlib" in line for line in prefs["doctor_lines"]), prefs["doctor_lines"]
    assert prefs["pose_library"].endswith("poses.json")
    ok = res["ok_run"]
    assert ok["result"] == ["FINISHED"] and not ok["error"] and not ok["running"]
    assert ok["mesh"] == "grace_hopper" and ok["armature"] == "grace_hopper_rig"
    assert ok["n_expression_keys"] > 0 and ok["texture_packed"]
    assert ok["result_dirs"] == ["grace_hopper"] and ok["info"].startswith("Built grace_hopper in")
    bad = res["bad_run"]
    assert "Backend failed" in bad["error"] and "broken.jpg" in bad["error"] and not bad["running"]
    assert "RuntimeError" in str(bad["result"]) and bad["result_dirs"] == [
        "grace_hopper"
    ]  # nothing new written


# --------------------------------------------------------------------------- batch


def _batch(
    kind: str, inp: Path, out: Path, home: Path, extra: list[str] | None = None
) -> subprocess.CompletedProcess:
    harness.require(kind)
    script = harness.REPO / "blender_addon" / "batch.py"
    args = ["--input", str(inp), "--output", str(out), "--python", sys.executable, *(extra or [])]
    if kind == "binary":
        cmd = [harness.blender_binary(), "-b", "-noaudio", "-P", str(script), "--", *args]
    else:
        cmd = [harness.bpy_python(), str(script), "--", *args]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=900,
        env=harness.isolated_env(home),
        cwd=harness.REPO,
    )


def test_batch_two_people_and_a_broken_folder(photos, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    for name, photo, target in (
        ("alice", photos["grace"], "front.jpg"),
        ("bob", photos["astronaut"], "front.png"),
        ("carol_broken", photos["bad"], "front.jpg"),
    ):
        (inp / name).mkdir(parents=True)
        shutil.copy(photo, inp / name / target)
    proc = _batch("binary", inp, out, tmp_path / "home")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, f"one person failed, so the exit code is 1:\n{log[-3000:]}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["format"] == "mfnet-batch-summary" and summary["succeeded"] == ["alice", "bob"]
    assert [f["name"] for f in summary["failed"]] == ["carol_broken"]
    assert "front.jpg" in summary["failed"][0]["reason"]
    for name in ("alice", "bob"):
        assert (out / name / f"{name}.blend").is_file() and (out / name / f"{name}.glb").is_file()
        assert (out / name / "result" / "rig.npz").is_file()
        assert (out / name / f"{name}.glb").read_bytes()[:4] == b"glTF"
    assert not list((out / "carol_broken").glob("*")), "no half result for the failed person"
    # --prefetch 1 (the default): bob's backend ran while Blender built alice
    alice, bob = summary["people"][:2]
    assert summary["prefetch"] == 1 and summary["people_per_minute"] > 0
    assert alice["started_at"] < bob["started_at"] < alice["finished_at"], (alice, bob)

    # the .blend opens in both Blenders, texture packed, drivers work without trusting Python
    for kind in harness.KINDS:
        if (kind == "binary" and harness.blender_binary()) or (
            kind == "bpy" and harness.bpy_python()
        ):
            res = harness.run(
                kind, "check_blend.py", [out / "alice" / "alice.blend"], tmp_path / f"home_{kind}"
            )
            assert (
                res["objects"] == ["alice", "alice_rig"]
                and res["drivers_valid"]
                and all(res["images_packed"])
            )
            assert (
                not res["autoexec_enabled"]
                and res["jaw_moves_mesh"] > 1e-3
                and res["simple_expressions"]  # run without "Auto Run Python Scripts"
                and (
                    res["corrective_value"] < 0  # FLAME-style: the jaw's pose corrective
                    if res["corrective_value"] is not None
                    else res["driven_jaw_open"] > 0  # ICT: the jaw bone drives jawOpen
                )
            )

    # resume: done people are skipped, the broken one is tried again and fails again
    done = sorted(p for name in ("alice", "bob") for p in (out / name).rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in done}
    again = _batch("binary", inp, out, tmp_path / "home")
    assert again.returncode == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == ["alice", "bob"] and summary["succeeded"] == []
    assert [f["name"] for f in summary["failed"]] == ["carol_broken"]
    # skipped means not reconstructed again: their files are untouched and none were added
    now = sorted(p for name in ("alice", "bob") for p in (out / name).rglob("*") if p.is_file())
    assert now == done and {p: p.stat().st_mtime_ns for p in now} == stamps

    # fixing the folder and rerunning finishes the batch with exit code 0
    shutil.copy(photos["grace"], inp / "carol_broken" / "front.jpg")
    last = _batch("binary", inp, out, tmp_path / "home", ["--no-glb", "--prefetch", "0"])
    assert last.returncode == 0, (last.stdout + last.stderr)[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["succeeded"] == ["carol_broken"] and summary["failed"] == []
    assert summary["prefetch"] == 0


def test_batch_in_bpy_and_bad_arguments(photos, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    (inp / "dave").mkdir(parents=True)
    shutil.copy(photos["grace"], inp / "dave" / "dave_front.jpg")
    (inp / "empty").mkdir()
    proc = _batch("bpy", inp, out, tmp_path / "home")
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["succeeded"] == ["dave"] and summary["blender"].startswith("5.")
    assert summary["failed"][0]["name"] == "empty" and "no photos" in summary["failed"][0]["reason"]
    assert (out / "dave" / "dave.blend").is_file() and (out / "dave" / "dave.glb").is_file()
    bad = _batch("binary", tmp_path / "missing", out, tmp_path / "home")
    assert bad.returncode == 2 and "not a folder" in bad.stdout
    neg = _batch("binary", inp, out, tmp_path / "home", ["--prefetch", "-1"])
    assert neg.returncode == 2 and "--prefetch -1" in neg.stdout
