"""The shipped CMU motion-capture dataset (``rtpca_jax/assets/cmu_mocap.npz``).

Built by ``datasets/build_cmu_mocap.py`` from 39 CMU clips: 17 Human3.6M
joints in metres (world frame, Z up) at 60 fps.  Filmed at load time by four
deterministic virtual cameras with Human3.6M intrinsics
(:func:`rtpca_jax.data.sources.bvh.virtual_cameras`).

Split by clip, as the clip names say: the 32 ``*_train_*`` clips plus the
CMU 01_01 playground clip train; the 6 ``*_test_*`` clips (basketball,
jumping, running, soccer, walking, washwindow) test.  Subject = clip name,
action = the clip's action.
"""

from __future__ import annotations

import importlib.resources

import numpy as np

from rtpca_jax import storage
from rtpca_jax.data.safe_npz import load_npz
from rtpca_jax.data.sources.bvh import film
from rtpca_jax.data.sources.records import Sequence

ASSET = "cmu_mocap.npz"


def asset_path() -> str:
    return str(importlib.resources.files("rtpca_jax") / "assets" / ASSET)


def read_clips(path=None) -> list[dict]:
    path = path or asset_path()
    if storage.isdir(path):
        path = storage.join(path, ASSET)
    d = load_npz(path, required=("names", "actions", "splits", "offsets", "world", "fps"))
    off = d["offsets"]
    return [
        dict(name=str(n), action=str(a), split=str(s), world=d["world"][off[i]:off[i + 1]].astype(np.float64),
             fps=float(d["fps"]))
        for i, (n, a, s) in enumerate(zip(d["names"], d["actions"], d["splits"]))
    ]


def train_test_subjects(path=None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    clips = read_clips(path)
    return (tuple(c["name"] for c in clips if c["split"] == "train"),
            tuple(c["name"] for c in clips if c["split"] == "test"))


def load_cmu(root=None, keypoints: str = "gt", subjects=None, actions=None, *,
             downsample: int = 1, split=None) -> list[Sequence]:
    """Sequences of the shipped clips (``root``: another built file, optional).

    ``subjects`` may name clips, or be ``'train'`` / ``'test'`` for the split."""
    clips = read_clips(root)
    names = [c["name"] for c in clips]
    if isinstance(subjects, str):
        split, subjects = subjects, None
    if subjects is not None:
        unknown = [s for s in subjects if s not in names]
        if unknown:
            raise ValueError(f"{root or asset_path()}: unknown clip(s) {unknown}; available: {names}")
    out = []
    for c in clips:
        if split is not None and c["split"] != split:
            continue
        if subjects is not None and c["name"] not in subjects:
            continue
        if actions is not None and c["action"] not in actions:
            continue
        out += film(c["world"], c["fps"], subject=c["name"], action=c["action"],
                    origin=f"{root or asset_path()} clip {c['name']}", downsample=downsample)
    return out
