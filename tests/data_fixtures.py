"""Small files in the exact layouts of the standard pose datasets."""

import os

import numpy as np


def save_npz_pickled(path, **arrays):
    """As the public files are written: nested dicts as pickled object arrays."""
    np.savez_compressed(path, **{k: np.array(v, dtype=object) if isinstance(v, dict) else v
                                 for k, v in arrays.items()})


def walk(t, joints, seed=0, scale=0.3, base=(0.0, 0.0, 1.0)):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, scale, (1, joints, 3)) + rng.normal(0, 0.01, (t, joints, 3)).cumsum(0)
    return (x + np.asarray(base)).astype(np.float32)


def make_h36m(root, t=120, keypoints="gt"):
    """S1 (train) and S9, S11 (test) with one or two actions each; 2D in pixels."""
    pos3d = {
        "S1": {"Walking 1": walk(t, 32, 1), "Directions": walk(t, 32, 2)},
        "S9": {"Walking": walk(t, 32, 3)},
        "S11": {"Directions": walk(t, 32, 4), "Eating": walk(t, 32, 5)},
    }
    pos2d = {s: {a: [np.random.default_rng(i).uniform(0, 1000, (t + 5, 17, 2)).astype(np.float32)
                     for i in range(4)] for a in acts} for s, acts in pos3d.items()}
    meta = {"layout_name": "h36m", "num_joints": 17,
            "keypoints_symmetry": [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]}
    save_npz_pickled(os.path.join(root, "data_3d_h36m.npz"), positions_3d=pos3d)
    save_npz_pickled(os.path.join(root, f"data_2d_h36m_{keypoints}.npz"), positions_2d=pos2d, metadata=meta)
    return pos3d, pos2d


def make_humaneva(root, t=60):
    pos3d = {"Train/S1": {"Walk 1 chunk0": walk(t, 15, 1), "Jog 1 chunk0": walk(t, 15, 2),
                          "Gestures 1 chunk0": walk(t, 15, 6)},
             "Validate/S2": {"Walk 1 chunk0": walk(t, 15, 3), "Box 1 chunk0": walk(t, 15, 4)}}
    pos2d = {s: {a: [np.random.default_rng(i).uniform(0, 640, (t, 15, 2)).astype(np.float32)
                     for i in range(3)] for a in acts} for s, acts in pos3d.items()}
    pos2d["Validate/S2"]["Box 1 chunk0"][2] = np.zeros((0, 15, 2), np.float32)  # missing view
    save_npz_pickled(os.path.join(root, "data_3d_humaneva15.npz"), positions_3d=pos3d)
    save_npz_pickled(os.path.join(root, "data_2d_humaneva15_gt.npz"), positions_2d=pos2d,
                     metadata={"layout_name": "humaneva15", "num_joints": 15})
    return pos3d, pos2d


def make_3dhp(root, t=50):
    train = {}
    for key in ("S1 Seq1", "S2 Seq2"):
        views = {}
        for cam in (0, 8):
            d3 = walk(t, 17, cam, base=(0, 0, 4)) * 1000.0  # millimetres
            views[cam] = {"data_3d": d3, "data_2d": np.random.default_rng(cam).uniform(0, 2048, (t, 17, 2))}
        train[key] = [views]
    test = {}
    for seq in ("TS1", "TS5"):
        test[seq] = {"data_3d": walk(t, 17, 7, base=(0, 0, 4)) * 1000.0,
                     "data_2d": np.random.default_rng(1).uniform(0, 1080, (t, 17, 2)),
                     "valid": (np.arange(t) % 5 != 0).astype(np.float32)}
    save_npz_pickled(os.path.join(root, "data_train_3dhp.npz"), data=train)
    save_npz_pickled(os.path.join(root, "data_test_3dhp.npz"), data=test)
    return train, test


def make_custom(root, t=40):
    pos2d = {"clip_a.mp4": {"custom": [np.random.default_rng(0).uniform(0, 640, (t, 17, 2))]},
             "clip_b.mp4": {"custom": [np.random.default_rng(1).uniform(0, 1920, (t + 3, 17, 2))]}}
    meta = {"layout_name": "coco", "num_joints": 17,
            "keypoints_symmetry": [[1, 3, 5, 7, 9, 11, 13, 15], [2, 4, 6, 8, 10, 12, 14, 16]],
            "video_metadata": {"clip_a.mp4": {"w": 640, "h": 480}, "clip_b.mp4": {"w": 1920, "h": 1080}}}
    path = os.path.join(root, "data_2d_custom_myvideos.npz")
    save_npz_pickled(path, positions_2d=pos2d, metadata=meta)
    return path, pos2d


class RunsCode:
    """Pickles to ``os.system('touch MARKER')``: a file that would run code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
