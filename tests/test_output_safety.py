"""The result folder is never lost, never half-written, never taken from someone else
(issue 14): --overwrite replaces only an mfnet result, the output is claimed before any work,
refusals come in one line before torch loads, a full disk or an interrupt at any point leaves
the old result or the new one whole with no hidden leftovers, exit 128+N for a signal, and
the files carry the user's umask. Real `mfnet` processes where it matters; the test head."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mfnet_core.errors import MfnetError
from mfnet_core.outputs import result_folder as rf

HEAVY = ("torch", "cv2", "dlib", "pygltflib")
PROBE = """
import json, sys
from mfnet_core.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
heavy = sorted(m for m in HEAVY if m in sys.modules)
print(json.dumps({"rc": rc, "heavy": heavy}))
""".replace("HEAVY", repr(HEAVY))
HANG = 300  # subprocess timeouts only catch hangs


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """The test head generated once into a cache of this module; no FLAME."""
    e = {k: v for k, v in os.environ.items() if k != "MFNET_FLAME_MODEL"}
    e.update(
        {
            "MFNET_CACHE": str(tmp_path_factory.mktemp("cache")),
            "MFNET_HOME": str(tmp_path_factory.mktemp("home")),
            "OMP_NUM_THREADS": "2",
            "PYTHONUNBUFFERED": "1",
        }
    )
    repo = str(Path(__file__).resolve().parents[1])
    e["PYTHONPATH"] = os.pathsep.join(p for p in (repo, e.get("PYTHONPATH", "")) if p)
    return e


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    mpl = pytest.importorskip("matplotlib.cbook")
    d = tmp_path_factory.mktemp("photo")
    src = Path(mpl.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return Path(shutil.copy(src, d / "grace.jpg"))


def _args(photo: Path, out: Path, *extra: str) -> list[str]:
    return [
        "reconstruct",
        str(photo),
        "-o",
        str(out),
        "--model",
        "test-head",
        "--device",
        "cpu",
        "--expressions",
        "5",
        "--texture-size",
        "512",
        "--progress",
        "jsonl",
        *extra,
    ]


def _run(args: list[str], env: dict, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mfnet_core", *args],
        capture_output=True,
        text=True,
        timeout=HANG,
        env=env,
        cwd=cwd,
    )


def _probe(args: list[str], env: dict, cwd: Path | None = None) -> tuple[int, list[str], str]:
    """(exit code, heavy modules loaded, stderr) of main(args) in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=HANG,
        env=env,
        cwd=cwd,
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["rc"], out["heavy"], proc.stderr


def _one_line(stderr: str, start: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("mfnet-test:")]
    lines = [ln for ln in lines if not ln.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith(start), stderr
    return lines[0]


def _fake_result(out: Path, content: str = "one") -> Path:
    """A small result folder written through atomic_folder (marker and all)."""
    with rf.atomic_folder(out) as tmp:
        (tmp / "rig.npz").write_text(content)
        (tmp / "report.json").write_text("{}")
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _whole(out: Path) -> dict:
    """The marker of a whole result: every file it lists is there, nothing else."""
    marker = rf.read_marker(out)
    assert marker is not None, f"{out} has no marker"
    assert sorted(p.name for p in out.iterdir()) == sorted([*marker["files"], rf.MARKER])
    assert {"rig.npz", "report.json", "head.glb", "texture.png"} <= set(marker["files"])
    return marker


def _default_signals() -> None:
    """In the child: the signals as a terminal would deliver them. A suite started under
    `nohup` (or by a runner that ignores SIGHUP) hands its children SIGHUP ignored, and mfnet
    keeps an inherited ignore on purpose (cli.py), which these tests are not about."""
    for name in ("SIGHUP", "SIGINT", "SIGTERM"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)


class Child:
    """A running `mfnet` with its stdout/stderr lines read on threads."""

    def __init__(self, args: list[str], env: dict, extra_env: dict | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mfnet_core", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**env, **(extra_env or {})},
            preexec_fn=_default_signals,
        )
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self.err: list[str] = []
        for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            threading.Thread(target=self._pump, args=(name, stream), daemon=True).start()

    def _pump(self, name: str, stream) -> None:
        for line in iter(stream.readline, ""):
            if name == "err":
                self.err.append(line)
            self.lines.put((name, line))
        self.lines.put((name, ""))

    def wait_for(self, predicate) -> None:
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline:
            try:
                name, line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if line and predicate(name, line):
                return
        self.proc.kill()
        pytest.fail(f"never seen; exit {self.proc.poll()}: {''.join(self.err)[-2000:]}")

    def wait_stage(self, *stages: str) -> None:
        def seen(name: str, line: str) -> bool:
            if name != "out" or not line.startswith("{"):
                return False
            return json.loads(line).get("stage") in stages

        self.wait_for(seen)

    def wait_pause(self, point: str) -> None:
        self.wait_for(lambda name, line: name == "err" and f"paused at {point}" in line)

    def finish(self) -> tuple[int, str]:
        rc = self.proc.wait(timeout=HANG)
        deadline = time.monotonic() + 10
        while not self.err or self.err[-1] != "":  # the stderr thread's end marker
            with contextlib.suppress(queue.Empty):
                name, line = self.lines.get(timeout=0.5)
                if name == "err" and line == "":
                    break
            if time.monotonic() > deadline:
                break
        return rc, "".join(self.err)


def _pause(point: str, resume: Path | None = None) -> dict[str, str]:
    """Environment for result_folder's test hook: hold the run at `point` (until `resume`
    exists, when given)."""
    e = {"MFNET_TEST_PAUSE": point, "MFNET_TEST_PAUSE_S": "120" if resume else "30"}
    return {**e, "MFNET_TEST_RESUME": str(resume)} if resume else e


@contextlib.contextmanager
def _tmpfs(path: Path, size: str, read_only: bool = False):
    """A small (or read-only) file system at `path`; skips where none can be mounted."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root on Linux")
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# --------------------------------------------------------------------------- 1. --overwrite


def test_marker_lists_the_files_and_modes_follow_the_umask(tmp_path):
    """Not 0700 from mkdtemp: the folder and files get what the user's umask allows."""
    old = os.umask(0o027)
    try:
        out = _fake_result(tmp_path / "out")
    finally:
        os.umask(old)
    marker = rf.read_marker(out)
    assert marker["tool"] == "mfnet" and marker["files"] == ["report.json", "rig.npz"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o640}
    old = os.umask(0o002)
    try:
        _fake_result(tmp_path / "wide")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "wide").stat().st_mode) == 0o775
    assert _hidden(tmp_path) == []


def test_overwrite_replaces_an_mfnet_result_and_an_empty_folder(tmp_path):
    out = _fake_result(tmp_path / "out", "one")
    with rf.atomic_folder(out, overwrite=True) as tmp:
        (tmp / "rig.npz").write_text("two")
    assert (out / "rig.npz").read_text() == "two" and not (out / "report.json").exists()
    (tmp_path / "empty").mkdir()
    with rf.atomic_folder(tmp_path / "empty", overwrite=True) as tmp:
        (tmp / "rig.npz").write_text("x")
    assert rf.read_marker(tmp_path / "empty")["files"] == ["rig.npz"]
    assert _hidden(tmp_path) == []


def _case_foreign(tmp_path: Path, photo: Path) -> tuple[Path, Path, Path | None]:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    return out, photo, None


def _case_extra_file(tmp_path: Path, photo: Path) -> tuple[Path, Path, Path | None]:
    out = _fake_result(tmp_path / "out")
    (out / "scene.blend").write_text("the user's own scene")
    return out, photo, None


def _case_extra_folder(tmp_path: Path, photo: Path) -> tuple[Path, Path, Path | None]:
    out = _fake_result(tmp_path / "out")
    (out / "renders").mkdir()
    return out, photo, None


def _case_fake_marker(tmp_path: Path, photo: Path) -> tuple[Path, Path, Path | None]:
    out = tmp_path / "out"
    out.mkdir()
    (out / rf.MARKER).write_text('{"tool": "someone else", "files": []}')
    (out / "notes.txt").write_text("mine")
    return out, photo, None


def _case_symlink(tmp_path: Path, photo: Path) -> tuple[Path, Path, Path | None]:
    real = _fake_result(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real)
    return link, photo, None


def _case_dangling_symlink(tmp_path: Path, photo: Path) -> tuple[Path, Path, Path | None]:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    return link, photo, None


def _case_photos_folder(tmp_path: Path, photo: Path) -> tuple[Path, Path, Path | None]:
    out = _fake_result(tmp_path / "out")
    inside = Path(shutil.copy(photo, out / "overlay_front.png"))  # even under a result's name
    marker = json.loads((out / rf.MARKER).read_text())
    marker["files"].append("overlay_front.png")
    (out / rf.MARKER).write_text(json.dumps(marker))
    return out, inside, None


def _case_photos_parent(tmp_path: Path, photo: Path) -> tuple[Path, Path, Path | None]:
    out = tmp_path / "shoot"
    (out / "day1").mkdir(parents=True)
    return out, Path(shutil.copy(photo, out / "day1" / "front.jpg")), None


def _case_current_folder(tmp_path: Path, photo: Path) -> tuple[Path, Path, Path | None]:
    out = _fake_result(tmp_path / "out")
    return Path("."), photo, out


def _case_parent_of_current(tmp_path: Path, photo: Path) -> tuple[Path, Path, Path | None]:
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    return Path(".."), photo, work / "sub"


@pytest.mark.parametrize(
    "case, needle",
    [
        (_case_foreign, "not an mfnet result folder"),
        (_case_extra_file, "'scene.blend', which mfnet did not write"),
        (_case_extra_folder, "'renders', which mfnet did not write"),
        (_case_fake_marker, "not an mfnet result folder"),
        (_case_symlink, "symbolic link"),
        (_case_dangling_symlink, "symbolic link"),
        (_case_photos_folder, "holds the input photo"),
        (_case_photos_parent, "holds the input photo"),
        (_case_current_folder, "current folder"),
        (_case_parent_of_current, "current folder"),
    ],
    ids=lambda v: v.__name__[6:] if callable(v) else None,
)
def test_overwrite_refuses_anything_but_an_mfnet_result(tmp_path, photo, env, case, needle):
    """One line, exit 2, before torch loads; everything left as it was."""
    out, photo_arg, cwd = case(tmp_path, photo)
    before = {
        str(p): (p.is_symlink(), p.read_bytes() if p.is_file() else None)
        for p in sorted(tmp_path.rglob("*"))
    }
    rc, heavy, err = _probe(_args(photo_arg, out, "--overwrite"), env, cwd=cwd)
    assert rc == 2 and heavy == [], err
    assert needle in _one_line(err, "mfnet: error: ")
    after = {
        str(p): (p.is_symlink(), p.read_bytes() if p.is_file() else None)
        for p in sorted(tmp_path.rglob("*"))
    }
    assert after == before


def test_the_library_refuses_too(tmp_path, monkeypatch):
    """reconstruct() (and anything else writing a result) goes through the same checks."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "a.txt").write_text("x")
    with pytest.raises(MfnetError, match="not an mfnet result"):
        rf.claim_destination(out, overwrite=True)
    with pytest.raises(MfnetError, match="not an mfnet result"):
        with rf.atomic_folder(out, overwrite=True):
            pass
    monkeypatch.chdir(out)
    with pytest.raises(MfnetError, match="current folder"):
        rf.check_destination(Path("."), overwrite=True)
    assert (out / "a.txt").read_text() == "x" and _hidden(tmp_path) == []


# --------------------------------------------------------------------------- 2. claimed at once


def test_a_claimed_folder_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path):
    out = tmp_path / "out"
    with rf.claim_destination(out, overwrite=False):
        with pytest.raises(MfnetError, match="another mfnet run .pid \\d+. is writing"):
            rf.claim_destination(out, overwrite=False)
    assert _hidden(tmp_path) == []
    # a lock file left by a killed run (no process holds it) does not block
    (tmp_path / ".out.lock").write_text(json.dumps({"tool": "mfnet", "pid": 2**22 + 7}))
    (tmp_path / ".out.partial-abc").mkdir()
    with rf.atomic_folder(out) as tmp:
        (tmp / "rig.npz").write_text("x")
    assert rf.read_marker(out) is not None and _hidden(tmp_path) == []


def test_killed_between_the_renames_the_old_result_comes_back(tmp_path):
    """SIGKILL cannot be deferred: the next run into OUT puts the whole old result back."""
    out = _fake_result(tmp_path / "out", "old")
    os.replace(out, tmp_path / ".out.old-12345")
    (tmp_path / ".out.partial-xyz").mkdir()
    with pytest.raises(MfnetError, match="already exists"):
        rf.claim_destination(out, overwrite=False)
    assert (out / "rig.npz").read_text() == "old" and _hidden(tmp_path) == []


@pytest.mark.slow  # ~20-30 s on 2 cores
def test_two_runs_into_one_folder_exactly_one_wins(tmp_path, photo, env):
    """Two real processes: the second, started while the first writes, says why it stops."""
    out, resume = tmp_path / "out", tmp_path / "resume"
    first = Child(_args(photo, out), env, _pause("export", resume))
    first.wait_pause("export")
    second = _run(_args(photo, out), env)
    resume.touch()
    rc, err = first.finish()
    assert rc == 0, err
    assert second.returncode == 2, second.stderr
    line = _one_line(second.stderr, "mfnet: error: ")
    assert f"another mfnet run (pid {first.proc.pid}) is writing" in line
    assert "landmarks" not in second.stdout  # stopped before any work
    _whole(out)
    resume.unlink()
    assert _hidden(tmp_path) == []


# --------------------------------------------------------------------------- 3. before any work


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--expressions", "-1"], "--expressions: must be from 0 to 400, not -1"),
        (["--expressions", "100000"], "--expressions: must be from 0 to 400"),
        (["--expressions", "ten"], "--expressions: 'ten' is not a whole number"),
    ],
)
def test_out_of_range_numbers_are_argument_errors(tmp_path, photo, env, extra, needle):
    rc, heavy, err = _probe([*_args(photo, tmp_path / "out"), *extra], env)
    assert rc == 2 and heavy == [] and needle in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--image-size", "0"], "--image-size: must be from 128 to 8192"),
        (["--noise-px", "nan"], "--noise-px: must be from 0 to 100, not nan"),
        (["--noise-px", "-1"], "--noise-px: must be from 0 to 100"),
        (["--seed", "-1"], "--seed: must be from 0 to"),
    ],
)
def test_demo_numbers_are_checked_too(env, argv, needle):
    rc, heavy, err = _probe(["demo", *argv], env)
    assert rc == 2 and heavy == [] and needle in err


def test_a_read_only_parent_is_refused_before_any_work(tmp_path, photo, env):
    parent = tmp_path / "ro"
    if os.geteuid() == 0:
        ctx = _tmpfs(parent, "1m", read_only=True)
    else:
        parent.mkdir()
        parent.chmod(0o555)
        ctx = contextlib.nullcontext(parent)
    try:
        with ctx:
            rc, heavy, err = _probe(_args(photo, parent / "sub" / "out"), env)
            assert rc == 2 and heavy == [], err
            line = _one_line(err, "mfnet: error: ")
            assert f"cannot write to {parent}" in line, line
            assert list(parent.iterdir()) == []
    finally:
        if os.geteuid() != 0:
            parent.chmod(0o755)


def test_too_little_free_space_is_refused_before_any_work(tmp_path, photo, env):
    with pytest.raises(MfnetError, match="not enough free space .* needed, .* free"):
        rf.check_destination(tmp_path / "out", False, needed_bytes=10**18)
    with _tmpfs(tmp_path / "small", "256k") as small:
        rc, heavy, err = _probe(_args(photo, small / "out"), env)
        assert rc == 2 and heavy == [], err
        assert "not enough free space" in _one_line(err, "mfnet: error: ")
        assert list(small.iterdir()) == []


def test_a_write_error_is_one_line_and_leaves_the_old_result(tmp_path):
    out = _fake_result(tmp_path / "out", "old")
    before = _snapshot(out)
    with pytest.raises(MfnetError) as e:
        with rf.atomic_folder(out, overwrite=True) as tmp:
            (tmp / "rig.npz").write_text("new")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "texture.png"))
    assert (
        str(e.value)
        == f"could not write the result to {out}: the disk is full; nothing was written"
    )
    assert e.value.__cause__ is None and e.value.__suppress_context__
    assert _snapshot(out) == before and _hidden(tmp_path) == []


def test_disk_full_while_writing_is_one_line_and_leaves_nothing(tmp_path, photo, env):
    """A real full disk: the run passes the free-space check, then the disk fills up."""
    with _tmpfs(tmp_path / "disk", "32m") as disk:
        out = _fake_result(disk / "out", "old")
        before = _snapshot(out)
        resume = tmp_path / "resume"
        child = Child(_args(photo, out, "--overwrite"), env, _pause("partial", resume))
        child.wait_pause("partial")
        with open(disk / "filler", "wb") as f:  # fill the disk up to its last bytes
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        resume.touch()
        rc, err = child.finish()
        assert rc == 2, err
        assert "the disk is full; nothing was written" in _one_line(err, "mfnet: error: ")
        assert _snapshot(out) == before
        assert _hidden(disk) == []


# --------------------------------------------------------------------------- 4. signals

SIGNALS = [s for s in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, s)]


@pytest.mark.parametrize("name", SIGNALS)
def test_a_signal_during_the_work_ends_the_run_cleanly(tmp_path, photo, env, name):
    signum = getattr(signal, name)
    out = tmp_path / "out"
    child = Child(_args(photo, out), env)
    child.wait_stage("fit")
    child.proc.send_signal(signum)
    rc, err = child.finish()
    assert rc == 128 + signum, err
    line = _one_line(err, f"mfnet: cancelled by {name}; ")
    assert "nothing was written" in line
    assert not out.exists() and _hidden(tmp_path) == []


@pytest.mark.parametrize("name", ["SIGHUP", "SIGINT"])
def test_a_signal_while_the_files_are_written_keeps_the_old_result(tmp_path, photo, env, name):
    signum = getattr(signal, name)
    out = _fake_result(tmp_path / "out", "old")
    before = _snapshot(out)
    child = Child(_args(photo, out, "--overwrite"), env, _pause("export"))
    child.wait_pause("export")
    assert rf.leftovers(out), "the partial folder should be there while it is written"
    child.proc.send_signal(signum)
    rc, err = child.finish()
    assert rc == 128 + signum, err
    assert "nothing was written" in _one_line(err, f"mfnet: cancelled by {name}; ")
    assert _snapshot(out) == before and _hidden(tmp_path) == []


def test_a_signal_between_the_renames_lands_the_new_result(tmp_path, photo, env):
    """The swap cannot be split: the signal is acted on after it, and the line says that
    the new result is complete (not "nothing was written")."""
    out, resume = _fake_result(tmp_path / "out", "old"), tmp_path.parent / f"{tmp_path.name}-go"
    child = Child(_args(photo, out, "--overwrite"), env, _pause("swap", resume))
    child.wait_pause("swap")
    assert not out.exists()  # between the renames: the old result is aside, the new not in
    child.proc.send_signal(signal.SIGTERM)
    resume.touch()
    rc, err = child.finish()
    resume.unlink()
    assert rc == 128 + signal.SIGTERM, err
    line = _one_line(err, "mfnet: cancelled by SIGTERM; ")
    assert f"the new result in {out} is complete" in line
    _whole(out)
    assert _hidden(tmp_path) == []


def test_an_interrupt_that_a_library_turns_into_another_error_still_exits_128_n(
    tmp_path, photo, env
):
    """pybind11 turns a KeyboardInterrupt raised while `import dlib` initialises into an
    ImportError, which the landmark code reports as "dlib is not installed" (exit 2 on the
    add-on's Cancel, test_blender_batch). The run must still say it was interrupted."""
    fake = tmp_path / "fake"
    (fake / "dlib").mkdir(parents=True)
    (fake / "dlib" / "__init__.py").write_text(
        "import signal, time\n"
        "try:  # what pybind11's module initialisation does with a Python exception\n"
        "    signal.raise_signal(signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "except BaseException as e:\n"
        "    raise ImportError('initialization failed') from e\n"
    )
    e = {**env, "PYTHONPATH": os.pathsep.join([str(fake), env["PYTHONPATH"]])}
    out = tmp_path / "out"
    proc = _run(_args(photo, out, "--landmarks", "dlib"), e)
    assert proc.returncode == 130, proc.stderr
    assert "nothing was written" in _one_line(proc.stderr, "mfnet: cancelled by SIGINT; ")
    assert not out.exists() and _hidden(tmp_path) == []


def test_deferred_signals_reach_the_previous_handler_after_the_block():
    got: list[int] = []

    def handler(signum, frame):
        got.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with rf.signals_deferred():
                signal.raise_signal(signal.SIGTERM)
                assert got == []  # held inside the block
        assert got == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_add_on_tidies_what_a_killed_backend_left(tmp_path):
    """cancel() kills a backend that ignores the interrupt; what it left is tidied: the
    partial folder goes, the result it was replacing comes back, its lock goes."""
    from blender_addon import backend

    out = _fake_result(tmp_path / "out", "old")
    os.replace(out, tmp_path / ".out.old-4242")
    (tmp_path / ".out.partial-k1").mkdir()
    (tmp_path / ".out.lock").write_text(json.dumps({"tool": "mfnet", "pid": 4242}))
    assert backend.unique_folder(tmp_path, "out") == tmp_path / "out_2"  # being written
    backend.tidy_after(out, pid=4242)
    assert (out / "rig.npz").read_text() == "old" and _hidden(tmp_path) == []
    # another run's lock is not ours to remove
    (tmp_path / ".out.lock").write_text(json.dumps({"tool": "mfnet", "pid": 1}))
    backend.tidy_after(out, pid=4242)
    assert _hidden(tmp_path) == [".out.lock"]


def test_space_estimate_counts_the_second_texture():
    """--texture both writes texture_shaded.png too: the disk check asks for its room."""
    from mfnet_core.outputs.result_folder import estimate_result_bytes

    one = estimate_result_bytes(26719, 53, 2048, [(1024, 1024)] * 3)
    two = estimate_result_bytes(26719, 53, 2048, [(1024, 1024)] * 3, textures=2)
    assert two - one == 2048 * 2048 * 3 // 4
