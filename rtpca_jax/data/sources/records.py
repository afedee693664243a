"""The record every source produces."""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass
class Sequence:
    """One sequence seen by one camera.

    pose2d[T,J,2]: normalised screen coordinates (x / w * 2 - 1, y / w * 2 - h / w).
    pose3d[T,J,3]: camera frame, root-relative, metres; the root joint is exactly 0.
    trajectory[T,3]: the root joint in the camera frame, metres.
    intrinsics[9]: fx, fy, cx, cy, k1, k2, k3, p1, p2 in normalised screen units.
    valid[T]: frames with valid annotation (MPI-INF-3DHP test); None = all valid.
    """

    subject: str
    action: str
    camera: int
    pose2d: np.ndarray
    pose3d: Optional[np.ndarray]
    trajectory: Optional[np.ndarray]
    intrinsics: Optional[np.ndarray]
    fps: float
    layout: str
    valid: Optional[np.ndarray] = None
    image_size: Optional[tuple[int, int]] = None  # (width, height) in pixels

    @property
    def num_frames(self) -> int:
        return int(self.pose2d.shape[0])

    @property
    def key(self) -> str:
        return f"{self.subject}/{self.action}/{self.camera}"


def check_finite(arr: np.ndarray, origin: str) -> None:
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{origin}: non-finite value (NaN or inf) at index {tuple(int(i) for i in bad)}")


def check_shape(arr, origin: str, joints: int, dims: int) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 3 or arr.shape[1] != joints or arr.shape[2] < dims:
        raise ValueError(f"{origin}: expected shape [T, {joints}, {dims}], got {tuple(arr.shape)}")
    return arr[..., :dims]


def make_sequence(*, subject, action, camera, pose2d, pose3d_cam, fps, layout, root, intrinsics,
                  origin, valid=None, image_size=None, downsample=1) -> Sequence:
    """Build a record from camera-frame 3D (or None) and normalised 2D."""
    check_finite(pose2d, f"{origin} 2D")
    traj = pose3d = None
    if pose3d_cam is not None:
        check_finite(pose3d_cam, f"{origin} 3D")
        traj = pose3d_cam[:, root].astype(np.float32)
        pose3d = (pose3d_cam - pose3d_cam[:, root:root + 1]).astype(np.float32)
        pose3d[:, root] = 0.0
        pose3d = pose3d[::downsample]
        traj = traj[::downsample]
    return Sequence(
        subject=subject, action=action, camera=camera,
        pose2d=np.asarray(pose2d, np.float32)[::downsample], pose3d=pose3d, trajectory=traj,
        intrinsics=None if intrinsics is None else np.asarray(intrinsics, np.float32),
        fps=float(fps) / downsample, layout=layout,
        valid=None if valid is None else np.asarray(valid, bool)[::downsample],
        image_size=image_size,
    )
