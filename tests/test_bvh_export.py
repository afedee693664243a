"""BVH export: written files read back through the product's own BVH reader
and forward kinematics reproduce the joints (after the documented bone-length
symmetrisation), rotate smoothly, and bad input is refused."""

import numpy as np
import pytest

from rtpca_jax import bvh_export as bx
from rtpca_jax.data.skeleton import H36M17
from rtpca_jax.data.sources.cmu import read_clips


def _symmetrised(joints, lengths):
    """The input with every bone set to ``lengths`` along its own direction,
    built down the H36M tree from the root (the exporter's skeleton, computed
    independently here)."""
    out = np.zeros_like(joints)
    out[:, 0] = joints[:, 0]
    for c, p in enumerate(H36M17.parents):
        if p >= 0:
            d = joints[:, c] - joints[:, p]
            out[:, c] = out[:, p] + lengths[c] * d / np.linalg.norm(d, axis=-1, keepdims=True)
    return out


def _median_symmetric_lengths(joints):
    lengths = np.zeros(17)
    for c, p in enumerate(H36M17.parents):
        if p >= 0:
            lengths[c] = np.median(np.linalg.norm(joints[:, c] - joints[:, p], axis=-1))
    for a, b in ((1, 4), (2, 5), (3, 6), (11, 14), (12, 15), (13, 16)):
        lengths[a] = lengths[b] = (lengths[a] + lengths[b]) / 2
    return lengths


@pytest.fixture(scope="module")
def clips():
    return {c["name"]: c for c in read_clips()}


@pytest.mark.parametrize("name", ["walking_test_1", "jumping_test_1", "basketball_train_5"])
def test_round_trip_on_real_motion_within_a_micrometre(clips, tmp_path, name):
    c = clips[name]
    world = c["world"]  # metres, Z up, the root moving through the scene
    report = bx.write_bvh(str(tmp_path / "a.bvh"), world, c["fps"], frame="z_up")
    back, fps = bx.read_h36m(str(tmp_path / "a.bvh"), frame="z_up")
    assert back.shape == world.shape and abs(fps - c["fps"]) < 1e-3
    expected = _symmetrised(world, _median_symmetric_lengths(world))
    err_mm = np.linalg.norm(back - expected, axis=-1) * 1000
    assert err_mm.max() < 1.0, err_mm.max()
    # bones were really rescaled: the raw input differs from the symmetric skeleton
    assert np.linalg.norm(world - expected, axis=-1).max() > 1e-3
    # no flips: the largest per-frame rotation change of any joint at 60 fps is
    # that of fast real motion (tens of degrees), far from a 180-degree flip
    assert report["max_rotation_change_deg"] < 60, report


def test_round_trip_with_non_rigid_hips_and_shoulders(clips, tmp_path):
    """Predictions never keep the hip and shoulder triangles rigid: 2 cm of
    noise on every joint, in the camera frame the model predicts in."""
    world = clips["running_test_1"]["world"][:300]
    rng = np.random.default_rng(0)
    noisy = world - world[:, :1] + rng.normal(0, 0.02, world.shape)
    cam = noisy @ np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]]).T  # Z up -> y down
    traj = np.linspace([0.0, 0.0, 4.0], [1.0, 0.0, 5.0], len(cam))
    bx.write_bvh(str(tmp_path / "p.bvh"), cam, 30.0, frame="camera", trajectory=traj)
    back, _ = bx.read_h36m(str(tmp_path / "p.bvh"), frame="camera")
    expected = _symmetrised(cam - cam[:, :1], _median_symmetric_lengths(cam)) + traj[:, None]
    assert np.abs(back - expected).max() * 1000 < 1.0


def test_one_frame_sequence_is_a_one_frame_animation(clips, tmp_path):
    one = clips["walking_test_1"]["world"][:1]
    report = bx.write_bvh(str(tmp_path / "o.bvh"), one, 30.0, frame="z_up")
    back, _ = bx.read_h36m(str(tmp_path / "o.bvh"), frame="z_up")
    assert back.shape == (1, 17, 3) and report["frames"] == 1
    np.testing.assert_allclose(back, _symmetrised(one, _median_symmetric_lengths(one)), atol=1e-6)
    assert "nan" not in (tmp_path / "o.bvh").read_text().lower()


def test_bad_input_is_refused_and_nothing_is_written(clips, tmp_path):
    good = clips["walking_test_1"]["world"][:20].copy()
    bad_nan = good.copy()
    bad_nan[7, 13, 1] = np.nan
    with pytest.raises(ValueError, match="frame 7, joint left_wrist"):
        bx.write_bvh(str(tmp_path / "n.bvh"), bad_nan, 30.0, frame="z_up")
    zero = good.copy()
    zero[3, 2] = zero[3, 1]  # knee on the hip
    with pytest.raises(ValueError, match="right_hip -> right_knee.*frame 3"):
        bx.write_bvh(str(tmp_path / "z.bvh"), zero, 30.0, frame="z_up")
    with pytest.raises(ValueError, match=r"\[T, 17, 3\]"):
        bx.write_bvh(str(tmp_path / "s.bvh"), good[:, :15], 30.0)
    with pytest.raises(ValueError, match="fps"):
        bx.write_bvh(str(tmp_path / "f.bvh"), good, 0.0)
    assert not any(tmp_path.iterdir())
