"""Readers of the standard VideoPose3D files: Human3.6M, HumanEva-I, custom 2D."""

from __future__ import annotations

import os
from typing import Iterable, Optional

import numpy as np

from rtpca_jax import storage
from rtpca_jax.data import camera as cam_lib
from rtpca_jax.data.safe_npz import item, load_npz
from rtpca_jax.data.skeleton import H36M17, H36M32_TO_17, HUMANEVA15
from rtpca_jax.data.sources.records import Sequence, check_shape, make_sequence

H36M_TRAIN_SUBJECTS = ("S1", "S5", "S6", "S7", "S8")
H36M_TEST_SUBJECTS = ("S9", "S11")
# S11 'Directions' (camera 54138969) has a corrupt video; the literature drops
# the action for S11 altogether, and so do we unless asked otherwise.
H36M_EXCLUDED = (("S11", "Directions"),)

HUMANEVA_TRAIN_SUBJECTS = ("Train/S1", "Train/S2", "Train/S3")
HUMANEVA_TEST_SUBJECTS = ("Validate/S1", "Validate/S2", "Validate/S3")
HUMANEVA_ACTIONS = ("Walk", "Jog", "Box")


def _action_matches(action: str, wanted: Optional[Iterable[str]]) -> bool:
    """An action matches a wanted name exactly or by its base name (before the
    first space: 'Walking 1' and 'Walk 1 chunk0' match 'Walking' / 'Walk')."""
    if wanted is None:
        return True
    base = action.split(" ")[0]
    return action in wanted or base in wanted


def _select(available: Iterable[str], wanted: Optional[Iterable[str]], what: str, origin: str) -> list[str]:
    available = list(available)
    if wanted is None:
        return available
    wanted = list(wanted)
    unknown = [w for w in wanted if w not in available]
    if unknown:
        raise ValueError(f"{origin}: unknown {what}(s) {unknown}; available: {sorted(available)}")
    return wanted


def _check_actions(pos3d: dict, subjects: list[str], actions, origin: str) -> None:
    """An action filter entry that matches no action of any selected subject is an error."""
    if actions is None:
        return
    present = [a for s in subjects for a in pos3d[s]]
    missing = [w for w in actions if not any(_action_matches(a, [w]) for a in present)]
    if missing:
        raise ValueError(f"{origin}: subject(s) {subjects} have no action(s) {missing}; "
                         f"available: {sorted(set(present))}")


def _subset(arrays: list, subset: float) -> list:
    if subset >= 1.0:
        return arrays
    n = max(1, int(round(len(arrays[0]) * subset)))
    return [a[:n] for a in arrays]


def _paired(root: str, dataset: str, keypoints: str) -> tuple[str, str, dict, dict, dict]:
    root = os.fspath(root)
    p3 = storage.join(root, f"data_3d_{dataset}.npz")
    p2 = storage.join(root, f"data_2d_{dataset}_{keypoints}.npz")
    for p in (p3, p2):
        if not storage.isfile(p):
            raise ValueError(f"{p}: file not found (looked for the VideoPose3D {dataset} files in {root})")
    pos3d = item(load_npz(p3, required=("positions_3d",))["positions_3d"], f"{p3}[positions_3d]")
    f2 = load_npz(p2, required=("positions_2d",))
    pos2d = item(f2["positions_2d"], f"{p2}[positions_2d]")
    meta = item(f2["metadata"], f"{p2}[metadata]") if "metadata" in f2 else {}
    return p3, p2, pos3d, pos2d, meta


def _views(p2: str, pos2d: dict, subject: str, action: str, cams: list,
           world: np.ndarray, joints: int, fps: float, layout: str, subset: float,
           downsample: int) -> list[Sequence]:
    """One record per camera view of a (subject, action): 3D world -> camera
    frame, 2D (pixels) truncated to the mocap length and normalised.  A view
    that is None or empty (absent in some HumanEva files) is skipped."""
    views = pos2d[subject].get(action)
    if views is None:
        raise ValueError(f"{p2}: subject {subject} has no 2D keypoints for action {action!r}")
    if len(views) != len(cams):
        raise ValueError(f"{p2} subject {subject} action {action!r}: {len(views)} camera views "
                         f"of 2D keypoints, expected {len(cams)} (camera-count mismatch)")
    out = []
    for ci, (cam, kp) in enumerate(zip(cams, views)):
        if kp is None or len(kp) == 0:
            continue
        origin = f"{p2} subject {subject} action {action!r} camera {ci}"
        kp = check_shape(kp, origin, joints, 2)
        if len(kp) < len(world):
            raise ValueError(f"{origin}: 2D has {len(kp)} frames, shorter than the 3D ({len(world)} frames)")
        kp, world_c = _subset([kp[: len(world)], cam.to_camera(world)], subset)
        out.append(make_sequence(
            subject=subject, action=action, camera=ci,
            pose2d=cam_lib.normalize_screen(kp.astype(np.float64), cam.res_w, cam.res_h),
            pose3d_cam=world_c, fps=fps, layout=layout, root=0, intrinsics=cam.intrinsics, origin=origin,
            image_size=(cam.res_w, cam.res_h), downsample=downsample,
        ))
    return out


def _load_paired(root, dataset: str, keypoints: str, subjects, actions, *, cameras, joints: int, fps: float,
                 layout: str, subset: float, downsample: int, exclude=(), reduce=None) -> list[Sequence]:
    """The subject / action loop shared by the VideoPose3D 3D+2D datasets.

    ``reduce``: {source joint count: indices kept} for 3D arrays stored with
    more joints (Human3.6M's 32 -> 17); ``exclude``: (subject, action base
    name) pairs left out."""
    p3, p2, pos3d, pos2d, _ = _paired(root, dataset, keypoints)
    out = []
    chosen = _select(pos3d.keys(), subjects, "subject", p3)
    _check_actions(pos3d, chosen, actions, p3)
    for subject in chosen:
        if subject not in pos2d:
            raise ValueError(f"{p2}: subject {subject} has no 2D keypoints")
        cams = cameras(subject)
        for action in [a for a in pos3d[subject] if _action_matches(a, actions)]:
            if any(subject == s and action.split(" ")[0] == a for s, a in exclude):
                continue
            world = np.asarray(pos3d[subject][action])
            if reduce and world.ndim == 3 and world.shape[1] in reduce:
                world = world[:, list(reduce[world.shape[1]])]
            world = check_shape(world, f"{p3} subject {subject} action {action!r}", joints, 3).astype(np.float64)
            out += _views(p2, pos2d, subject, action, cams, world, joints, fps, layout, subset, downsample)
    return out


def load_h36m(root, keypoints: str = "gt", subjects=None, actions=None, *, downsample: int = 1,
              subset: float = 1.0, exclude=H36M_EXCLUDED) -> list[Sequence]:
    """Human3.6M from ``data_3d_h36m.npz`` and ``data_2d_h36m_<keypoints>.npz``.

    3D world positions (32 or 17 joints, metres) go to each of the four camera
    frames with the public camera parameters; 2D (pixels) is truncated to the
    mocap length and normalised with each camera's resolution.
    """
    return _load_paired(root, "h36m", keypoints, subjects, actions, cameras=cam_lib.h36m_cameras, joints=17,
                        fps=50, layout=H36M17.name, subset=subset, downsample=downsample, exclude=exclude,
                        reduce={32: H36M32_TO_17})


def load_humaneva15(root, keypoints: str = "gt", subjects=None, actions=None, *,
                    downsample: int = 1, subset: float = 1.0) -> list[Sequence]:
    """HumanEva-I (15 joints) from ``data_3d_humaneva15.npz`` and
    ``data_2d_humaneva15_<keypoints>.npz`` (subjects ``Train/S1`` ...,
    ``Validate/S1`` ...; actions such as ``'Walk 1 chunk0'``).  Entries with no
    3D (the unlabeled parts) are skipped; missing camera views (None or empty)
    are skipped."""
    return _load_paired(root, "humaneva15", keypoints, subjects, actions, cameras=cam_lib.humaneva_cameras,
                        joints=15, fps=60, layout=HUMANEVA15.name, subset=subset, downsample=downsample)


def load_custom(root, keypoints: str = "detectron_pt_coco", subjects=None, actions=None, *,
                downsample: int = 1) -> list[Sequence]:
    """2D-only VideoPose3D custom files: ``positions_2d[video]['custom'] = [kp[T,J,2+]]``
    and ``metadata['video_metadata'][video] = {'w': .., 'h': ..}``.  ``root`` is the
    file or the folder holding ``data_2d_custom_<keypoints>.npz``."""
    path = os.fspath(root)
    if storage.isdir(path):
        path = storage.join(path, f"data_2d_custom_{keypoints}.npz")
    f = load_npz(path, required=("positions_2d", "metadata"))
    pos2d = item(f["positions_2d"], f"{path}[positions_2d]")
    meta = item(f["metadata"], f"{path}[metadata]")
    if "video_metadata" not in meta:
        raise ValueError(f"{path}[metadata]: missing key 'video_metadata' (per-video w and h)")
    layout = {"coco": "coco17", "h36m": "h36m17"}.get(str(meta.get("layout_name", "coco")), "coco17")
    joints = int(meta.get("num_joints", 17))
    out = []
    for video in _select(pos2d.keys(), subjects, "video", path):
        vm = meta["video_metadata"].get(video)
        if vm is None or "w" not in vm or "h" not in vm:
            raise ValueError(f"{path}[metadata][video_metadata]: no width/height for video {video!r}")
        for action, views in pos2d[video].items():
            if not _action_matches(action, actions):
                continue
            for ci, kp in enumerate(views):
                origin = f"{path} video {video!r} {action} view {ci}"
                kp = check_shape(kp, origin, joints, 2).astype(np.float64)
                out.append(make_sequence(
                    subject=video, action=action, camera=ci,
                    pose2d=cam_lib.normalize_screen(kp, int(vm["w"]), int(vm["h"])),
                    pose3d_cam=None, fps=float(vm.get("fps", 30.0)), layout=layout, root=0,
                    intrinsics=None, origin=origin, image_size=(int(vm["w"]), int(vm["h"])),
                    downsample=downsample,
                ))
    return out
