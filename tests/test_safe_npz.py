import pickle

import numpy as np
import pytest

from data_fixtures import RunsCode

from rtpca_jax.data.safe_npz import load_npz, save_npz_deterministic


def test_hostile_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_3d_h36m.npz"
    payload = np.empty((), dtype=object)
    payload[()] = {"S1": {"Walking": RunsCode(marker)}}
    np.savez(path, positions_3d=payload)
    # numpy's own loader would run it:
    with pytest.raises(ValueError, match=r"refusing to load .*system"):
        load_npz(path)
    assert not marker.exists()
    np.load(path, allow_pickle=True)["positions_3d"]
    assert marker.exists(), "the fixture really is hostile"


def test_nested_dicts_of_arrays_load(tmp_path):
    path = tmp_path / "ok.npz"
    d = {"S1": {"A": [np.arange(6.0).reshape(2, 3), np.ones(2)]}, "meta": ("x", 1, 2.5, None)}
    np.savez_compressed(path, positions_2d=np.array(d, dtype=object), plain=np.arange(4))
    out = load_npz(path, required=("positions_2d", "plain"))
    got = out["positions_2d"].item()
    np.testing.assert_array_equal(got["S1"]["A"][0], d["S1"]["A"][0])
    assert got["meta"] == ("x", 1, 2.5, None)
    np.testing.assert_array_equal(out["plain"], np.arange(4))


def test_missing_file_key_and_non_npz(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        load_npz(tmp_path / "nope.npz")
    np.savez(tmp_path / "a.npz", x=np.ones(1))
    with pytest.raises(ValueError, match=r"a\.npz: missing key\(s\) \['positions_3d'\]"):
        load_npz(tmp_path / "a.npz", required=("positions_3d",))
    (tmp_path / "b.npz").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not an .npz"):
        load_npz(tmp_path / "b.npz")


def test_deterministic_writer_is_byte_stable_and_readable(tmp_path):
    arrays = {"b": np.arange(5, dtype=np.int64), "a": np.ones((2, 3), np.float32), "s": np.array(["x", "yz"]),
              "scalar": np.array(60.0)}
    save_npz_deterministic(tmp_path / "1.npz", arrays)
    save_npz_deterministic(tmp_path / "2.npz", dict(reversed(list(arrays.items()))))
    assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "2.npz").read_bytes()
    back = np.load(tmp_path / "1.npz")
    for k, v in arrays.items():
        np.testing.assert_array_equal(back[k], v)
        assert back[k].shape == v.shape
