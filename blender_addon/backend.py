"""Talking to the backend (`<python> -m mfnet_core ...`) as a child process. No bpy here.

The add-on never imports torch or mfnet_core: it finds a Python where `import mfnet_core`
works, starts `reconstruct ... --progress jsonl`, reads one JSON object per stdout line on
a background thread, and cancels by interrupting the child's process group (the backend
then removes its temporary folder and exits with 130; see
mfnet_core.outputs.result_folder.atomic_folder). A child that had to be killed is tidied up
after: its partial folder removed, a result it was replacing put back, its lock removed.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ENV_PYTHON = "MFNET_PYTHON"
MODULE = "mfnet_core"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
VIEW_ORDER = ("left", "front", "right")


class BackendError(RuntimeError):
    """The backend could not be found, started, or it reported a failure."""


@dataclass
class BackendPython:
    path: str
    source: str  # "preference", "MFNET_PYTHON", "PATH"
    version: str  # mfnet_core.__version__


def _no_window_flags() -> int:
    return getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0


def child_env() -> dict[str, str]:
    """Environment for the backend: ours, unbuffered, without Blender's Python home."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONHOME", None)
    return env


def probe_python(path: str, timeout: float = 30.0) -> tuple[bool, str]:
    """(True, mfnet_core version) when `import mfnet_core` works in that Python, else
    (False, why)."""
    exe = shutil.which(path) or path
    if not exe or not Path(exe).exists():
        return False, f"{path}: no such file"
    code = "import mfnet_core, sys; print(mfnet_core.__version__)"
    try:
        proc = subprocess.run(
            [exe, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(),
            creationflags=_no_window_flags(),
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{path}: could not run ({e})"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["import failed"])[-1]
        return False, f"{path}: mfnet_core is not importable ({last})"
    return True, proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "?"


def candidate_pythons(preference: str = "") -> list[tuple[str, str]]:
    """[(path, where it came from)] in the order they are tried."""
    out: list[tuple[str, str]] = []
    if preference.strip():
        out.append((os.path.expanduser(preference.strip()), "preference"))
    env = os.environ.get(ENV_PYTHON, "").strip()
    if env:
        out.append((os.path.expanduser(env), ENV_PYTHON))
    for name in ("python3", "python"):
        found = shutil.which(name)
        if found and all(Path(found) != Path(p) for p, _ in out):
            out.append((found, "PATH"))
    return out


def find_backend_python(preference: str = "", timeout: float = 30.0) -> BackendPython:
    """The first candidate where mfnet_core imports. A preference that is set but broken
    is an error (never silently replaced by another Python)."""
    tried = []
    for path, source in candidate_pythons(preference):
        ok, info = probe_python(path, timeout)
        if ok:
            return BackendPython(path=shutil.which(path) or path, source=source, version=info)
        if source == "preference":
            raise BackendError(f"Backend Python from the preferences does not work: {info}")
        tried.append(info)
    hint = (
        "Set the backend Python in the add-on preferences (a Python where `pip install mfnet` "
        f"was run), or set the {ENV_PYTHON} environment variable."
    )
    detail = "; ".join(tried) if tried else "no python3/python on PATH"
    raise BackendError(f"No Python with mfnet_core found ({detail}). {hint}")


def doctor(python: str, flame: str = "", timeout: float = 120.0) -> dict:
    """Runs `<python> -m mfnet_core doctor --json` and returns its JSON answer."""
    cmd = [python, "-m", MODULE, "doctor", "--json"]
    if flame:
        cmd += ["--flame", flame]
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(),
            creationflags=_no_window_flags(),
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BackendError(f"could not run {python} -m {MODULE} doctor: {e}") from e
    try:
        start = proc.stdout.index("{")
        return json.loads(proc.stdout[start:])
    except ValueError:
        tail = (
            proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}"
        ).splitlines()[-1]
        raise BackendError(f"doctor gave no JSON answer: {tail}") from None


def summarize_doctor(report: dict) -> list[str]:
    """Human-readable lines from a doctor report (one per checked item)."""
    lines = []
    for item in report.get("items", []):
        mark = "OK" if item.get("ok") else ("optional" if item.get("optional") else "MISSING")
        text = f"{mark}: {item.get('name', '?')}: {item.get('detail', '')}"
        lines.append(text)
        if not item.get("ok") and item.get("fix"):
            lines.append(f"    fix: {item['fix']}")
    if not lines:
        lines = [f"{k}: {v}" for k, v in report.items() if not isinstance(v, (list, dict))]
    return lines


def order_photos(photos: dict[str, str]) -> tuple[list[str], list[str]]:
    """{"left": path|"" , "front": ..., "right": ...} -> (paths, view labels) for the views
    that are set, in left, front, right order."""
    paths, views = [], []
    for view in VIEW_ORDER:
        p = photos.get(view) or ""
        if p:
            paths.append(p)
            views.append(view)
    return paths, views


def photos_in_folder(folder: Path) -> tuple[list[str], list[str] | None]:
    """A person's folder -> (photo paths, view labels or None). Files whose names contain
    left/front/right get those labels (in that order); otherwise all photos, sorted by name."""
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES
    )
    named: dict[str, Path] = {}
    for p in files:
        stem = p.stem.lower()
        hits = [v for v in VIEW_ORDER if v in stem]
        if len(hits) == 1 and hits[0] not in named:
            named[hits[0]] = p
    if named and len(named) == len(files):
        views = [v for v in VIEW_ORDER if v in named]
        return [str(named[v]) for v in views], views
    return [str(p) for p in files], None


def reconstruct_command(
    python: str,
    photos: list[str],
    output: str,
    *,
    views: list[str] | None = None,
    flame: str = "",
    device: str = "auto",
    texture_size: int = 1024,
    expressions: int = 50,
    overwrite: bool = False,
) -> list[str]:
    """The backend command line (see README: `mfnet reconstruct`)."""
    if not photos:
        raise BackendError("no photos given: pick at least one of left, front, right")
    cmd = [python, "-m", MODULE, "reconstruct", *photos, "-o", output, "--progress", "jsonl"]
    if flame:
        cmd += ["--flame", flame]
    cmd += [
        "--device",
        device,
        "--texture-size",
        str(int(texture_size)),
        "--expressions",
        str(int(expressions)),
    ]
    if views:
        cmd += ["--views", ",".join(views)]
    if overwrite:
        cmd.append("--overwrite")
    return cmd


def parse_progress_line(line: str) -> dict | None:
    """One stdout line -> {"stage", "fraction", "message", ...} or None when it is not a
    progress object (other output is ignored)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict) or "stage" not in obj:
        return None
    obj["stage"] = str(obj["stage"])
    try:
        obj["fraction"] = min(1.0, max(0.0, float(obj.get("fraction", 0.0))))
    except (TypeError, ValueError):
        obj["fraction"] = 0.0
    obj["message"] = str(obj.get("message", ""))
    return obj


def _siblings(output: str | Path, kind: str) -> list[Path]:
    out = Path(output)
    if not out.parent.is_dir():
        return []
    return sorted(out.parent.glob(f"{glob.escape('.' + out.name)}.{kind}-*"))


def partial_folders(output: str | Path) -> list[Path]:
    """Temporary siblings the backend writes before renaming into place."""
    return _siblings(output, "partial")


def old_results(output: str | Path) -> list[Path]:
    """An existing result the backend moved aside while it swaps in the new one (present
    only between two renames; left behind only by a killed backend)."""
    return _siblings(output, "old")


def lock_path(output: str | Path) -> Path:
    """The lock a running backend holds beside its output folder."""
    out = Path(output)
    return out.parent / f".{out.name}.lock"


def tidy_after(output: str | Path, pid: int | None = None) -> None:
    """After a backend writing `output` has ended, however it ended (killed included):
    partial folders go, a result it was replacing comes back when the new one is not in
    place, and its lock file goes when it held it (`pid`)."""
    out = Path(output)
    for p in partial_folders(out):
        shutil.rmtree(p, ignore_errors=True)
    for p in old_results(out):
        if not out.exists() and not out.is_symlink():
            try:
                os.replace(p, out)
                continue
            except OSError:
                pass
        if out.is_dir():
            shutil.rmtree(p, ignore_errors=True)
    lock = lock_path(out)
    if pid is not None and lock.is_file() and not lock.is_symlink():
        try:
            owner = json.loads(lock.read_text(encoding="utf-8")).get("pid")
        except (OSError, ValueError, AttributeError):
            owner = None
        if owner == pid:
            try:
                lock.unlink()
            except OSError:
                pass


def unique_folder(parent: Path, name: str) -> Path:
    """parent/name, or parent/name_2, name_3, ... when taken (or being written)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("._") or "head"
    candidate = parent / safe
    n = 2
    while (
        candidate.exists()
        or candidate.is_symlink()
        or partial_folders(candidate)
        or old_results(candidate)
        or lock_path(candidate).exists()
    ):
        candidate = parent / f"{safe}_{n}"
        n += 1
    return candidate


@dataclass
class JobState:
    stage: str = "starting"
    fraction: float = 0.0
    message: str = ""
    result_dir: str = ""
    error: str = ""
    done: bool = False
    returncode: int | None = None
    events: list[dict] = field(default_factory=list)


class BackendJob:
    """A running `reconstruct` child. poll() never blocks; cancel() ends it cleanly."""

    def __init__(self, cmd: list[str], output: str | Path) -> None:
        self.cmd = cmd
        self.output = Path(output)
        self.state = JobState()
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self.cancelled = False
        kwargs: dict = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | _no_window_flags()
        else:
            kwargs["start_new_session"] = True
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                env=child_env(),
                **kwargs,
            )
        except OSError as e:
            raise BackendError(f"could not start the backend ({cmd[0]}): {e}") from e
        self._threads = [
            threading.Thread(
                target=self._pump, args=(self.proc.stdout, self._lines.put), daemon=True
            ),
            threading.Thread(
                target=self._pump, args=(self.proc.stderr, self._stderr.append), daemon=True
            ),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream, sink) -> None:
        for line in iter(stream.readline, ""):
            sink(line)
        stream.close()

    def poll(self) -> JobState:
        """Takes what the child printed so far; sets state.done when it has ended."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            ev = parse_progress_line(line or "")
            if ev is None:
                continue
            self.state.events.append(ev)
            if ev["stage"] == "error":
                self.state.error = ev["message"] or "the backend reported an error"
            elif ev["stage"] == "done":
                self.state.result_dir = str(ev.get("result_dir", ""))
                self.state.fraction = 1.0
                self.state.stage = "done"
            else:
                self.state.stage, self.state.fraction, self.state.message = (
                    ev["stage"],
                    ev["fraction"],
                    ev["message"],
                )
        rc = self.proc.poll()
        if (
            rc is not None
            and not self.state.done
            and not self._threads[0].is_alive()
            and self._lines.empty()
        ):
            self._threads[1].join(timeout=1.0)
            self.state.returncode = rc
            self.state.done = True
            if self.cancelled:
                self.state.error = "cancelled"
            elif rc != 0 and not self.state.error:
                self.state.error = self.stderr_tail() or f"the backend exited with code {rc}"
            elif rc == 0 and not self.state.result_dir:
                self.state.error = "the backend finished without naming a result folder"
        return self.state

    def stderr_tail(self, lines: int = 6) -> str:
        text = [ln.rstrip() for ln in self._stderr if ln.strip()]
        return "\n".join(text[-lines:])

    def cancel(self, grace: float = 10.0) -> None:
        """Interrupts the child (the backend cleans up its temp folder and exits with 130),
        kills it after `grace` seconds, and tidies what a killed child left (`tidy_after`)."""
        self.cancelled = True
        if self.proc.poll() is None:
            try:
                if os.name == "nt":
                    self.proc.send_signal(signal.CTRL_BREAK_EVENT)
                else:
                    os.killpg(self.proc.pid, signal.SIGINT)
            except (OSError, ProcessLookupError):
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    if os.name == "nt":
                        self.proc.kill()
                    else:
                        os.killpg(self.proc.pid, signal.SIGKILL)
                except (OSError, ProcessLookupError):
                    pass
                self.proc.wait(timeout=5.0)
        for t in self._threads:
            t.join(timeout=2.0)
        tidy_after(self.output, self.proc.pid)
        self.poll()

    def wait(self, on_progress=None, should_cancel=None, interval: float = 0.1) -> JobState:
        """Blocking loop (headless use): calls on_progress(state) as lines arrive."""
        seen = 0
        while True:
            st = self.poll()
            if on_progress and len(st.events) != seen:
                seen = len(st.events)
                on_progress(st)
            if st.done:
                return st
            if should_cancel and should_cancel():
                self.cancel()
                return self.state
            time.sleep(interval)


def python_for_display(path: str) -> str:
    return path if len(path) < 60 else "..." + path[-57:]


def is_blender_python(path: str) -> bool:
    """True when `path` is the Python running this code (Blender's own)."""
    try:
        return Path(path).resolve() == Path(sys.executable).resolve()
    except OSError:
        return False
