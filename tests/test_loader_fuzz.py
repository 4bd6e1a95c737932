"""Fuzz of the model loaders (issue 14): a few thousand damaged files - random truncations,
bit flips, overwritten and deleted runs, wrong dtypes and shapes - through the FLAME .pkl
and .npz loader (with its landmark, UV and mask side files, the same format the test head
is written in) and the checkpoint loader. Every case must load or raise an MfnetError:
no other exception, no hang. Seeded, so a failure names a case that can be replayed.
"""

from __future__ import annotations

import faulthandler
import io
import pickle
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from test_bounded_loaders import TINY, model_bytes, tiny_checkpoint, tiny_model, write_tiny

from mfnet_core.errors import MfnetError
from mfnet_core.head.flame import load_flame_assets
from mfnet_core.network.checkpoints import load_checkpoint

SEED = 14
SLOWEST_CASE_S = 10.0  # a loader that takes longer than this is as good as hung


@pytest.fixture(autouse=True)
def _hang_guard():
    """A hung loader ends the run with a traceback of where it hangs, not a stuck CI job."""
    faulthandler.dump_traceback_later(240, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One random damage to `data`, and its description."""
    n = len(data)
    kind = int(rng.integers(0, 5))
    b = bytearray(data)
    if kind == 0:
        cut = int(rng.integers(0, n))
        return bytes(b[:cut]), f"truncated at {cut}"
    if kind == 1:
        pos = rng.integers(0, n, size=int(rng.integers(1, 9)))
        for p in pos:
            b[p] ^= 1 << int(rng.integers(0, 8))
        return bytes(b), f"bits flipped at {sorted(int(p) for p in pos)}"
    if kind == 2:
        p, k = int(rng.integers(0, n)), int(rng.integers(1, 17))
        b[p : p + k] = rng.integers(0, 256, size=len(b[p : p + k]), dtype=np.uint8).tobytes()
        return bytes(b), f"{k} bytes overwritten at {p}"
    if kind == 3:
        p, k = int(rng.integers(0, n)), int(rng.integers(1, 65))
        del b[p : p + k]
        return bytes(b), f"{k} bytes deleted at {p}"
    # a byte that often means something: a size field pushed to an extreme
    p = int(rng.integers(0, max(1, n - 4)))
    b[p : p + 4] = bytes([0xFF, 0xFF, 0xFF, 0x7F])
    return bytes(b), f"0x7fffffff written at {p}"


def wrong_value(a: np.ndarray, rng: np.random.Generator) -> tuple[object, str]:
    """A model array replaced by one of the wrong things a broken converter writes."""
    options: list[tuple[Callable[[], object], str]] = [
        (lambda: a.astype(np.int8), "int8"),
        (lambda: a.astype(bool), "bool"),
        (lambda: a.astype(np.complex64), "complex"),
        (lambda: a.astype(np.float16), "float16"),
        (lambda: a.astype(str), "strings"),
        (lambda: a.T.copy(), "transposed"),
        (lambda: a.reshape(-1), "flattened"),
        (lambda: a[:0], "empty"),
        (lambda: a[..., None], "extra axis"),
        (lambda: np.full_like(a, np.nan, dtype=np.float64), "all NaN"),
        (lambda: np.full(a.shape, 2**40, dtype=np.int64), "huge ints"),
        (lambda: np.float64(1.0), "a scalar"),
        (lambda: np.array(None, dtype=object), "object None"),
        (lambda: np.array([a, "x"], dtype=object), "object mix"),
    ]
    make, what = options[int(rng.integers(0, len(options)))]
    with np.errstate(all="ignore"):
        try:
            return make(), what
        except (IndexError, ValueError):  # e.g. slicing a 0-d array
            return np.array([[1.0]]), "a (1,1) array"


class Cases:
    """Runs loader calls and records anything that is not an MfnetError."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.loaded = 0
        self.failures: list[str] = []
        self.slowest = (0.0, "")

    def run(self, what: str, call: Callable[[], object]) -> None:
        self.count += 1
        t = time.perf_counter()
        try:
            with np.errstate(all="ignore"):
                call()
            self.loaded += 1
        except MfnetError as e:
            if "\n" in str(e):
                self.failures.append(f"{what}: multi-line message {str(e)!r}")
        except Exception as e:  # noqa: BLE001 - exactly what this test looks for
            tb = traceback.extract_tb(e.__traceback__)[-1]
            self.failures.append(
                f"{what}: {type(e).__name__}: {str(e)[:160]} at {tb.filename}:{tb.lineno}"
            )
        dt = time.perf_counter() - t
        if dt > self.slowest[0]:
            self.slowest = (dt, what)

    def check(self, min_cases: int) -> None:
        print(
            f"{self.name}: {self.count} cases, {self.loaded} loaded, slowest "
            f"{self.slowest[0]:.3f} s ({self.slowest[1]})"
        )
        assert self.count >= min_cases
        assert not self.failures, f"{len(self.failures)} failures:\n" + "\n".join(
            self.failures[:15]
        )
        assert self.slowest[0] < SLOWEST_CASE_S, self.slowest


def _fuzz_file(
    cases: Cases, path: Path, good: bytes, load: Callable[[], object], n: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        data, what = mutate(good, rng)
        path.write_bytes(data)
        cases.run(f"{path.name} case {i} ({what})", load)
    path.write_bytes(good)


@pytest.mark.parametrize("fmt,n", [("pkl", 450), ("pkl2", 450), ("npz", 600)])
def test_fuzz_model_file_bytes(tmp_path, fmt, n):
    path = write_tiny(tmp_path, fmt)
    good = path.read_bytes()
    load_flame_assets(path)  # the undamaged file loads
    cases = Cases(f"model .{fmt} bytes")
    _fuzz_file(cases, path, good, lambda: load_flame_assets(path), n, SEED + len(fmt))
    cases.check(n)


@pytest.mark.parametrize("fmt", ["pkl", "npz"])
def test_fuzz_model_wrong_dtypes_and_shapes(tmp_path, fmt):
    path = write_tiny(tmp_path, fmt)
    base = tiny_model()
    keys = [k for k in base if k != "mfnet_test_head"]
    rng = np.random.default_rng(SEED + 1)
    cases = Cases(f"model .{fmt} wrong values")
    for i in range(200):
        model = dict(base)
        key = keys[int(rng.integers(0, len(keys)))]
        value, what = wrong_value(np.asarray(model[key]), rng)
        model[key] = value
        try:
            path.write_bytes(model_bytes(model, fmt))
        except Exception:  # noqa: BLE001 - numpy cannot even write some of these
            continue
        cases.run(f"case {i}: {key} as {what}", lambda: load_flame_assets(path))
    cases.check(150)


@pytest.mark.parametrize(
    "name,n", [("landmark_embedding.npy", 300), ("texture.npz", 300), ("masks.pkl", 200)]
)
def test_fuzz_side_files(tmp_path, name, n):
    path = write_tiny(tmp_path, "pkl")
    side = tmp_path / name
    cases = Cases(name)
    _fuzz_file(cases, side, side.read_bytes(), lambda: load_flame_assets(path), n, SEED + n)
    cases.check(n)


def test_fuzz_checkpoint_bytes(tmp_path):
    path = tmp_path / "ck.pt"
    torch.save(tiny_checkpoint(), path)
    load_checkpoint(path)
    cases = Cases("checkpoint bytes")
    _fuzz_file(cases, path, path.read_bytes(), lambda: load_checkpoint(path), 500, SEED + 7)
    cases.check(500)


def test_fuzz_checkpoint_wrong_values(tmp_path):
    path = tmp_path / "ck.pt"
    rng = np.random.default_rng(SEED + 8)
    base = tiny_checkpoint()
    state = base["model"]
    keys = list(state)
    cfg_keys = list(TINY.to_dict())
    odd = [None, "x", -1, 0, 2**70, 1.5, float("inf"), [], {}, True, (1, 2), b"\x00"]
    cases = Cases("checkpoint wrong values")
    for i in range(200):
        ck = dict(base)
        if rng.uniform() < 0.5:
            k = keys[int(rng.integers(0, len(keys)))]
            st = dict(state)
            value, what = wrong_value(st[k].numpy(), rng)
            try:
                st[k] = torch.from_numpy(np.asarray(value))
            except Exception:  # noqa: BLE001 - not convertible: store it as it is
                st[k] = value
            ck["model"] = st
            desc = f"model[{k}] as {what}"
        else:
            cfg = dict(TINY.to_dict())
            k = cfg_keys[int(rng.integers(0, len(cfg_keys)))]
            cfg[k] = odd[int(rng.integers(0, len(odd)))]
            ck["model_config"] = cfg
            desc = f"model_config[{k}] = {cfg[k]!r}"
        buf = io.BytesIO()
        try:
            torch.save(ck, buf)
        except (pickle.PicklingError, TypeError, RuntimeError):
            continue
        path.write_bytes(buf.getvalue())
        cases.run(f"case {i}: {desc}", lambda: load_checkpoint(path))
    cases.check(150)
