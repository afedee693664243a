"""Inference on a user's keypoints: formats, joint conversion, stitching, rendering."""

import json

import jax
import numpy as np
import pytest

from rtpca_jax import checkpoints, evaluation, inference, model, viz
from rtpca_jax.convert import load_model
from rtpca_jax.data import camera, sources
from rtpca_jax.data.pipeline import clip_starts
from rtpca_jax.data.skeleton import COCO17, H36M17

W, H = 1000, 1000


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    cfg = model.default_config()
    cfg.update(dict(variant="rtpca", num_frames=27, width=16, depth=2, num_heads=2))
    m = model.build(cfg)
    params = jax.tree_util.tree_map(np.asarray, model.init_params(m, jax.random.PRNGKey(0)))
    checkpoints.save_params(str(d), params, cfg)
    return d


@pytest.fixture(scope="module")
def h36m_px():
    s = [x for x in sources.load("cmu", None, subjects=["walking_test_1"], downsample=2) if x.camera == 0][0]
    return camera.image_coordinates(s.pose2d, W, H)[:70].astype(np.float64)


def _to_coco(h36):
    """A COCO-17 pose consistent with an H36M-17 one (face points around the nose)."""
    c = np.zeros(h36.shape[:-2] + (17, 2))
    idx = {n: i for i, n in enumerate(H36M17.joints)}
    for name in ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                 "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"):
        c[..., COCO17.joints.index(name), :] = h36[..., idx[name], :]
    nose = h36[..., idx["neck_nose"], :]
    c[..., 0, :] = nose
    for name, dx in (("left_eye", 4), ("right_eye", -4), ("left_ear", 9), ("right_ear", -9)):
        c[..., COCO17.joints.index(name), :] = nose + np.array([dx, -5.0])
    return c


def test_coco_to_h36m_hand_computed():
    kp = np.zeros((1, 17, 3))
    kp[..., 2] = 0.9
    kp[0, COCO17.joints.index("left_hip"), :2] = [10, 100]
    kp[0, COCO17.joints.index("right_hip"), :2] = [30, 100]
    kp[0, COCO17.joints.index("left_shoulder"), :2] = [0, 40]
    kp[0, COCO17.joints.index("right_shoulder"), :2] = [40, 40]
    kp[0, COCO17.joints.index("nose"), :2] = [20, 20]
    kp[0, COCO17.joints.index("left_eye"), :2] = [24, 16]
    kp[0, COCO17.joints.index("right_eye"), :2] = [16, 16]
    kp[0, COCO17.joints.index("left_wrist"), :2] = [-5, 90]
    kp[0, COCO17.joints.index("left_wrist"), 2] = 0.1
    h = inference.coco_to_h36m(kp)[0]
    j = {n: i for i, n in enumerate(H36M17.joints)}
    np.testing.assert_allclose(h[j["pelvis"], :2], [20, 100])
    np.testing.assert_allclose(h[j["thorax"], :2], [20, 40])
    np.testing.assert_allclose(h[j["spine"], :2], [20, 70])
    np.testing.assert_allclose(h[j["neck_nose"], :2], [20, 20])
    # head = mid(eyes) + 0.5 (mid(eyes) - thorax) = (20,16) + 0.5 (0,-24)
    np.testing.assert_allclose(h[j["head"], :2], [20, 4])
    np.testing.assert_allclose(h[j["right_hip"], :2], [30, 100])
    np.testing.assert_allclose(h[j["left_wrist"]], [-5, 90, 0.1])


def test_halpe_uses_its_own_hip_neck_head():
    kp = np.random.default_rng(0).uniform(0, 100, (2, 26, 3))
    h = inference.halpe_to_h36m(kp)
    np.testing.assert_array_equal(h[:, 0], kp[:, 19])
    np.testing.assert_array_equal(h[:, 8], kp[:, 18])
    np.testing.assert_array_equal(h[:, 10], kp[:, 17])
    np.testing.assert_allclose(h[:, 7, :2], (kp[:, 19, :2] + kp[:, 18, :2]) / 2)


def test_fill_missing_interpolates_over_time():
    kp = np.zeros((5, 1, 3))
    kp[:, 0, 0] = [0, 1, 2, 3, 4]
    kp[:, 0, 2] = [1, 0.1, np.nan, 1, 1]
    kp[2, 0, 0] = np.nan
    xy, filled = inference.fill_missing(kp)
    np.testing.assert_allclose(xy[:, 0, 0], [0, 1, 2, 3, 4])
    assert filled[:, 0].tolist() == [False, True, True, False, False]


def _check_result(r, t):
    assert r["poses3d"].shape == (t, 17, 3) and np.isfinite(r["poses3d"]).all()
    assert list(r["joint_names"]) == list(H36M17.joints)
    assert r["skeleton_edges"].shape == (16, 2)


def test_every_input_format_end_to_end(tiny_ckpt, h36m_px, tmp_path):
    t = len(h36m_px)
    coco = _to_coco(h36m_px)
    # COCO JSON: two people (take the more confident), frame 5 with nobody
    frames = []
    for i in range(t):
        people = [] if i == 5 else [
            {"keypoints": np.concatenate([coco[i] + 300, np.full((17, 1), 0.2)], 1).ravel().tolist(), "score": 0.2},
            {"keypoints": np.concatenate([coco[i], np.full((17, 1), 0.9)], 1).ravel().tolist(), "score": 0.9}]
        frames.append({"people": people})
    (tmp_path / "coco.json").write_text(json.dumps(frames))
    r = inference.run(str(tiny_ckpt), str(tmp_path / "coco.json"), str(tmp_path / "a.npz"), width=W, height=H)
    _check_result(r, t)
    assert r["filled"][5].all() and not r["filled"][4].any()
    np.testing.assert_allclose(r["keypoints2d_px"][3, 0], (coco[3, 11] + coco[3, 12]) / 2, atol=1e-4)
    # Halpe-26
    halpe = []
    for i in range(t):
        kp = np.zeros((26, 3))
        kp[:17, :2], kp[:, 2] = coco[i], 0.95
        kp[17, :2], kp[18, :2], kp[19, :2] = h36m_px[i, 10], h36m_px[i, 8], h36m_px[i, 0]
        halpe.append({"image_id": f"{i:05d}.jpg", "keypoints": kp.ravel().tolist(), "score": 2.0, "idx": 0})
    (tmp_path / "halpe.json").write_text(json.dumps(halpe))
    r = inference.run(str(tiny_ckpt), str(tmp_path / "halpe.json"), str(tmp_path / "b.json"), width=W, height=H)
    _check_result(r, t)
    np.testing.assert_allclose(r["keypoints2d_px"][:, 0], h36m_px[:, 0], atol=1e-4)
    back = json.load(open(tmp_path / "b.json"))
    assert np.asarray(back["poses3d"]).shape == (t, 17, 3)
    # VideoPose3D custom npz (COCO layout, size from the metadata)
    meta = {"layout_name": "coco", "num_joints": 17, "video_metadata": {"v.mp4": {"w": W, "h": H}}}
    np.savez(tmp_path / "custom.npz", positions_2d=np.array({"v.mp4": {"custom": [coco]}}, dtype=object),
             metadata=np.array(meta, dtype=object))
    _check_result(inference.run(str(tiny_ckpt), str(tmp_path / "custom.npz"), str(tmp_path / "c.npz")), t)
    # plain npy, H36M order, short (edge-padded to F) and long sequences
    np.save(tmp_path / "short.npy", h36m_px[:10])
    _check_result(inference.run(str(tiny_ckpt), str(tmp_path / "short.npy"), str(tmp_path / "d.npz"),
                                width=W, height=H), 10)


def test_malformed_inputs(tiny_ckpt, h36m_px, tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        inference.read_keypoints(str(tmp_path / "bad.json"), W, H)
    (tmp_path / "n.json").write_text(json.dumps([[{"keypoints": [1, 2, 3]}]]))
    with pytest.raises(ValueError, match=r"frame 0: 'keypoints' has 3 numbers, expected 17 x 3"):
        inference.read_keypoints(str(tmp_path / "n.json"), W, H)
    np.save(tmp_path / "x.npy", h36m_px)
    with pytest.raises(ValueError, match="--width and --height"):
        inference.read_keypoints(str(tmp_path / "x.npy"))
    np.save(tmp_path / "y.npy", h36m_px[:, :16])
    with pytest.raises(ValueError, match=r"expected \[T, 17, 2\|3\]"):
        inference.read_keypoints(str(tmp_path / "y.npy"), W, H)
    (tmp_path / "empty.json").write_text(json.dumps([[] for _ in range(4)]))
    with pytest.raises(ValueError, match="never detected"):
        inference.run(str(tiny_ckpt), str(tmp_path / "empty.json"), str(tmp_path / "o.npz"), width=W, height=H)
    assert not (tmp_path / "o.npz").exists()


def test_cross_fade_has_no_jumps_at_window_borders(tiny_ckpt, h36m_px):
    """Frame-to-frame change at window borders is not larger than inside windows,
    unlike hard cuts between non-overlapping windows."""
    module, params = load_model(str(tiny_ckpt))
    pose2d = camera.normalize_screen(h36m_px, W, H).astype(np.float32)
    f = module.spec.num_frames
    soft = evaluation.predict_any_length(module, params, pose2d, flip=False)
    hard = evaluation.predict_any_length(module, params, pose2d, flip=False, stride=f)
    starts = clip_starts(len(pose2d), f, f // 2)
    borders = sorted(set(int(s) for s in starts[1:]) | set(int(s) + f for s in starts[:-1] if s + f < len(pose2d)))

    def jumps(p):
        d = np.linalg.norm(np.diff(p, axis=0), axis=-1).mean(-1)  # d[t] = change from t to t+1
        at = np.array([d[b - 1] for b in borders])
        inside = np.delete(d, [b - 1 for b in borders])
        return at.mean(), inside.mean()

    soft_at, soft_in = jumps(soft)
    hard_starts = clip_starts(len(pose2d), f, f)
    hd = np.linalg.norm(np.diff(hard, axis=0), axis=-1).mean(-1)
    hard_at = np.mean([hd[int(s) - 1] for s in hard_starts[1:]])
    print(f"mean frame-to-frame change: cross-fade at borders {soft_at:.5f}, inside {soft_in:.5f}; "
          f"hard cuts at borders {hard_at:.5f}")
    assert soft_at <= 1.5 * soft_in
    assert soft_at < hard_at


def test_render_frame_count_and_size(tmp_path, h36m_px):
    pose3d = np.random.default_rng(0).normal(0, 0.3, (6, 17, 3))
    n = viz.render_animation(h36m_px[:6], pose3d, str(tmp_path / "a.gif"), (W, H), size_px=(320, 160))
    from PIL import Image

    im = Image.open(tmp_path / "a.gif")
    assert n == 6 and im.n_frames == 6 and im.size == (320, 160)
    n = viz.render_animation(h36m_px[:6], pose3d, str(tmp_path / "a.mp4"), (W, H), size_px=(320, 160))
    assert n == 6 and (tmp_path / "a.mp4").stat().st_size > 1000
