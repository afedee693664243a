import jax.numpy as jnp
import numpy as np
import pytest

from rtpca_jax import losses, metrics
from rtpca_jax.data.skeleton import H36M17

H36M_JOINT_WEIGHTS = H36M17.joint_weights


def _rot(axis, angle):
    c, s = np.cos(angle), np.sin(angle)
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def test_mpjpe_hand_computed():
    gt = np.zeros((1, 2, 3))
    pred = np.array([[[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]]])
    assert metrics.mpjpe(pred, gt) == pytest.approx(3.0)


def test_p_mpjpe_zero_for_similar_copy_including_reflection_free_rotation():
    gt = np.random.default_rng(0).normal(size=(5, 17, 3))
    r = _rot("z", 0.7) @ _rot("x", -1.1)
    pred = 2.5 * gt @ r.T + np.array([0.3, -1.0, 4.0])
    assert metrics.p_mpjpe(pred, gt) < 1e-10
    assert metrics.mpjpe(pred, gt) > 0.5
    # a mirrored copy cannot be fitted by a proper rotation
    mirrored = gt * np.array([-1, 1, 1])
    assert metrics.p_mpjpe(mirrored, gt) > 0.1


def test_p_mpjpe_hand_computed_translation_only_case():
    # two points; pred is gt shifted and with one point displaced symmetrically
    gt = np.array([[[0.0, 0, 0], [2.0, 0, 0]]])
    pred = gt + np.array([5.0, 0, 0])
    assert metrics.p_mpjpe(pred, gt) == pytest.approx(0.0, abs=1e-12)


def test_n_mpjpe_removes_scale_only():
    gt = np.random.default_rng(1).normal(size=(3, 17, 3))
    assert metrics.n_mpjpe(0.5 * gt, gt) < 1e-12
    assert metrics.n_mpjpe(gt + 1.0, gt) > 0.1


def test_velocity_and_acceleration_errors_closed_form():
    t = np.arange(10.0)
    gt = np.zeros((10, 1, 3))
    pred = np.zeros((10, 1, 3))
    pred[:, 0, 0] = 2.0 * t  # constant velocity 2 per frame
    assert metrics.mpjve(pred, gt) == pytest.approx(2.0)
    assert metrics.accel_error(pred, gt) == pytest.approx(0.0)
    pred[:, 0, 0] = t ** 2  # constant acceleration 2
    assert metrics.accel_error(pred, gt) == pytest.approx(2.0)
    assert metrics.mpjve(pred + 7.0, gt + 7.0) == pytest.approx(metrics.mpjve(pred, gt))


def test_pck_and_auc_hand_computed():
    gt = np.zeros((2, 17, 3))
    pred = np.zeros((2, 17, 3))
    pred[:, :, 0] = np.linspace(0, 160, 17)  # distances 0, 10, ..., 160 mm
    assert metrics.pck(pred, gt) == pytest.approx(15 / 17 * 100)  # 0..140 < 150
    # each joint at distance 10k is counted at thresholds > 10k
    expected = np.mean([np.mean(np.linspace(0, 160, 17) < th) for th in np.arange(0, 151, 5)]) * 100
    assert metrics.auc(pred, gt) == pytest.approx(expected)
    assert metrics.pck(pred, gt, joints=metrics.MPI3DHP_PCK14) == pytest.approx(100.0)
    valid = np.array([True, False])
    pred[1] = 1000.0
    assert metrics.pck(pred, gt, valid=valid, joints=range(14)) == pytest.approx(100.0)


def test_aggregate_by_action_averages_actions_equally():
    overall, per = metrics.aggregate_by_action([("Walking 1", {"mpjpe": 10.0}, 100), ("Walking", {"mpjpe": 20.0}, 300),
                                                ("Eating", {"mpjpe": 40.0}, 10)])
    assert per["Walking"]["mpjpe"] == pytest.approx(17.5)
    assert overall["mpjpe"] == pytest.approx((17.5 + 40.0) / 2)


def test_losses_hand_computed():
    w = np.asarray(H36M_JOINT_WEIGHTS)
    target = np.zeros((1, 3, 17, 3), np.float32)
    target[:, :, 0] = 5.0  # the root is zeroed by the loss
    pred = np.zeros((1, 3, 17, 3), np.float32)
    pred[:, 1, :, 2] = 1.0  # frame 1 off by 1 along z
    loss, parts = losses.total_loss(jnp.asarray(pred), jnp.asarray(target), H36M_JOINT_WEIGHTS)
    assert float(parts["mpjpe_w"]) == pytest.approx(w.mean() / 3, rel=1e-6)
    # squared differences: frames 0->1 and 1->2 each 1 on z for every joint, / 3 coords
    assert float(parts["temporal"]) == pytest.approx(w.mean() / 3, rel=1e-6)
    assert float(parts["velocity"]) == pytest.approx(1.0, rel=1e-6)
    assert float(loss) == pytest.approx(w.mean() / 3 + 0.5 * w.mean() / 3 + 2.0, rel=1e-6)


def test_3dhp_scores_report_pck_and_auc_on_valid_frames(tmp_path):
    """A constant 42 mm error on every joint: PCK@150 = 100 %, AUC = 22/31
    (thresholds 45..150 of 0..150 step 5 exceed 42); a frame flagged invalid
    with a 1 m error changes nothing; H36M-layout sequences get no PCK."""
    import data_fixtures as fx

    from rtpca_jax import evaluation
    from rtpca_jax.data import sources

    fx.make_3dhp(tmp_path)
    test = sources.load("mpi_inf_3dhp", str(tmp_path), subjects=["TS1", "TS2"])
    offset = np.array([0.042, 0.0, 0.0])
    preds = []
    for s in test:
        p = s.pose3d.astype(np.float64) + offset
        bad = np.flatnonzero(~s.valid)
        assert len(bad)  # the fixture flags some frames invalid
        p[bad] += 1.0
        preds.append(p)
    r = evaluation.score_sequences(test, preds)
    for key in ("pck_150mm", "pck14_150mm", "pooled_pck_150mm"):
        assert r[key] == pytest.approx(100.0)
    for key in ("auc", "auc14", "pooled_auc"):
        assert r[key] == pytest.approx(22 / 31 * 100)
    assert r["pooled_mpjpe_mm"] == pytest.approx(42.0)
    assert "PCK (%)" in evaluation.format_table(r) and "all frames" in evaluation.format_table(r)
    h36m = sources.load("cmu", None, subjects=["walking_test_1"])[:1]
    r2 = evaluation.score_sequences(h36m, [s.pose3d + offset for s in h36m])
    assert "pck_150mm" not in r2 and r2["mpjpe_mm"] == pytest.approx(42.0, rel=1e-5)
