"""Joint layouts: names, parents, the left/right pairs used by flips, and the
per-joint weights of the training loss."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str
    joints: tuple[str, ...]
    parents: tuple[int, ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    root: int = 0
    # Weights of the training loss's per-joint terms (the official code's: limb
    # ends count more); None for layouts that are only ever an input.
    joint_weights: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.joint_weights is not None and len(self.joint_weights) != len(self.joints):
            raise ValueError(f"layout {self.name}: {len(self.joint_weights)} joint weights for {len(self.joints)} joints")

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    @property
    def flip_permutation(self) -> np.ndarray:
        """``perm`` with ``pose_flipped = pose[..., perm, :]`` (left <-> right)."""
        perm = np.arange(self.num_joints)
        perm[list(self.left)] = self.right
        perm[list(self.right)] = self.left
        return perm

    @property
    def edges(self) -> tuple[tuple[int, int], ...]:
        return tuple((p, j) for j, p in enumerate(self.parents) if p >= 0)


H36M17 = Layout(
    "h36m17",
    ("pelvis", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
     "spine", "thorax", "neck_nose", "head", "left_shoulder", "left_elbow", "left_wrist",
     "right_shoulder", "right_elbow", "right_wrist"),
    (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15),
    left=(4, 5, 6, 11, 12, 13),
    right=(1, 2, 3, 14, 15, 16),
    joint_weights=(1, 1, 2.5, 2.5, 1, 2.5, 2.5, 1, 1, 1, 1.5, 1.5, 4, 4, 1.5, 4, 4),
)

# Human3.6M's 32 mocap joints reduce to the 17 above by keeping these.
H36M32_TO_17 = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)

HUMANEVA15 = Layout(
    "humaneva15",
    ("pelvis", "thorax", "left_shoulder", "left_elbow", "left_wrist", "right_shoulder",
     "right_elbow", "right_wrist", "left_hip", "left_knee", "left_ankle", "right_hip",
     "right_knee", "right_ankle", "head"),
    (-1, 0, 1, 2, 3, 1, 5, 6, 0, 8, 9, 0, 11, 12, 1),
    left=(2, 3, 4, 8, 9, 10),
    right=(5, 6, 7, 11, 12, 13),
    joint_weights=(1, 1, 2.5, 2.5, 1, 2.5, 2.5, 1, 1.5, 1.5, 4, 4, 1.5, 4, 4),
)

# MPI-INF-3DHP's 17 evaluation joints in the order of the MixSTE / P-STMO files;
# the pelvis (root) is index 14.
MPI3DHP17 = Layout(
    "3dhp17",
    ("head_top", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
     "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip",
     "left_knee", "left_ankle", "pelvis", "spine", "head"),
    (16, 15, 1, 2, 3, 1, 5, 6, 14, 8, 9, 14, 11, 12, -1, 14, 1),
    left=(5, 6, 7, 11, 12, 13),
    right=(2, 3, 4, 8, 9, 10),
    root=14,
    # the H36M weights carried over by joint: limb ends 4, elbows/knees 2.5 or 1.5
    joint_weights=(1, 1, 1.5, 4, 4, 1.5, 4, 4, 1, 2.5, 2.5, 1, 2.5, 2.5, 1, 1, 1),
)

COCO17 = Layout(
    "coco17",
    ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
     "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
     "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"),
    (-1, 0, 0, 1, 2, 0, 0, 5, 6, 7, 8, 5, 6, 11, 12, 13, 14),
    left=(1, 3, 5, 7, 9, 11, 13, 15),
    right=(2, 4, 6, 8, 10, 12, 14, 16),
)

LAYOUTS = {l.name: l for l in (H36M17, HUMANEVA15, MPI3DHP17, COCO17)}


def get_layout(name: str) -> Layout:
    if name not in LAYOUTS:
        raise ValueError(f"unknown joint layout {name!r}; known: {sorted(LAYOUTS)}")
    return LAYOUTS[name]


def loss_weights(layout: Layout, override=None) -> tuple[float, ...]:
    """The training loss's per-joint weights: ``override`` (a config's
    ``train.joint_weights``) when given, else the layout's own."""
    weights = layout.joint_weights if override is None else tuple(override)
    if weights is None:
        raise ValueError(f"joint layout {layout.name} has no training loss weights; set train.joint_weights")
    if len(weights) != layout.num_joints or any(w < 0 for w in weights):
        raise ValueError(f"train.joint_weights={tuple(weights)!r}: expected {layout.num_joints} non-negative weights, "
                         f"one per joint of {layout.name}")
    return tuple(float(w) for w in weights)


def flip_pose(pose: np.ndarray, layout: Layout) -> np.ndarray:
    """Mirror ``pose[..., J, D]`` horizontally: negate x, swap left and right."""
    out = np.array(pose[..., layout.flip_permutation, :], copy=True)
    out[..., 0] *= -1
    return out
