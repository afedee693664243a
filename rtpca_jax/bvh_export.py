"""Joint positions ``[T, 17, 3]`` (Human3.6M layout) as a BVH animation.

    write_bvh("poses.bvh", poses3d, fps=30.0)                       # predictions (camera frame)
    python -m rtpca_jax.inference ... --out poses.bvh

The file is Y-up, in metres, at the sequence's frame rate (Blender: File >
Import > Motion Capture (.bvh), Scale 1, Forward -Z, Up Y).  BVH has no
comment syntax and Blender refuses a file whose first line is not
``HIERARCHY``, so units and axes are stated here and in the README, not in
the file.

Skeleton
    The 17 joints with the bone lengths of the sequence: the median length of
    each bone over the frames, left and right averaged, so the skeleton is
    symmetric and rigid.  Where a joint has several children (pelvis: hips and
    spine; thorax: neck and shoulders) each branch hangs from a zero-offset
    pivot joint of its own (``Hips_RightHip``...), so every bone's direction
    is set independently and the joint positions are reproduced exactly even
    where the hip or shoulder triangle is not rigid (predictions never are).
    Leaves (ankles, wrists, head) end in a short End Site along their bone.
Rotations (inverse kinematics)
    The root's rotation is the body frame (hips line and spine).  Every other
    joint's local rotation is the swing that turns its bone from the rest
    direction to the observed one in its parent's frame, with no twist
    relative to the parent: deterministic, continuous while a bone stays less
    than 180 degrees from its rest direction relative to its parent (the rest
    pose is the natural standing pose: legs down, arms out, spine up, so no
    human pose reaches it).  Euler angles (``Zrotation Xrotation Yrotation``)
    take, per frame, the solution nearest the previous frame, unwrapped by
    whole turns: no jumps between frames.
Root translation
    The input's own root position (the origin for the model's root-relative
    output), or a ``trajectory[T, 3]`` the caller supplies.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from rtpca_jax import storage
from rtpca_jax.data.skeleton import H36M17

# BVH names of the 17 joints, in H36M order.
BVH_NAMES = ("Hips", "RightUpLeg", "RightLeg", "RightFoot", "LeftUpLeg", "LeftLeg", "LeftFoot",
             "Spine", "Thorax", "Neck", "Head", "LeftArm", "LeftForeArm", "LeftHand",
             "RightArm", "RightForeArm", "RightHand")
# rest directions of each bone (parent -> joint), Y-up, the body facing +Z
_REST_DIR = {
    1: (-1, 0, 0), 2: (0, -1, 0), 3: (0, -1, 0), 4: (1, 0, 0), 5: (0, -1, 0), 6: (0, -1, 0),
    7: (0, 1, 0), 8: (0, 1, 0), 9: (0, 1, 0), 10: (0, 1, 0),
    11: (1, 0, 0), 12: (1, 0, 0), 13: (1, 0, 0), 14: (-1, 0, 0), 15: (-1, 0, 0), 16: (-1, 0, 0),
}
SYMMETRIC = ((1, 4), (2, 5), (3, 6), (11, 14), (12, 15), (13, 16))
# input frames -> the BVH frame (Y up)
FRAMES = {
    "camera": np.diag([1.0, -1.0, -1.0]),  # x right, y down, z forward (predictions): face the viewer
    "z_up": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),  # world frames, Z up
    "y_up": np.eye(3),
}
MIN_BONE_M = 1e-4


@dataclasses.dataclass
class _Joint:
    name: str
    parent: int  # index in the BVH joint list (-1: root)
    h36m: int  # the H36M joint it sits on
    child: int  # the H36M joint its rotation aims at (-1: none)
    offset: np.ndarray


def bone_lengths(joints: np.ndarray) -> np.ndarray:
    """Median length of every bone over the frames, left and right averaged
    (index = child joint; the root's is 0)."""
    lengths = np.zeros(17)
    for j, p in enumerate(H36M17.parents):
        if p >= 0:
            lengths[j] = float(np.median(np.linalg.norm(joints[:, j] - joints[:, p], axis=-1)))
    for a, b in SYMMETRIC:
        lengths[a] = lengths[b] = 0.5 * (lengths[a] + lengths[b])
    return lengths


def _skeleton(lengths: np.ndarray) -> list[_Joint]:
    children = {j: [c for c, p in enumerate(H36M17.parents) if p == j] for j in range(17)}
    out: list[_Joint] = []

    def add(h36m: int, parent: int, offset) -> None:
        kids = children[h36m]
        if len(kids) > 1:  # one zero-offset pivot per branch
            out.append(_Joint(BVH_NAMES[h36m], parent, h36m, -1, np.asarray(offset, float)))
            me = len(out) - 1
            for c in kids:
                out.append(_Joint(f"{BVH_NAMES[h36m]}_{BVH_NAMES[c]}", me, h36m, c, np.zeros(3)))
                add(c, len(out) - 1, lengths[c] * np.asarray(_REST_DIR[c], float))
        else:
            out.append(_Joint(BVH_NAMES[h36m], parent, h36m, kids[0] if kids else -1, np.asarray(offset, float)))
            me = len(out) - 1
            for c in kids:
                add(c, me, lengths[c] * np.asarray(_REST_DIR[c], float))

    add(0, -1, np.zeros(3))
    return out


def _swing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotations ``[T,3,3]`` turning unit vectors ``a[T,3]`` onto ``b[T,3]`` by the
    shortest arc (Rodrigues)."""
    v = np.cross(a, b)
    c = np.sum(a * b, -1)
    if np.any(c < -1 + 1e-9):
        t = int(np.argmax(c < -1 + 1e-9))
        raise ValueError(f"frame {t}: a bone points exactly opposite to its rest direction relative to its "
                         f"parent; its rotation is undefined")
    vx = np.zeros(a.shape[:-1] + (3, 3))
    vx[..., 0, 1], vx[..., 0, 2], vx[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
    vx[..., 1, 0], vx[..., 2, 0], vx[..., 2, 1] = v[..., 2], -v[..., 1], v[..., 0]
    return np.eye(3) + vx + vx @ vx / (1.0 + c)[..., None, None]


def _body_frame(joints: np.ndarray) -> np.ndarray:
    """Root rotation: x along the hips line (right -> left), y up the spine
    (orthogonalised), z = x cross y (forward)."""
    x = joints[:, 4] - joints[:, 1]
    y = joints[:, 7] - joints[:, 0]
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    y = y - np.sum(y * x, -1, keepdims=True) * x
    y = y / np.linalg.norm(y, axis=-1, keepdims=True)
    return np.stack([x, y, np.cross(x, y)], axis=-1)


def _euler_zxy(r: np.ndarray) -> np.ndarray:
    """Degrees ``(z, x, y)`` with ``R = Rz @ Rx @ Ry``, per frame the solution
    nearest the previous frame's, unwrapped by whole turns."""
    sx = np.clip(r[:, 2, 1], -1.0, 1.0)
    x1 = np.arcsin(sx)
    cx = np.cos(x1)
    z1 = np.arctan2(-r[:, 0, 1], r[:, 1, 1])
    y1 = np.arctan2(-r[:, 2, 0], r[:, 2, 2])
    small = np.abs(cx) < 1e-8  # gimbal lock: put all of the z/y freedom in z
    if np.any(small):
        z1 = np.where(small, np.arctan2(r[:, 1, 0], r[:, 0, 0]), z1)
        y1 = np.where(small, 0.0, y1)
    a = np.stack([z1, x1, y1], -1)
    b = np.stack([z1 + np.pi, np.pi - x1, y1 + np.pi], -1)  # the other solution
    out = np.empty_like(a)
    prev = None
    for t in range(len(r)):
        best = None
        for cand in (a[t], b[t]):
            if prev is not None:
                cand = cand + 2 * np.pi * np.round((prev - cand) / (2 * np.pi))
            d = 0.0 if prev is None else float(np.abs(cand - prev).sum())
            if best is None or d < best[0]:
                best = (d, cand)
        out[t] = prev = best[1]
    return np.rad2deg(out)


def solve(joints: np.ndarray, lengths: Optional[np.ndarray] = None):
    """Skeleton and per-frame global rotations of every BVH joint:
    ``(skeleton, rotations[T, n, 3, 3])`` for Y-up joints ``[T, 17, 3]``."""
    lengths = bone_lengths(joints) if lengths is None else lengths
    skel = _skeleton(lengths)
    t = len(joints)
    glob = np.zeros((t, len(skel), 3, 3))
    for i, j in enumerate(skel):
        parent = glob[:, j.parent] if j.parent >= 0 else np.broadcast_to(np.eye(3), (t, 3, 3))
        if j.parent < 0:
            glob[:, i] = _body_frame(joints)
        elif j.child < 0:
            glob[:, i] = parent  # leaves and branching joints: no rotation of their own
        else:
            bone = joints[:, j.child] - joints[:, j.h36m]
            want = np.einsum("tji,tj->ti", parent, bone / np.linalg.norm(bone, axis=-1, keepdims=True))
            rest = np.asarray(_REST_DIR[j.child], float)
            glob[:, i] = parent @ _swing(np.broadcast_to(rest, want.shape), want)
    return skel, glob


def check_input(joints: np.ndarray, origin: str = "poses") -> np.ndarray:
    joints = np.asarray(joints, np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (17, 3):
        raise ValueError(f"{origin}: expected joints [T, 17, 3] (Human3.6M layout), got {joints.shape}")
    if len(joints) < 1:
        raise ValueError(f"{origin}: no frames")
    if not np.isfinite(joints).all():
        t, j, _ = np.argwhere(~np.isfinite(joints))[0]
        raise ValueError(f"{origin}: non-finite value at frame {t}, joint {H36M17.joints[j]}; fill or drop "
                         f"those frames first (BVH has no missing values)")
    for j, p in enumerate(H36M17.parents):
        if p >= 0:
            n = np.linalg.norm(joints[:, j] - joints[:, p], axis=-1)
            if n.min() < MIN_BONE_M:
                t = int(np.argmin(n))
                raise ValueError(f"{origin}: bone {H36M17.joints[p]} -> {H36M17.joints[j]} has length "
                                 f"{n[t] * 1000:.3f} mm at frame {t}; its direction (and rotation) is undefined")
    return joints


def to_bvh_text(joints: np.ndarray, fps: float, *, frame: str = "camera",
                trajectory: Optional[np.ndarray] = None) -> tuple[str, dict]:
    """BVH text of joints ``[T, 17, 3]`` in metres and a report: bone lengths,
    the largest per-frame rotation change (degrees) and where it happened.

    ``frame``: ``camera`` (the model's output: x right, y down, z forward),
    ``z_up`` or ``y_up`` (world frames).  ``trajectory[T, 3]``: root positions
    in the same frame (default: the root stays at the origin).  A sequence of
    one frame is written as a one-frame animation."""
    if frame not in FRAMES:
        raise ValueError(f"frame={frame!r}: one of {sorted(FRAMES)}")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps={fps}: must be a positive frame rate")
    joints = check_input(joints)
    m = FRAMES[frame]
    y_up = joints @ m.T
    root = y_up[:, 0]  # the input's own root: zero for the model's root-relative output
    if trajectory is not None:
        trajectory = np.asarray(trajectory, np.float64)
        if trajectory.shape != (len(joints), 3) or not np.isfinite(trajectory).all():
            raise ValueError(f"trajectory: expected finite [T={len(joints)}, 3], got {trajectory.shape}")
        root = trajectory @ m.T
    rel = y_up - y_up[:, :1]
    lengths = bone_lengths(rel)
    skel, glob = solve(rel, lengths)
    local = np.empty_like(glob)
    for i, j in enumerate(skel):
        local[:, i] = glob[:, i] if j.parent < 0 else np.swapaxes(glob[:, j.parent], -1, -2) @ glob[:, i]
    eulers = [_euler_zxy(local[:, i]) for i in range(len(skel))]
    # report: largest change of any joint's global rotation between frames
    worst = (0.0, 0, "")
    if len(joints) > 1:
        for i, j in enumerate(skel):
            d = np.swapaxes(glob[:-1, i], -1, -2) @ glob[1:, i]
            ang = np.degrees(np.arccos(np.clip((np.trace(d, axis1=-2, axis2=-1) - 1) / 2, -1, 1)))
            k = int(np.argmax(ang))
            if ang[k] > worst[0]:
                worst = (float(ang[k]), k + 1, j.name)
    lines = ["HIERARCHY"]
    children = {i: [k for k, c in enumerate(skel) if c.parent == i] for i in range(len(skel))}

    def emit(i: int, depth: int) -> None:
        j = skel[i]
        pad = "  " * depth
        lines.append(f"{pad}{'ROOT' if j.parent < 0 else 'JOINT'} {j.name}")
        lines.append(pad + "{")
        lines.append(f"{pad}  OFFSET {j.offset[0]:.6f} {j.offset[1]:.6f} {j.offset[2]:.6f}")
        chans = "Zrotation Xrotation Yrotation"
        lines.append(f"{pad}  CHANNELS 6 Xposition Yposition Zposition {chans}" if j.parent < 0
                     else f"{pad}  CHANNELS 3 {chans}")
        for c in children[i]:
            emit(c, depth + 1)
        if not children[i]:  # a leaf: End Site a quarter of its bone further on
            end = 0.25 * j.offset if np.linalg.norm(j.offset) > 0 else np.array([0.0, 0.02, 0.0])
            lines.extend([f"{pad}  End Site", pad + "  {",
                          f"{pad}    OFFSET {end[0]:.6f} {end[1]:.6f} {end[2]:.6f}", pad + "  }"])
        lines.append(pad + "}")

    emit(0, 0)
    lines += ["MOTION", f"Frames: {len(joints)}", f"Frame Time: {1.0 / fps:.8f}"]
    cols = [root] + eulers
    motion = np.concatenate(cols, axis=1)
    lines += [" ".join(f"{v:.6f}" for v in row) for row in motion]
    report = {"frames": len(joints), "fps": float(fps),
              "bone_lengths_m": {H36M17.joints[k]: float(lengths[k]) for k in range(1, 17)},
              "max_rotation_change_deg": worst[0], "max_rotation_change_frame": worst[1],
              "max_rotation_change_joint": worst[2]}
    return "\n".join(lines) + "\n", report


def write_bvh(path: str, joints: np.ndarray, fps: float, **kw) -> dict:
    """Write :func:`to_bvh_text` to ``path`` (any storage path, atomically)."""
    text, report = to_bvh_text(joints, fps, **kw)
    storage.write_text(path, text)
    return report


def read_h36m(path: str, frame: str = "camera") -> tuple[np.ndarray, float]:
    """A BVH written here back as joints ``[T, 17, 3]`` in ``frame`` and its
    frame rate, through the product's own BVH reader and forward kinematics."""
    from rtpca_jax.data.sources.bvh import forward_kinematics, map_joints, parse_bvh

    bvh = parse_bvh(path)
    pos = forward_kinematics(bvh)
    joints = map_joints(pos, bvh.names, BVH_NAMES, path)
    return joints @ FRAMES[frame], round(1.0 / bvh.frame_time, 6)
