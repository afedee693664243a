"""3D poses from a user's own 2D keypoints, any length.

    python -m rtpca_jax.inference --checkpoint runs/default --keypoints video.json \
        --out poses3d.npz [--render out.gif] [--width 1920 --height 1080]

Inputs (by file type):

* COCO-17 JSON as detectors write it: a list of frames; a frame is a list of
  people, or a dict with ``people`` / ``instances`` / ``annotations``; a person
  carries ``keypoints`` = 17 x (x, y, score) (flat or nested) and optionally
  ``score``.  The most confident person of each frame is taken.
* AlphaPose Halpe-26 JSON: a list of ``{image_id, keypoints (26 x 3), score,
  idx}``; frames are ordered by the number in ``image_id``.
* the VideoPose3D custom ``.npz`` (its first video unless ``--video`` names one).
* a plain ``.npy`` of ``[T, 17, 2|3]`` H36M-ordered pixels (``--width/--height``).

Joint conversion to the 17 Human3.6M joints (COCO: c, Halpe: h):
pelvis = mid(c.left_hip, c.right_hip) (Halpe: h.hip); hips, knees, ankles,
shoulders, elbows, wrists = the same COCO joints; thorax = mid(shoulders)
(Halpe: h.neck); spine = mid(pelvis, thorax); neck/nose = c.nose; head =
mid(eyes) + 0.5 (mid(eyes) - thorax) (Halpe: h.head).  Joints below the
confidence threshold, and frames where nobody is detected, are filled by
linear interpolation over time (the nearest detection at the ends).

Any length: windows of F frames every ``stride`` frames (default F // 2, the
last window right-aligned); each frame averages the windows that cover it,
weighted by a triangle that peaks at the window centre (weight
``min(i + 1, F - i)`` at position i), so predictions cross-fade between
windows instead of jumping at their borders.  Shorter sequences are
edge-padded to F.  Flip test-time augmentation is on by default.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Optional

import numpy as np

from rtpca_jax import storage
from rtpca_jax.data import camera as cam_lib
from rtpca_jax.data.skeleton import COCO17, H36M17

CONF_THRESHOLD = 0.3


# ----------------------------------------------------------------------------
# Keypoint conversion


def _c(name: str) -> int:
    return COCO17.joints.index(name)


def coco_to_h36m(kp: np.ndarray) -> np.ndarray:
    """``[T, 17, C]`` COCO-17 (C = 2 or 3 with the score last) -> H36M-17.

    Scores of derived joints are the minimum of their sources."""
    kp = np.asarray(kp, np.float64)
    out = np.zeros(kp.shape[:-2] + (17, kp.shape[-1]))

    def mid(a, b):
        m = (kp[..., _c(a), :] + kp[..., _c(b), :]) / 2
        if kp.shape[-1] == 3:
            m[..., 2] = np.minimum(kp[..., _c(a), 2], kp[..., _c(b), 2])
        return m

    pelvis, thorax, eyes = mid("left_hip", "right_hip"), mid("left_shoulder", "right_shoulder"), \
        mid("left_eye", "right_eye")
    for h36, coco in [("right_hip", "right_hip"), ("right_knee", "right_knee"), ("right_ankle", "right_ankle"),
                      ("left_hip", "left_hip"), ("left_knee", "left_knee"), ("left_ankle", "left_ankle"),
                      ("left_shoulder", "left_shoulder"), ("left_elbow", "left_elbow"),
                      ("left_wrist", "left_wrist"), ("right_shoulder", "right_shoulder"),
                      ("right_elbow", "right_elbow"), ("right_wrist", "right_wrist"), ("neck_nose", "nose")]:
        out[..., H36M17.joints.index(h36), :] = kp[..., _c(coco), :]
    out[..., 0, :] = pelvis
    out[..., 8, :] = thorax
    out[..., 7, :] = _mid_pts(pelvis, thorax)
    head = eyes.copy()
    head[..., :2] = eyes[..., :2] + 0.5 * (eyes[..., :2] - thorax[..., :2])
    if kp.shape[-1] == 3:
        head[..., 2] = np.minimum(eyes[..., 2], thorax[..., 2])
    out[..., 10, :] = head
    return out


def _mid_pts(a, b):
    m = (a + b) / 2
    if a.shape[-1] == 3:
        m[..., 2] = np.minimum(a[..., 2], b[..., 2])
    return m


HALPE_HEAD, HALPE_NECK, HALPE_HIP = 17, 18, 19


def halpe_to_h36m(kp: np.ndarray) -> np.ndarray:
    """``[T, 26, 3]`` Halpe-26 -> H36M-17: the COCO part as :func:`coco_to_h36m`,
    with pelvis, thorax and head taken from Halpe's own hip, neck and head."""
    kp = np.asarray(kp, np.float64)
    out = coco_to_h36m(kp[..., :17, :])
    out[..., 0, :] = kp[..., HALPE_HIP, :]
    out[..., 8, :] = kp[..., HALPE_NECK, :]
    out[..., 7, :] = _mid_pts(out[..., 0, :], out[..., 8, :])
    out[..., 10, :] = kp[..., HALPE_HEAD, :]
    return out


def fill_missing(kp: np.ndarray, threshold: float = CONF_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Replace joints with score < threshold (or NaN) by linear interpolation over
    time, per joint.  Returns ``(xy[T, J, 2], filled_mask[T, J])``."""
    kp = np.asarray(kp, np.float64)
    xy = kp[..., :2].copy()
    missing = ~np.isfinite(xy).all(-1)
    if kp.shape[-1] >= 3:
        missing |= ~(kp[..., 2] >= threshold)
    t = np.arange(len(xy))
    for j in range(xy.shape[1]):
        ok = ~missing[:, j]
        if not ok.any():
            raise ValueError(f"joint {j} is never detected with confidence >= {threshold}")
        for d in range(2):
            xy[:, j, d] = np.interp(t, t[ok], xy[ok, j, d])
    return xy, missing


# ----------------------------------------------------------------------------
# Readers


def _person_keypoints(person, n: int, origin: str) -> Optional[np.ndarray]:
    kp = person.get("keypoints") if isinstance(person, dict) else person
    if kp is None:
        return None
    arr = np.asarray(kp, np.float64).reshape(-1)
    if arr.size != n * 3:
        raise ValueError(f"{origin}: 'keypoints' has {arr.size} numbers, expected {n} x 3 = {n * 3}")
    return arr.reshape(n, 3)


def _best(people: list, n: int, origin: str) -> Optional[np.ndarray]:
    best, best_score = None, -np.inf
    for p in people:
        kp = _person_keypoints(p, n, origin)
        if kp is None:
            continue
        score = float(p["score"]) if isinstance(p, dict) and "score" in p else float(np.mean(kp[:, 2]))
        if score > best_score:
            best, best_score = kp, score
    return best


def read_coco_json(data: list, origin: str) -> np.ndarray:
    """``[T, 17, 3]`` (NaN where nobody is detected) from COCO-17 frame lists."""
    frames = []
    for i, frame in enumerate(data):
        if isinstance(frame, dict):
            people = next((frame[k] for k in ("people", "instances", "annotations", "persons") if k in frame), None)
            if people is None:
                people = [frame] if "keypoints" in frame else []
        elif isinstance(frame, list):
            people = frame
        else:
            raise ValueError(f"{origin}: frame {i} is a {type(frame).__name__}, expected a list of people or a dict")
        kp = _best(people, 17, f"{origin} frame {i}")
        frames.append(kp if kp is not None else np.full((17, 3), np.nan))
    return np.stack(frames) if frames else np.zeros((0, 17, 3))


def read_halpe_json(data: list, origin: str, joints: int = 26) -> np.ndarray:
    """``[T, joints, 3]`` from AlphaPose results (Halpe-26, or COCO-17 with
    ``joints=17``); frames missing between the first and last image id are NaN."""
    by_frame: dict[int, list] = {}
    for k, det in enumerate(data):
        if not isinstance(det, dict) or "image_id" not in det or "keypoints" not in det:
            raise ValueError(f"{origin}: entry {k} lacks 'image_id' or 'keypoints' (AlphaPose format)")
        digits = re.findall(r"\d+", str(det["image_id"]))
        if not digits:
            raise ValueError(f"{origin}: entry {k}: no frame number in image_id {det['image_id']!r}")
        by_frame.setdefault(int(digits[-1]), []).append(det)
    if not by_frame:
        return np.zeros((0, joints, 3))
    first, last = min(by_frame), max(by_frame)
    out = np.full((last - first + 1, joints, 3), np.nan)
    for f, people in by_frame.items():
        kp = _best(people, joints, f"{origin} image {f}")
        if kp is not None:
            out[f - first] = kp
    return out


def read_keypoints(path: str, width: Optional[int] = None, height: Optional[int] = None,
                   video: Optional[str] = None) -> tuple[np.ndarray, int, int]:
    """H36M-17 keypoints ``[T, 17, 3]`` in pixels (score last, NaN = missing) and
    the image size, from any supported file."""
    if not storage.isfile(path):
        raise ValueError(f"{path}: keypoint file not found")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".json":
        try:
            data = json.loads(storage.read_text(path))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(data, list) or not data:
            raise ValueError(f"{path}: expected a non-empty JSON list of frames or detections")
        halpe = isinstance(data[0], dict) and "image_id" in data[0]
        if halpe and np.asarray(data[0].get("keypoints", [])).size == 26 * 3:
            kp = halpe_to_h36m(read_halpe_json(data, path))
        elif halpe:
            kp = coco_to_h36m(read_halpe_json(data, path, joints=17))
        else:
            kp = coco_to_h36m(read_coco_json(data, path))
    elif ext == ".npz":
        from rtpca_jax.data.safe_npz import item, load_npz

        f = load_npz(path, required=("positions_2d", "metadata"))
        pos = item(f["positions_2d"], f"{path}[positions_2d]")
        meta = item(f["metadata"], f"{path}[metadata]")
        name = video or next(iter(pos))
        if name not in pos:
            raise ValueError(f"{path}: no video {name!r}; available: {sorted(pos)}")
        arr = np.asarray(pos[name]["custom"][0], np.float64)
        vm = meta.get("video_metadata", {}).get(name, {})
        width, height = width or vm.get("w"), height or vm.get("h")
        if arr.ndim != 3 or arr.shape[1] != 17:
            raise ValueError(f"{path} video {name!r}: expected [T, 17, 2|3], got {arr.shape}")
        layout = str(meta.get("layout_name", "coco"))
        if arr.shape[-1] == 2:
            arr = np.concatenate([arr, np.ones(arr.shape[:-1] + (1,))], -1)
        kp = coco_to_h36m(arr) if layout.startswith("coco") else arr
    elif ext == ".npy":
        with storage.open_binary(path) as fh:
            arr = np.load(fh, allow_pickle=False).astype(np.float64)
        if arr.ndim != 3 or arr.shape[1] != 17 or arr.shape[2] not in (2, 3):
            raise ValueError(f"{path}: expected [T, 17, 2|3] H36M-ordered pixels, got {arr.shape}")
        if arr.shape[2] == 2:
            arr = np.concatenate([arr, np.ones(arr.shape[:-1] + (1,))], -1)
        kp = arr
    else:
        raise ValueError(f"{path}: unsupported keypoint file type {ext!r} (.json, .npz or .npy)")
    if width is None or height is None:
        raise ValueError(f"{path}: image size unknown; pass --width and --height (pixels)")
    if len(kp) == 0:
        raise ValueError(f"{path}: no frames")
    return kp, int(width), int(height)


# ----------------------------------------------------------------------------
# Checkpoints and prediction


OUTPUT_SUFFIXES = (".npz", ".json", ".bvh")


def save_result(result: dict, out: str) -> None:
    """``.npz`` (compressed arrays) or ``.json`` (lists), written atomically."""
    import io

    if out.lower().endswith(".bvh"):
        raise ValueError("BVH output goes through rtpca_jax.bvh_export.write_bvh")
    if out.endswith(".json"):
        storage.write_text(out, json.dumps({k: np.asarray(v).tolist() for k, v in result.items()}))
    else:
        buf = io.BytesIO()
        np.savez_compressed(buf, **result)
        storage.write_bytes(out, buf.getvalue())


def check_output_name(out: str, render: Optional[str] = None) -> None:
    """Refuse, before any work, output names whose format is unknown."""
    if not out.lower().endswith(OUTPUT_SUFFIXES):
        raise ValueError(f"--out {out}: unknown output format; use a name ending in .npz, .json or .bvh")
    if render and not render.lower().endswith((".gif", ".mp4")):
        raise ValueError(f"--render {render}: unknown animation format; use a name ending in .gif or .mp4")


def run(checkpoint: str, keypoints: str, out: str, *, render: Optional[str] = None, width=None, height=None,
        video=None, stride=None, flip=True, threshold=CONF_THRESHOLD, fps: float = 30.0, render_every: int = 1,
        render_size: tuple[int, int] = (640, 320), trajectory: Optional[str] = None) -> dict:
    check_output_name(out, render)
    for what, p in (("checkpoint", checkpoint), ("keypoints", keypoints), ("output", out)):
        storage.check_reachable(p, what=what)
    for name, v in (("width", width), ("height", height)):
        if v is not None and v <= 0:
            raise ValueError(f"--{name} {v}: the image size must be a positive number of pixels")
    kp, w, h = read_keypoints(keypoints, width, height, video)
    xy, filled = fill_missing(kp, threshold)
    from rtpca_jax.convert import load_model

    module, params = load_model(checkpoint)
    if module.spec.num_joints != 17:
        raise ValueError(f"{checkpoint}: the model has {module.spec.num_joints} joints; inference takes H36M-17")
    pose2d = cam_lib.normalize_screen(xy, w, h).astype(np.float32)
    from rtpca_jax import evaluation

    poses = evaluation.predict_any_length(module, params, pose2d, stride=stride, flip=flip)
    result = {
        "poses3d": poses, "keypoints2d_px": xy.astype(np.float32), "keypoints2d_normalized": pose2d,
        "filled": filled, "joint_names": np.array(H36M17.joints), "skeleton_edges": np.array(H36M17.edges),
        "image_size": np.array([w, h]),
    }
    if out.lower().endswith(".bvh"):
        from rtpca_jax.bvh_export import write_bvh

        traj = None
        if trajectory is not None:
            with storage.open_binary(trajectory) as fh:
                traj = np.load(fh, allow_pickle=False)
        result["bvh_report"] = write_bvh(out, poses, fps, frame="camera", trajectory=traj)
    else:
        save_result(result, out)
    if render:
        from rtpca_jax import viz

        viz.render_animation(xy, poses, render, image_size=(w, h), fps=fps, stride=render_every,
                             size_px=render_size)
    return result


def main(argv=None) -> int:
    from rtpca_jax.runtime import start

    start()
    ap = argparse.ArgumentParser(prog="python -m rtpca_jax.inference", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="Orbax directory or official .bin")
    ap.add_argument("--keypoints", required=True, help=".json (COCO-17 / Halpe-26), .npz (VideoPose3D custom), .npy")
    ap.add_argument("--out", required=True, help="poses3d.npz, .json, or .bvh (an animation: Blender, game engines)")
    ap.add_argument("--render", help="out.gif or out.mp4: 2D input beside the 3D skeleton")
    ap.add_argument("--width", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--video", help="video name inside a custom .npz")
    ap.add_argument("--stride", type=int, help="window stride (default F // 2)")
    ap.add_argument("--no-flip", action="store_true", help="disable flip test-time augmentation")
    ap.add_argument("--threshold", type=float, default=CONF_THRESHOLD, help="keypoint confidence threshold")
    ap.add_argument("--fps", type=float, default=30.0,
                    help="frame rate of the keypoints (the rendering's and a .bvh output's frame rate)")
    ap.add_argument("--trajectory", help=".npy [T, 3] root positions (camera frame, metres) for a .bvh output; "
                                         "default: the root stays at the origin")
    ap.add_argument("--render-every", type=int, default=1, help="render every n-th frame")
    ap.add_argument("--render-size", default="640x320", help="WxH of the rendering in pixels")
    a = ap.parse_args(argv)
    try:
        size = tuple(int(v) for v in a.render_size.lower().split("x"))
        assert len(size) == 2
    except (ValueError, AssertionError):
        print(f"error: --render-size {a.render_size!r}: expected WxH, e.g. 640x320", file=sys.stderr)
        return 1
    try:
        r = run(a.checkpoint, a.keypoints, a.out, render=a.render, width=a.width, height=a.height, video=a.video,
                stride=a.stride, flip=not a.no_flip, threshold=a.threshold, fps=a.fps, render_every=a.render_every,
                render_size=size, trajectory=a.trajectory)
    except (ValueError, ImportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {a.out}: {len(r['poses3d'])} frames, {int(r['filled'].sum())} joints filled by interpolation"
          + (f"; {a.render}" if a.render else ""))
    if "bvh_report" in r:
        b = r["bvh_report"]
        print(f"BVH: {b['frames']} frames at {b['fps']:g} fps, Y up, metres; largest rotation change between frames "
              f"{b['max_rotation_change_deg']:.1f} deg ({b['max_rotation_change_joint']}, frame "
              f"{b['max_rotation_change_frame']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
