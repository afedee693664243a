import numpy as np
import pytest

from rtpca_jax.data import skeleton
from rtpca_jax.data.pipeline import ClipDataset, clip_starts
from rtpca_jax.evaluation import eval_clips, stitch
from rtpca_jax.data.sources.records import Sequence


def _seqs(lengths, joints=17, layout="h36m17"):
    out = []
    for i, t in enumerate(lengths):
        frame_id = np.arange(t, dtype=np.float32)
        p2 = np.zeros((t, joints, 2), np.float32)
        p2[..., 0] = frame_id[:, None]  # x encodes the frame number
        p2[..., 1] = i  # y encodes the sequence
        p2[:, :, 0] += np.arange(joints) * 1000.0  # and the joint
        p3 = np.concatenate([p2, np.ones((t, joints, 1), np.float32)], -1)
        out.append(Sequence(f"s{i}", "a", 0, p2, p3, np.zeros((t, 3), np.float32), None, 50, layout))
    return out


def test_clip_starts_cover_every_frame():
    assert list(clip_starts(10, 4)) == [0, 4, 6]
    assert list(clip_starts(8, 4)) == [0, 4]
    assert list(clip_starts(3, 4)) == [0]
    assert list(clip_starts(10, 4, stride=2)) == [0, 2, 4, 6]
    for t in (5, 27, 100, 243, 244):
        covered = np.zeros(t, bool)
        for s in clip_starts(t, 27):
            covered[s:s + 27] = True
        assert covered.all()


@pytest.mark.parametrize("layout", list(skeleton.LAYOUTS.values()), ids=lambda l: l.name)
def test_flip_twice_is_identity_and_swaps_named_pairs(layout):
    pose = np.random.default_rng(0).normal(size=(4, layout.num_joints, 3))
    np.testing.assert_array_equal(skeleton.flip_pose(skeleton.flip_pose(pose, layout), layout), pose)
    flipped = skeleton.flip_pose(pose, layout)
    for j, name in enumerate(layout.joints):
        mirror = name.replace("left", "@").replace("right", "left").replace("@", "right")
        m = layout.joints.index(mirror)
        np.testing.assert_array_equal(flipped[:, m, 1:], pose[:, j, 1:])
        np.testing.assert_array_equal(flipped[:, m, 0], -pose[:, j, 0])


def test_epoch_covers_all_clips_and_is_deterministic():
    seqs = _seqs([100, 60, 20])
    ds = ClipDataset(seqs, 27, 4, seed=3, process_index=0, process_count=1)
    assert ds.num_clips == 4 + 3 + 1 and ds.steps_per_epoch == 2
    a = [b for b in ds.epoch(5).as_numpy_iterator()]
    b = [b for b in ds.epoch(5).as_numpy_iterator()]
    c = [b for b in ds.epoch(6).as_numpy_iterator()]
    assert len(a) == 2 and a[0][0].shape == (4, 27, 17, 2) and a[0][1].shape == (4, 27, 17, 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x[0], y[0])
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c))
    # all clips of an epoch are distinct when no batch is dropped
    ds1 = ClipDataset(seqs, 27, 1, seed=3, process_index=0, process_count=1)
    order, _ = ds1.epoch_plan(0)
    assert sorted(order) == list(range(8))


def test_tf_batches_equal_numpy_gather_with_flips_and_padding():
    seqs = _seqs([100, 60, 20])
    ds = ClipDataset(seqs, 27, 8, seed=1, process_index=0, process_count=1)
    (p2, p3), = list(ds.epoch(0).as_numpy_iterator())
    clips, flips = ds.local_indices(0)
    e2, e3 = ds.gather_numpy(clips, flips)
    np.testing.assert_array_equal(p2, e2)
    np.testing.assert_array_equal(p3, e3)
    assert 0 < flips.sum() < 8
    layout = skeleton.H36M17
    for k in range(8):
        seq = ds._clip_seq[clips[k]]
        start = ds._clip_start[clips[k]]
        frames = np.minimum(start + np.arange(27), seqs[seq].num_frames - 1)  # edge padding
        ref = seqs[seq].pose2d[frames]
        if flips[k]:
            ref = skeleton.flip_pose(ref, layout)
        np.testing.assert_array_equal(p2[k], ref)


def test_resume_position_gives_the_same_following_batches():
    seqs = _seqs([300, 200])
    ds = ClipDataset(seqs, 27, 2, seed=0, process_index=0, process_count=1)
    full = list(ds.epoch(2).as_numpy_iterator())
    resumed = list(ds.epoch(2, start_step=3).as_numpy_iterator())
    assert len(resumed) == len(full) - 3
    for x, y in zip(full[3:], resumed):
        np.testing.assert_array_equal(x[0], y[0])
        np.testing.assert_array_equal(x[1], y[1])


def test_process_shards_partition_each_global_batch():
    seqs = _seqs([300, 200])
    glob = ClipDataset(seqs, 27, 4, seed=0, process_index=0, process_count=1)
    parts = [ClipDataset(seqs, 27, 4, seed=0, process_index=p, process_count=2) for p in range(2)]
    g = list(glob.epoch(1).as_numpy_iterator())
    s = [list(p.epoch(1).as_numpy_iterator()) for p in parts]
    for k in range(len(g)):
        np.testing.assert_array_equal(np.concatenate([s[0][k][0], s[1][k][0]]), g[k][0])
    with pytest.raises(ValueError, match="not divisible"):
        ClipDataset(seqs, 27, 3, process_index=0, process_count=2)


def test_eval_clips_and_stitch():
    x = np.arange(10)[:, None].astype(np.float32)
    clips, idx = eval_clips(x, 4)
    np.testing.assert_array_equal(idx, [[0, 1, 2, 3], [4, 5, 6, 7], [6, 7, 8, 9]])
    np.testing.assert_array_equal(stitch(clips, idx, 10), x)
    clips, idx = eval_clips(x[:3], 4)  # short: edge-padded
    np.testing.assert_array_equal(idx, [[0, 1, 2, 2]])
    np.testing.assert_array_equal(stitch(clips, idx, 3), x[:3])


def test_bad_training_inputs():
    seqs = _seqs([50])
    seqs[0].pose3d = None
    with pytest.raises(ValueError, match="needs 3D"):
        ClipDataset(seqs, 27, 1, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="fewer than one batch"):
        ClipDataset(_seqs([50]), 27, 8, process_index=0, process_count=1)


def test_epoch_pipeline_runs_without_autotuning():
    # tf.data's autotuning thread made deleting an epoch's iterator block for
    # 30-48 s at some epoch ends (README); the training pipeline turns it off.
    ds = ClipDataset(_seqs([100, 60]), 27, 4, seed=0, process_index=0, process_count=1)
    assert ds.epoch(0).options().autotune.enabled is False
