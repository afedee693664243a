"""BVH motion capture: parser, forward kinematics, mapping to the 17
Human3.6M joints, and deterministic virtual cameras that film the motion."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence as Seq

import numpy as np

from rtpca_jax import storage

from rtpca_jax.data import camera as cam_lib
from rtpca_jax.data.skeleton import H36M17
from rtpca_jax.data.sources.records import Sequence, make_sequence

# CMU (cgspeed-style) joint names -> H36M-17, in H36M order.  A pair means the
# midpoint.  See the README's dataset section for how close each joint is.
CMU_TO_H36M17 = (
    ("LeftUpLeg", "RightUpLeg"),  # pelvis: level with the hip joints
    "RightUpLeg", "RightLeg", "RightFoot",
    "LeftUpLeg", "LeftLeg", "LeftFoot",
    "Spine", "Neck", "Head", "Head_end",
    "LeftArm", "LeftForeArm", "LeftHand",
    "RightArm", "RightForeArm", "RightHand",
)
CMU_UNIT_TO_METRES = 0.0254 / 0.45  # CMU ASF length unit (1/0.45 inch)
# BVH is Y-up; the product's world frame is Z-up like Human3.6M's.
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


@dataclasses.dataclass
class BvhJoint:
    name: str
    parent: int
    offset: np.ndarray
    channels: tuple[str, ...]
    is_end: bool = False


@dataclasses.dataclass
class Bvh:
    joints: list[BvhJoint]
    frame_time: float
    motion: np.ndarray  # [T, channels]

    @property
    def names(self) -> list[str]:
        return [j.name for j in self.joints]


def parse_bvh(path: str | os.PathLike) -> Bvh:
    """Parse a BVH file; raises ValueError naming the file and the problem."""
    path = os.fspath(path)
    if not storage.isfile(path):
        raise ValueError(f"{path}: file not found")
    text = storage.read_bytes(path).decode("utf-8", errors="replace")
    head, sep, motion_text = text.partition("MOTION")
    if not sep:
        raise ValueError(f"{path}: no MOTION section; not a BVH file")
    tokens = head.split()
    if not tokens or tokens[0] != "HIERARCHY":
        raise ValueError(f"{path}: does not start with HIERARCHY; not a BVH file")
    joints: list[BvhJoint] = []
    stack: list[int] = []
    i = 1
    try:
        while i < len(tokens):
            tok = tokens[i]
            if tok in ("ROOT", "JOINT"):
                joints.append(BvhJoint(tokens[i + 1], stack[-1] if stack else -1, np.zeros(3), ()))
                i += 2
            elif tok == "End":  # End Site
                parent = stack[-1]
                joints.append(BvhJoint(joints[parent].name + "_end", parent, np.zeros(3), (), True))
                i += 2
            elif tok == "{":
                stack.append(len(joints) - 1)
                i += 1
            elif tok == "}":
                stack.pop()
                i += 1
            elif tok == "OFFSET":
                joints[stack[-1]].offset = np.array([float(t) for t in tokens[i + 1:i + 4]])
                i += 4
            elif tok == "CHANNELS":
                n = int(tokens[i + 1])
                joints[stack[-1]].channels = tuple(tokens[i + 2:i + 2 + n])
                i += 2 + n
            else:
                raise ValueError(f"unexpected token {tok!r}")
    except (IndexError, ValueError) as e:
        raise ValueError(f"{path}: malformed HIERARCHY ({e})") from e
    lines = motion_text.strip().splitlines()
    try:
        n_frames = int(lines[0].split(":")[1])
        frame_time = float(lines[1].split(":")[1])
        motion = np.array([[float(v) for v in line.split()] for line in lines[2:2 + n_frames]])
    except (IndexError, ValueError) as e:
        raise ValueError(f"{path}: malformed MOTION section ({e})") from e
    n_channels = sum(len(j.channels) for j in joints)
    if motion.shape != (n_frames, n_channels):
        raise ValueError(f"{path}: MOTION has shape {motion.shape}, expected ({n_frames}, {n_channels}) "
                         f"from the header's Frames and CHANNELS")
    return Bvh(joints, frame_time, motion)


def _axis_rotation(axis: str, degrees: np.ndarray) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    if axis == "X":
        m = [[o, z, z], [z, c, -s], [z, s, c]]
    elif axis == "Y":
        m = [[c, z, s], [z, o, z], [-s, z, c]]
    else:
        m = [[c, -s, z], [s, c, z], [z, z, o]]
    return np.stack([np.stack(r, -1) for r in m], -2)


def forward_kinematics(bvh: Bvh) -> np.ndarray:
    """World positions ``[T, joints (incl. end sites), 3]`` in file units.

    A joint's local rotation is the product of its rotation channels in file
    order (``Zrotation Yrotation Xrotation`` -> ``Rz @ Ry @ Rx``), its world
    rotation ``G_parent @ local`` and its position ``p_parent + G_parent @ offset``.
    """
    t = bvh.motion.shape[0]
    pos = np.zeros((t, len(bvh.joints), 3))
    rot = np.zeros((t, len(bvh.joints), 3, 3))
    col = 0
    for ji, j in enumerate(bvh.joints):
        local = np.broadcast_to(np.eye(3), (t, 3, 3)).copy()
        trans = np.zeros((t, 3))
        for ch in j.channels:
            v = bvh.motion[:, col]
            col += 1
            if ch.endswith("position"):
                trans[:, "XYZ".index(ch[0])] = v
            elif ch.endswith("rotation"):
                local = local @ _axis_rotation(ch[0], v)
            else:
                raise ValueError(f"unknown BVH channel {ch!r} of joint {j.name}")
        if j.parent < 0:
            pos[:, ji] = j.offset + trans
            rot[:, ji] = local
        else:
            g = rot[:, j.parent]
            pos[:, ji] = pos[:, j.parent] + g @ j.offset
            rot[:, ji] = g @ local
    return pos


def map_joints(positions: np.ndarray, names: list[str], joint_map=CMU_TO_H36M17,
               origin: str = "") -> np.ndarray:
    """Pick / average named joints into a target layout: ``[T, len(joint_map), 3]``."""
    index = {n: i for i, n in enumerate(names)}
    out = []
    for entry in joint_map:
        parts = (entry,) if isinstance(entry, str) else tuple(entry)
        missing = [p for p in parts if p not in index]
        if missing:
            raise ValueError(f"{origin}: BVH has no joint(s) {missing} needed by the joint map; "
                             f"it has {names}")
        out.append(np.mean([positions[:, index[p]] for p in parts], axis=0))
    return np.stack(out, axis=1)


def load_bvh_world(path, joint_map=CMU_TO_H36M17, scale: float = CMU_UNIT_TO_METRES,
                   skip_frames: int = 0) -> tuple[np.ndarray, float]:
    """17-joint world positions in metres (Z up) and the frame rate of a BVH file."""
    bvh = parse_bvh(path)
    pos = forward_kinematics(bvh)[skip_frames:] * scale
    pos = pos @ Y_UP_TO_Z_UP.T
    # Frame Time is written with few decimals (0.008333333): round the rate.
    return map_joints(pos, bvh.names, joint_map, os.fspath(path)), round(1.0 / bvh.frame_time, 3)


# Virtual cameras: Human3.6M's four intrinsics, in the four corners around the
# clip's mean root position, far enough to keep the whole trajectory in view.
CAMERA_AZIMUTHS_DEG = (45.0, 135.0, 225.0, 315.0)
CAMERA_HEIGHTS_M = (1.55, 1.60, 1.50, 1.58)
LOOK_AT_HEIGHT_M = 0.95


def virtual_cameras(world: np.ndarray, root: int = 0) -> list[cam_lib.Camera]:
    """Four deterministic cameras for a clip of world positions ``[T,J,3]`` (Z up).

    Each stands at ``4.5 m + 2.5 x`` the largest horizontal distance of the root
    from its mean position, so the subject stays inside the image.
    """
    centre = world[:, root, :2].mean(axis=0)
    spread = float(np.max(np.linalg.norm(world[:, root, :2] - centre, axis=-1)))
    distance = 4.5 + 2.5 * spread
    target = np.array([centre[0], centre[1], LOOK_AT_HEIGHT_M])
    cams = []
    for intr, az, height in zip(cam_lib.h36m_intrinsic_cameras(), CAMERA_AZIMUTHS_DEG, CAMERA_HEIGHTS_M):
        a = np.deg2rad(az)
        position = np.array([centre[0] + distance * np.cos(a), centre[1] + distance * np.sin(a), height])
        cams.append(dataclasses.replace(intr, rotation=cam_lib.look_at(position, target), translation=position))
    return cams


def film(world: np.ndarray, fps: float, *, subject: str, action: str, origin: str,
         cameras: Optional[Seq[int]] = None, downsample: int = 1) -> list[Sequence]:
    """Sequences of a 17-joint world clip seen by its virtual cameras."""
    out = []
    for ci, cam in enumerate(virtual_cameras(world)):
        if cameras is not None and ci not in cameras:
            continue
        x_cam = cam.to_camera(world.astype(np.float64))
        out.append(make_sequence(
            subject=subject, action=action, camera=ci, pose2d=cam.project(x_cam), pose3d_cam=x_cam,
            fps=fps, layout=H36M17.name, root=0, intrinsics=cam.intrinsics,
            origin=f"{origin} camera {ci}", image_size=(cam.res_w, cam.res_h), downsample=downsample,
        ))
    return out


def load_bvh(root, keypoints: str = "gt", subjects=None, actions=None, *, downsample: int = 1,
             joint_map=CMU_TO_H36M17, scale: float = CMU_UNIT_TO_METRES) -> list[Sequence]:
    """Every ``.bvh`` file under ``root`` (or the file ``root``) filmed by four
    virtual cameras.  Subject = file name without extension; action = the same
    (use ``subjects`` to pick files)."""
    root = os.fspath(root)
    if storage.isdir(root):
        files = [storage.join(root, f) for f in storage.listdir(root) if f.lower().endswith(".bvh")]
        if not files:
            raise ValueError(f"{root}: no .bvh files found")
    elif storage.isfile(root):
        files = [root]
    else:
        raise ValueError(f"{root}: no such file or folder")
    names = [os.path.splitext(storage.basename(f))[0] for f in files]
    if subjects is not None:
        unknown = [s for s in subjects if s not in names]
        if unknown:
            raise ValueError(f"{root}: unknown BVH clip(s) {unknown}; available: {names}")
    out = []
    for f, name in zip(files, names):
        if subjects is not None and name not in subjects:
            continue
        world, fps = load_bvh_world(f, joint_map, scale)
        out += film(world, fps, subject=name, action=name, origin=f, downsample=downsample)
    return out
