"""Each source on fixtures in the exact file layouts, and every bad-input path."""

import os

import numpy as np
import pytest

import data_fixtures as fx
from rtpca_jax.data import camera as cam_lib
from rtpca_jax.data import sources
from rtpca_jax.data.skeleton import H36M32_TO_17
from rtpca_jax.data.sources import bvh as bvh_lib
from rtpca_jax.data.sources import cmu


@pytest.fixture()
def h36m(tmp_path):
    pos3d, pos2d = fx.make_h36m(tmp_path)
    return tmp_path, pos3d, pos2d


def test_h36m_counts_shapes_units_and_normalisation(h36m):
    root, pos3d, pos2d = h36m
    seqs = sources.load("h36m", root, keypoints="gt")
    # S11 Directions excluded: S1 2 actions, S9 1, S11 1 -> 4 actions x 4 cameras
    assert len(seqs) == 16
    assert not any(s.subject == "S11" and s.action == "Directions" for s in seqs)
    s = next(s for s in seqs if s.subject == "S1" and s.action == "Walking 1" and s.camera == 1)
    t = pos3d["S1"]["Walking 1"].shape[0]
    assert s.pose2d.shape == (t, 17, 2)  # 2D (t + 5 frames) truncated to the mocap
    assert s.pose3d.shape == (t, 17, 3) and s.trajectory.shape == (t, 3)
    assert np.all(s.pose3d[:, 0] == 0.0)
    cam = cam_lib.h36m_cameras("S1")[1]
    world17 = pos3d["S1"]["Walking 1"][:, list(H36M32_TO_17)].astype(np.float64)
    # root trajectory = R^T (X_root - t), independently of the loader
    np.testing.assert_allclose(s.trajectory, (world17[:, 0] - cam.translation) @ cam.rotation, atol=1e-5)
    np.testing.assert_allclose(s.pose3d[:, 5], (world17[:, 5] - world17[:, 0]) @ cam.rotation, atol=1e-5)
    px = pos2d["S1"]["Walking 1"][1][:t]
    np.testing.assert_allclose(s.pose2d[..., 0], px[..., 0] / 1000 * 2 - 1, atol=1e-6)
    np.testing.assert_allclose(s.pose2d[..., 1], px[..., 1] / 1000 * 2 - 1000 / 1000, atol=1e-6)
    assert s.fps == 50 and s.layout == "h36m17" and s.intrinsics.shape == (9,)


def test_h36m_filters_downsample_subset(h36m):
    root, pos3d, _ = h36m
    seqs = sources.load("h36m", root, subjects=["S1"], actions=["Walking"])
    assert {(s.subject, s.action) for s in seqs} == {("S1", "Walking 1")}
    full = sources.load("h36m", root, subjects=["S9"])
    half = sources.load("h36m", root, subjects=["S9"], downsample=2)
    assert half[0].num_frames == (full[0].num_frames + 1) // 2
    np.testing.assert_array_equal(half[0].pose3d, full[0].pose3d[::2])
    assert half[0].fps == 25
    sub = sources.load_h36m(root, subjects=["S9"], subset=0.5)
    assert sub[0].num_frames == full[0].num_frames // 2


def test_h36m_bad_inputs(tmp_path):
    root = tmp_path
    with pytest.raises(ValueError, match=r"data_3d_h36m\.npz: file not found"):
        sources.load("h36m", root)
    pos3d, pos2d = fx.make_h36m(root)
    with pytest.raises(ValueError, match=r"data_2d_h36m_cpn_ft_h36m_dbb\.npz: file not found"):
        sources.load("h36m", root, keypoints="cpn_ft_h36m_dbb")
    with pytest.raises(ValueError, match=r"unknown subject\(s\) \['S2'\]"):
        sources.load("h36m", root, subjects=["S2"])
    with pytest.raises(ValueError, match=r"\['S9'\] have no action\(s\) \['Smoking'\]"):
        sources.load("h36m", root, subjects=["S9"], actions=["Smoking"])

    def rewrite(p3=None, p2=None):
        fx.save_npz_pickled(os.path.join(root, "data_3d_h36m.npz"), positions_3d=p3 or pos3d)
        fx.save_npz_pickled(os.path.join(root, "data_2d_h36m_gt.npz"), positions_2d=p2 or pos2d, metadata={})

    bad = {s: dict(a) for s, a in pos2d.items()}
    bad["S9"]["Walking"] = [v[:50] for v in pos2d["S9"]["Walking"]]
    rewrite(p2=bad)
    with pytest.raises(ValueError, match=r"subject S9 action 'Walking' camera 0: 2D has 50 frames, shorter"):
        sources.load("h36m", root, subjects=["S9"])
    bad["S9"]["Walking"] = pos2d["S9"]["Walking"][:3]
    rewrite(p2=bad)
    with pytest.raises(ValueError, match="camera-count mismatch"):
        sources.load("h36m", root, subjects=["S9"])
    bad["S9"]["Walking"] = [v[:, :16] for v in pos2d["S9"]["Walking"]]
    rewrite(p2=bad)
    with pytest.raises(ValueError, match=r"expected shape \[T, 17, 2\], got \(125, 16, 2\)"):
        sources.load("h36m", root, subjects=["S9"])
    b3 = {s: dict(a) for s, a in pos3d.items()}
    b3["S9"]["Walking"] = pos3d["S9"]["Walking"].copy()
    b3["S9"]["Walking"][7, 3, 1] = np.nan
    rewrite(p3=b3)
    with pytest.raises(ValueError, match=r"subject S9 action 'Walking' camera 0 3D: non-finite value"):
        sources.load("h36m", root, subjects=["S9"])
    fx.save_npz_pickled(os.path.join(root, "data_2d_h36m_gt.npz"), metadata={})
    with pytest.raises(ValueError, match=r"data_2d_h36m_gt\.npz: missing key\(s\) \['positions_2d'\]"):
        sources.load("h36m", root)


def test_humaneva15(tmp_path):
    pos3d, pos2d = fx.make_humaneva(tmp_path)
    seqs = sources.load("humaneva15", tmp_path, actions=["Walk", "Jog", "Box"])
    # Train/S1: Walk, Jog (Gestures filtered) x 3 cams; Validate/S2: Walk x 3 + Box x 2 (one view missing)
    assert len(seqs) == 11
    assert {s.layout for s in seqs} == {"humaneva15"}
    s = seqs[0]
    assert s.pose3d.shape == (60, 15, 3) and np.all(s.pose3d[:, 0] == 0) and s.fps == 60
    np.testing.assert_allclose(s.pose2d[..., 1], pos2d[s.subject][s.action][s.camera][..., 1] / 640 * 2 - 0.75,
                               atol=1e-6)
    with pytest.raises(ValueError, match=r"unknown subject"):
        sources.load("humaneva15", tmp_path, subjects=["Train/S4"])


def test_mpi_inf_3dhp(tmp_path):
    train, test = fx.make_3dhp(tmp_path)
    seqs = sources.load("mpi_inf_3dhp", tmp_path)
    tr = [s for s in seqs if s.subject.startswith("S")]
    te = [s for s in seqs if s.subject.startswith("TS")]
    assert len(tr) == 4 and len(te) == 2
    s = next(s for s in tr if s.subject == "S2" and s.camera == 8)
    d3 = train["S2 Seq2"][0][8]["data_3d"]
    assert s.action == "Seq2"
    np.testing.assert_allclose(s.pose3d, (d3 - d3[:, 14:15]) / 1000.0, atol=1e-6)  # mm -> m, pelvis 14
    assert np.all(s.pose3d[:, 14] == 0)
    np.testing.assert_allclose(s.trajectory, d3[:, 14] / 1000.0, atol=1e-6)
    ts5 = next(s for s in te if s.subject == "TS5")
    assert ts5.image_size == (1920, 1080)
    np.testing.assert_allclose(ts5.pose2d[..., 1], test["TS5"]["data_2d"][..., 1] / 1920 * 2 - 1080 / 1920,
                               atol=1e-6)
    assert ts5.valid.dtype == bool and ts5.valid.sum() == 40
    only_test = sources.load("mpi_inf_3dhp", tmp_path, subjects=["TS1"])
    assert [s.subject for s in only_test] == ["TS1"]
    os.remove(tmp_path / "data_test_3dhp.npz")
    assert len(sources.load("mpi_inf_3dhp", tmp_path, subjects=["S1"])) == 2
    with pytest.raises(ValueError, match=r"data_test_3dhp\.npz: file not found"):
        sources.load("mpi_inf_3dhp", tmp_path, subjects=["TS2"])


def test_custom_2d_only(tmp_path):
    path, pos2d = fx.make_custom(tmp_path)
    seqs = sources.load("custom", tmp_path, keypoints="myvideos")
    assert len(seqs) == 2 and all(s.pose3d is None and s.trajectory is None for s in seqs)
    b = next(s for s in seqs if s.subject == "clip_b.mp4")
    assert b.num_frames == 43 and b.layout == "coco17"
    np.testing.assert_allclose(b.pose2d[..., 1], pos2d["clip_b.mp4"]["custom"][0][..., 1] / 1920 * 2 - 1080 / 1920,
                               atol=1e-6)
    assert len(sources.load("custom", path)) == 2


_TINY_BVH = """HIERARCHY
ROOT Hips
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation
  JOINT Chest
  {
    OFFSET 0 10 0
    CHANNELS 3 Zrotation Yrotation Xrotation
    End Site
    {
      OFFSET 0 5 0
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.5
1 2 3 0 0 0 0 0 0
0 0 0 90 0 0 0 0 90
"""


def test_bvh_forward_kinematics_hand_computed(tmp_path):
    p = tmp_path / "tiny.bvh"
    p.write_text(_TINY_BVH)
    b = bvh_lib.parse_bvh(p)
    assert b.names == ["Hips", "Chest", "Chest_end"] and b.frame_time == 0.5
    pos = bvh_lib.forward_kinematics(b)
    np.testing.assert_allclose(pos[0], [[1, 2, 3], [1, 12, 3], [1, 17, 3]], atol=1e-12)
    # frame 1: hips rotated 90 deg about z -> +y offset goes to -x; chest then
    # rotated 90 deg about its x: (0,5,0) -> Rz90 Rx90 (0,5,0) = Rz90 (0,0,5) = (0,0,5)
    np.testing.assert_allclose(pos[1], [[0, 0, 0], [-10, 0, 0], [-10, 0, 5]], atol=1e-12)


def test_bvh_malformed(tmp_path):
    p = tmp_path / "bad.bvh"
    p.write_text(_TINY_BVH.replace("Frames: 2", "Frames: 3"))
    with pytest.raises(ValueError, match=r"bad\.bvh: MOTION has shape"):
        bvh_lib.parse_bvh(p)
    p.write_text("hello")
    with pytest.raises(ValueError, match="no MOTION section"):
        bvh_lib.parse_bvh(p)


def test_bvh_source_on_real_cmu_clip(bvh_dir):
    seqs = sources.load("bvh", bvh_dir / "cmu_running_test_1.bvh")
    assert len(seqs) == 4 and seqs[0].fps == 120 and seqs[0].num_frames == 162
    for s in seqs:
        assert np.all(s.pose3d[:, 0] == 0)
        assert np.abs(s.pose2d).max() < 1.0  # inside the image
        thigh = np.linalg.norm(s.pose3d[:, 2] - s.pose3d[:, 1], axis=-1)
        np.testing.assert_allclose(thigh, 0.428, atol=0.002)  # README: right thigh 0.428 m
        assert np.all(s.pose3d[:, 10, 1] < s.pose3d[:, 0, 1])  # head above pelvis (y down)
        assert 4.5 < s.trajectory[:, 2].min()
    # the four cameras see the same motion: pairwise joint distances agree
    d = [np.linalg.norm(s.pose3d[:, 3] - s.pose3d[:, 16], axis=-1) for s in seqs]
    np.testing.assert_allclose(d[0], d[3], atol=1e-5)


def test_shipped_dataset_size_split_and_reproducibility(bvh_dir, tmp_path):
    path = cmu.asset_path()
    assert os.path.getsize(path) <= 20e6
    train, test = cmu.train_test_subjects()
    assert len(train) == 33 and len(test) == 6 and not set(train) & set(test)
    assert all("_test_" in t for t in test)
    seqs = sources.load("cmu", None, subjects="test")
    assert len(seqs) == 24 and {s.camera for s in seqs} == {0, 1, 2, 3} and seqs[0].fps == 60
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / "rebuilt.npz"
    subprocess.run([sys.executable, str(REPO / "datasets" / "build_cmu_mocap.py"), "--bvh-dir", str(bvh_dir),
                    "--out", str(out)], check=True, capture_output=True)
    assert out.read_bytes() == open(path, "rb").read()


def test_unknown_source():
    with pytest.raises(ValueError, match="unknown dataset source"):
        sources.load("kinetics", "/tmp")
