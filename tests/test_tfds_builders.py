"""Building each TFDS dataset from fixtures in the exact file layouts."""

import numpy as np
import pytest

import data_fixtures as fx

tfds = pytest.importorskip("tensorflow_datasets")
from rtpca_jax.data import tfds_builders as tb  # noqa: E402


def _build(cls, tmp_path, manual_dir=None, config=None):
    kw = {"config": config} if config else {}
    b = cls(data_dir=str(tmp_path / "tfds"), **kw)
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir or tmp_path)))
    return b


def test_h36m_builder(tmp_path):
    pos3d, _ = fx.make_h36m(tmp_path)
    b = _build(tb.H36m, tmp_path, config="gt")
    assert b.info.splits["train"].num_examples == 2 * 4  # S1: 2 actions x 4 cameras
    assert b.info.splits["test"].num_examples == 2 * 4  # S9 Walking + S11 Eating (Directions excluded)
    ex = next(iter(tfds.as_numpy(b.as_dataset(split="test"))))
    assert ex["pose2d"].shape[1:] == (17, 2) and ex["pose3d"].shape[0] == 120
    assert np.all(ex["pose3d"][:, 0] == 0)


def test_humaneva_and_3dhp_builders(tmp_path):
    (tmp_path / "he").mkdir()
    (tmp_path / "hp").mkdir()
    fx.make_humaneva(tmp_path / "he")
    b = _build(tb.Humaneva15, tmp_path / "he_out", manual_dir=tmp_path / "he")
    assert b.info.splits["train"].num_examples == 6 and b.info.splits["test"].num_examples == 5
    fx.make_3dhp(tmp_path / "hp")
    b = _build(tb.MpiInf3dhp, tmp_path / "hp_out", manual_dir=tmp_path / "hp")
    assert b.info.splits["train"].num_examples == 4 and b.info.splits["test"].num_examples == 2
    test = list(tfds.as_numpy(b.as_dataset(split="test")))
    assert sorted(int(e["valid"].sum()) for e in test) == [40, 40]


def test_cmu_mocap_builder_examples_equal_the_file_source(tmp_path):
    from rtpca_jax.data import sources
    from rtpca_jax.data.tfds_source import load_tfds

    b = _build(tb.CmuMocap, tmp_path)
    assert b.info.splits["train"].num_examples == 33 * 4
    assert b.info.splits["test"].num_examples == 6 * 4
    for split in ("train", "test"):
        got = load_tfds("cmu_mocap", str(tmp_path / "tfds"), split)
        want = sources.load("cmu", None, subjects=split)
        assert [s.key for s in got] == [s.key for s in want]  # same sequences, same order
        for g, w in zip(got, want):
            for field in ("pose2d", "pose3d", "trajectory", "intrinsics"):
                np.testing.assert_array_equal(getattr(g, field), getattr(w, field), err_msg=f"{g.key} {field}")
            assert (g.fps, g.layout, g.image_size, g.valid) == (w.fps, w.layout, w.image_size, w.valid)


def test_tfds_source_refuses_damaged_shards(tmp_path):
    from rtpca_jax.data.tfds_source import load_tfds

    b = _build(tb.CmuMocap, tmp_path)
    shard = sorted(p for p in (tmp_path / "tfds" / "cmu_mocap" / str(b.info.version)).iterdir()
                   if "test.tfrecord" in p.name)[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="CRC mismatch|corrupt record"):
        load_tfds("cmu_mocap", str(tmp_path / "tfds"), "test")
    with pytest.raises(ValueError, match="not found"):
        load_tfds("h36m/gt", str(tmp_path / "tfds"), "test")
