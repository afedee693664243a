"""MPI-INF-3DHP in the layout of the MixSTE / P-STMO preprocessed files.

``data_train_3dhp.npz['data']``: ``{'S1 Seq1': [ {cam: {'data_3d': [T,17,3] mm,
'data_2d': [T,17,2] px}} ]}`` (camera frame, 2048x2048 images);
``data_test_3dhp.npz['data']``: ``{'TS1': {'data_3d', 'data_2d', 'valid'}}``
(TS1-TS4 2048x2048, TS5/TS6 1920x1080).  Joints in 3DHP order, pelvis at 14.
"""

from __future__ import annotations

import os

import numpy as np

from rtpca_jax import storage
from rtpca_jax.data import camera as cam_lib
from rtpca_jax.data.safe_npz import item, load_npz
from rtpca_jax.data.skeleton import MPI3DHP17
from rtpca_jax.data.sources.records import Sequence, check_shape, make_sequence

TRAIN_SUBJECTS = tuple(f"S{i}" for i in range(1, 9))
TEST_SUBJECTS = tuple(f"TS{i}" for i in range(1, 7))
FPS = {"TS1": 25, "TS2": 25, "TS3": 25, "TS4": 25, "TS5": 50, "TS6": 50}


def _size(seq: str) -> tuple[int, int]:
    return (1920, 1080) if seq in ("TS5", "TS6") else (2048, 2048)


def load_mpi_inf_3dhp(root, keypoints: str = "gt", subjects=None, actions=None, *,
                      downsample: int = 1) -> list[Sequence]:
    root = os.fspath(root)
    wanted = None if subjects is None else set(subjects)
    need_train = wanted is None or bool(wanted & set(TRAIN_SUBJECTS))
    need_test = wanted is None or bool(wanted & set(TEST_SUBJECTS))
    unknown = sorted((wanted or set()) - set(TRAIN_SUBJECTS) - set(TEST_SUBJECTS))
    if unknown:
        raise ValueError(f"MPI-INF-3DHP: unknown subject(s) {unknown}; train {TRAIN_SUBJECTS}, "
                         f"test {TEST_SUBJECTS}")
    out = []
    if need_train:
        path = storage.join(root, "data_train_3dhp.npz")
        data = item(load_npz(path, required=("data",))["data"], f"{path}[data]")
        for key in sorted(data):
            subject, seq = key.split(" ") if " " in key else (key, "")
            if wanted is not None and subject not in wanted:
                continue
            if actions is not None and seq not in actions:
                continue
            entry = data[key]
            views = entry[0] if isinstance(entry, (list, tuple)) else entry
            for cam in sorted(views, key=lambda c: int(c)):
                anim = views[cam]
                origin = f"{path} sequence {key!r} camera {cam}"
                for k in ("data_3d", "data_2d"):
                    if k not in anim:
                        raise ValueError(f"{origin}: missing key {k!r}")
                p3 = check_shape(anim["data_3d"], origin + " data_3d", 17, 3).astype(np.float64) / 1000.0
                p2 = check_shape(anim["data_2d"], origin + " data_2d", 17, 2).astype(np.float64)
                if len(p2) < len(p3):
                    raise ValueError(f"{origin}: 2D has {len(p2)} frames, shorter than the 3D ({len(p3)})")
                p2 = p2[: len(p3)]
                out.append(make_sequence(
                    subject=subject, action=seq, camera=int(cam), pose2d=cam_lib.normalize_screen(p2, 2048, 2048),
                    pose3d_cam=p3, fps=25, layout=MPI3DHP17.name, root=MPI3DHP17.root, intrinsics=None,
                    origin=origin, image_size=(2048, 2048), downsample=downsample,
                ))
    if need_test:
        path = storage.join(root, "data_test_3dhp.npz")
        data = item(load_npz(path, required=("data",))["data"], f"{path}[data]")
        for seq in sorted(data):
            if wanted is not None and seq not in wanted:
                continue
            anim = data[seq]
            origin = f"{path} sequence {seq!r}"
            for k in ("data_3d", "data_2d", "valid"):
                if k not in anim:
                    raise ValueError(f"{origin}: missing key {k!r}")
            w, h = _size(seq)
            p3 = check_shape(anim["data_3d"], origin + " data_3d", 17, 3).astype(np.float64) / 1000.0
            p2 = check_shape(anim["data_2d"], origin + " data_2d", 17, 2).astype(np.float64)
            valid = np.asarray(anim["valid"]).reshape(-1).astype(bool)
            if not len(p2) == len(p3) == len(valid):
                raise ValueError(f"{origin}: frame counts differ: 2D {len(p2)}, 3D {len(p3)}, valid {len(valid)}")
            out.append(make_sequence(
                subject=seq, action=seq, camera=0, pose2d=cam_lib.normalize_screen(p2, w, h),
                pose3d_cam=p3, fps=FPS.get(seq, 25), layout=MPI3DHP17.name, root=MPI3DHP17.root,
                intrinsics=None, origin=origin, valid=valid, image_size=(w, h), downsample=downsample,
            ))
    return out
