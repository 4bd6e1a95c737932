"""The allow-list unpickler: malicious pickles are refused without running anything;
FLAME's contents (numpy, chumpy, scipy sparse, DECA's npy of torch tensors) load."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mfnet_core.errors import MfnetError, UnsafePickleError
from mfnet_core.inputs.safe_pickle import load_npy_object, load_restricted_pickle


class _Payload:
    """Unpickling this calls `func(*args)`: with a plain pickle.load, the file appears."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(target):
    t = str(target)
    return {
        "os.system": _Payload(os.system, f"touch '{t}'"),
        "subprocess": _Payload(subprocess.check_call, ["touch", t]),
        "eval": _Payload(eval, f"open({t!r}, 'w').close()"),
        "open": _Payload(open, t, "w"),
    }


@pytest.mark.parametrize("name", ["os.system", "subprocess", "eval", "open"])
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, name, protocol):
    target = tmp_path / "pwned"
    payload = {"v_template": np.zeros((3, 3)), "evil": [_payloads(target)[name]]}
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(UnsafePickleError) as err:
        load_restricted_pickle(path)
    assert not target.exists()
    msg = str(err.value)
    assert str(path) in msg and "not in the allow-list" in msg
    assert "refusing to load '" in msg


def test_the_payload_would_really_run(tmp_path):
    """Control: the same bytes through plain pickle do create the file."""
    target = tmp_path / "pwned"
    data = pickle.dumps(_payloads(target)["open"], protocol=2)
    pickle.loads(data).close()
    assert target.exists()


def test_refusal_names_the_global(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(_Payload(os.system, "true"), protocol=2))
    with pytest.raises(UnsafePickleError, match=r"'(posix|nt)\.system'"):
        load_restricted_pickle(path)


def test_numpy_arrays_scalars_and_builtins_round_trip():
    obj = {
        "a": np.arange(12, dtype=np.float64).reshape(3, 4),
        "b": np.asfortranarray(np.ones((2, 3), dtype=np.float32)),
        "c": np.float32(2.5),
        "d": np.array(["x", "yz"]),
        "e": {1, 2},
        "f": frozenset({3}),
        "g": complex(1, 2),
        "h": slice(1, 5, 2),
        "i": (1, "two", [3.0]),
    }
    for protocol in (0, 2, 4, 5):
        out = load_restricted_pickle(pickle.dumps(obj, protocol=protocol))
        np.testing.assert_array_equal(out["a"], obj["a"])
        np.testing.assert_array_equal(out["b"], obj["b"])
        assert out["c"] == obj["c"] and out["c"].dtype == np.float32
        np.testing.assert_array_equal(out["d"], obj["d"])
        assert out["e"] == obj["e"] and out["f"] == obj["f"]
        assert out["g"] == obj["g"] and out["h"] == obj["h"] and out["i"] == obj["i"]


def _with_fake_chumpy(make):
    """Runs `make()` while a fake `chumpy.ch.Ch` exists, then removes it again."""
    chumpy = types.ModuleType("chumpy")
    ch = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x)
            self._dirty_vars = {"x"}
            self.dterms = ("x",)

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    ch.Ch = Ch
    chumpy.ch = ch
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = chumpy, ch
    try:
        return make(Ch)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


@pytest.mark.parametrize("protocol", [0, 2])
def test_chumpy_objects_become_numpy_without_chumpy(protocol):
    rng = np.random.default_rng(0)
    shapedirs = rng.normal(size=(5, 3, 4))
    template = rng.normal(size=(5, 3))
    data = _with_fake_chumpy(
        lambda Ch: pickle.dumps(
            {
                "shapedirs": Ch(shapedirs),
                "v_template": Ch(template),
                "f": np.arange(6).reshape(2, 3),
            },
            protocol=protocol,
        )
    )
    assert b"chumpy" in data and "chumpy" not in sys.modules
    out = load_restricted_pickle(data, source="fake_flame.pkl")
    assert "chumpy" not in sys.modules
    assert type(out["shapedirs"]) is np.ndarray
    np.testing.assert_array_equal(out["shapedirs"], shapedirs)
    np.testing.assert_array_equal(out["v_template"], template)


def test_chumpy_without_a_value_is_an_error():
    def make(Ch):
        c = Ch([1.0])
        del c.x
        return pickle.dumps({"s": c}, protocol=2)

    with pytest.raises(MfnetError, match="fake.pkl"):
        load_restricted_pickle(_with_fake_chumpy(make), source="fake.pkl")


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("fmt", ["csc", "csr"])
def test_sparse_matrices_round_trip(protocol, fmt):
    rng = np.random.default_rng(1)
    dense = rng.normal(size=(5, 40)) * (rng.uniform(size=(5, 40)) < 0.2)
    m = sp.csc_matrix(dense) if fmt == "csc" else sp.csr_matrix(dense)
    out = load_restricted_pickle(pickle.dumps({"J_regressor": m}, protocol=protocol))["J_regressor"]
    assert out.format == fmt and out.shape == (5, 40)
    np.testing.assert_array_equal(out.toarray(), dense)


def test_old_scipy_module_path():
    """FLAME 2020 pickles name `scipy.sparse.csc.csc_matrix` (scipy < 1.8)."""
    m = sp.csc_matrix(np.eye(3))
    data = pickle.dumps(m, protocol=2)
    old = data.replace(b"scipy.sparse._csc\n", b"scipy.sparse.csc\n")
    assert old != data
    np.testing.assert_array_equal(load_restricted_pickle(old).toarray(), np.eye(3))


def test_npy_with_pickled_dict(tmp_path):
    emb = {
        "static_lmk_faces_idx": np.arange(51),
        "static_lmk_bary_coords": np.full((51, 3), 1 / 3),
        "full_lmk_faces_idx": np.arange(68)[None],
    }
    path = tmp_path / "landmark_embedding.npy"
    np.save(path, emb, allow_pickle=True)
    out = load_npy_object(path)
    assert isinstance(out, dict) and set(out) == set(emb)
    for k, v in emb.items():
        np.testing.assert_array_equal(out[k], v)


def test_npy_with_torch_tensors_like_deca(tmp_path):
    """DECA's landmark_embedding.npy holds torch tensors for the dynamic contour."""
    faces = torch.arange(79 * 17).reshape(79, 17)
    bary = torch.rand(79, 17, 3)
    path = tmp_path / "landmark_embedding.npy"
    np.save(
        path,
        {"dynamic_lmk_faces_idx": faces, "dynamic_lmk_bary_coords": bary[:, :, :]},
        allow_pickle=True,
    )
    out = load_npy_object(path)
    np.testing.assert_array_equal(out["dynamic_lmk_faces_idx"], faces.numpy())
    np.testing.assert_array_equal(out["dynamic_lmk_bary_coords"], bary.numpy())


def test_npy_plain_array_and_malicious_npy(tmp_path):
    plain = tmp_path / "a.npy"
    np.save(plain, np.arange(6, dtype=np.int32).reshape(2, 3))
    np.testing.assert_array_equal(load_npy_object(plain), np.arange(6).reshape(2, 3))
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.npy"
    arr = np.empty(1, dtype=object)
    arr[0] = _payloads(target)["open"]
    np.save(evil, arr, allow_pickle=True)
    with pytest.raises(UnsafePickleError, match="evil.npy"):
        load_npy_object(evil)
    assert not target.exists()


def test_truncated_and_missing_files(tmp_path):
    data = pickle.dumps({"a": np.arange(100)}, protocol=2)
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MfnetError, match="cut.pkl") as err:
        load_restricted_pickle(path)
    assert not isinstance(err.value, UnsafePickleError)
    with pytest.raises(MfnetError, match="nothere.pkl"):
        load_restricted_pickle(tmp_path / "nothere.pkl")
    with pytest.raises(MfnetError, match="bad.npy"):
        (tmp_path / "bad.npy").write_bytes(b"not an npy")
        load_npy_object(tmp_path / "bad.npy")


def test_codecs_encode_only_plain_text_codecs():
    # protocol-2 pickles of bytes written by Python 3 use _codecs.encode(str, 'latin1')
    out = load_restricted_pickle(pickle.dumps({"b": b"\x00\xffabc"}, protocol=2))
    assert out["b"] == b"\x00\xffabc"
    evil = pickle.dumps(b"x", protocol=2).replace(b"latin1", b"zlib__")
    with pytest.raises(MfnetError):
        load_restricted_pickle(evil)


def test_garbage_bytes_are_an_error():
    with pytest.raises(MfnetError):
        load_restricted_pickle(b"x")
