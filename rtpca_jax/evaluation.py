"""Evaluation: everything between a trained model and its scores.

- clips: :func:`clip_index`, :func:`eval_clips` (the official non-overlapping
  clips), :func:`stitch` (hard cuts) and :func:`crossfade` (overlapping
  windows, used for users' videos);
- prediction: :func:`make_predict_fn`, :func:`predict_clips` (power-of-two
  padded batches), flip test-time augmentation (``skeleton.flip_pose``,
  :func:`predict_clips_tta`), :func:`predict_sequences`,
  :func:`predict_any_length`;
- scores: :func:`score_sequences` (P1, P2, MPJVE per action; PCK and AUC for
  MPI-INF-3DHP), closed-form baselines;
- reports: :func:`format_table` and :func:`write_results` (``results.json``
  and its charts, the same from ``eval.py`` and ``train.py``).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence as Seq

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rtpca_jax import metrics, storage, train_lib
from rtpca_jax.data.pipeline import clip_starts
from rtpca_jax.data.skeleton import H36M17, MPI3DHP17, flip_pose, get_layout
from rtpca_jax.data.sources.records import Sequence


# ----------------------------------------------------------------------------
# Clips


def clip_index(length: int, frames: int, stride: int) -> np.ndarray:
    """``index[N, frames]``: the frame each position of each clip comes from,
    clips every ``stride`` frames with the last right-aligned to end on the last
    frame; a sequence shorter than ``frames`` is edge-padded (index clipped to
    ``length - 1``)."""
    starts = clip_starts(length, frames, stride)
    return np.minimum(starts[:, None] + np.arange(frames)[None], length - 1)


def eval_clips(pose2d: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Official evaluation clips of a sequence ``pose2d[T, ...]``.

    Returns ``clips[N, frames, ...]`` and ``index[N, frames]``, the frame each
    clip position came from: non-overlapping clips from frame 0, the last one
    right-aligned to end on the last frame; a sequence shorter than ``frames``
    is edge-padded (index clipped to ``T-1``).  Stitch predictions back with
    :func:`stitch`.
    """
    index = clip_index(pose2d.shape[0], frames, frames)
    return pose2d[index], index


def _real_frames(idx: np.ndarray) -> np.ndarray:
    """Mask of a clip's positions that are real frames: edge padding repeats
    the last index, so each frame counts at its first position only."""
    _, first = np.unique(idx, return_index=True)
    mask = np.zeros(len(idx), bool)
    mask[first] = True
    return mask


def stitch(pred: np.ndarray, index: np.ndarray, length: int) -> np.ndarray:
    """Per-frame predictions from clip predictions ``pred[N, frames, ...]``: each
    frame takes the first clip that covers it (padding positions are dropped)."""
    out = np.zeros((length,) + pred.shape[2:], pred.dtype)
    filled = np.zeros(length, bool)
    for clip, idx in zip(pred, index):
        take = ~filled[idx] & _real_frames(idx)
        out[idx[take]] = clip[take]
        filled[idx[take]] = True
    return out


def crossfade(pred: np.ndarray, index: np.ndarray, length: int) -> np.ndarray:
    """Per-frame predictions from overlapping clip predictions ``pred[N, F, ...]``:
    each frame is the average of every clip covering it, weighted by a triangle
    that is highest at the clip's centre (``min(i + 1, F - i)``), so
    neighbouring windows blend without seams."""
    f = pred.shape[1]
    w = np.minimum(np.arange(f) + 1, f - np.arange(f)).astype(np.float64)
    acc = np.zeros((length,) + pred.shape[2:])
    wsum = np.zeros(length)
    for clip, idx in zip(pred, index):
        real = _real_frames(idx)
        np.add.at(acc, idx[real], clip[real] * w[real, None, None])
        np.add.at(wsum, idx[real], w[real])
    return (acc / wsum[:, None, None]).astype(np.float32)



# ----------------------------------------------------------------------------
# Prediction


@functools.lru_cache(maxsize=16)
def make_predict_fn(module, mesh: Mesh) -> Callable:
    """Jitted ``predict(params, pose2d[B,F,J,2])``; one per (module, mesh), so
    repeated evaluations reuse the compiled program."""

    def predict(params, pose2d):
        return module.apply({"params": params}, pose2d, train=False).astype(jnp.float32)

    return jax.jit(predict, in_shardings=(train_lib.replicated(mesh), train_lib.batch_sharding(mesh)),
                   out_shardings=train_lib.replicated(mesh))


def pad_bucket(n: int, batch_size: int, n_dev: int) -> int:
    """Padded size of a batch of ``n`` rows: ``n_dev * 2**k >= n``, at most ``batch_size``."""
    size = n_dev
    while size < n:
        size *= 2
    return min(size, batch_size)


def predict_clips(predict_fn, params, clips: np.ndarray, batch_size: int, mesh: Mesh) -> np.ndarray:
    """Predictions for ``clips[N, F, J, 2]`` in batches of ``batch_size``.

    The last, shorter batch is zero-padded (and the padding dropped) to the
    smallest power-of-two multiple of the device count that holds it, capped
    at ``batch_size``: at most log2(batch_size) + 1 shapes are ever compiled,
    a repeated evaluation never recompiles, and a 3-clip sequence does not pay
    for a 64-clip batch."""
    n_dev = mesh.devices.size
    batch_size = -(-batch_size // n_dev) * n_dev
    n = clips.shape[0]
    out = []
    for lo in range(0, n, batch_size):
        chunk = clips[lo:lo + batch_size]
        size = pad_bucket(chunk.shape[0], batch_size, n_dev)
        pad = size - chunk.shape[0]
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
        p = jax.process_count()
        rows = size // p
        local = chunk[jax.process_index() * rows:(jax.process_index() + 1) * rows]
        pred = predict_fn(params, train_lib.global_batch(local, mesh))
        out.append(np.asarray(jax.device_get(pred))[: size - pad])
    return np.concatenate(out) if out else np.zeros((0,) + clips.shape[1:-1] + (3,), np.float32)


def predict_clips_tta(predict_fn, params, clips: np.ndarray, batch_size: int, mesh: Mesh, layout,
                      flip: bool = True) -> np.ndarray:
    """:func:`predict_clips`, averaged with the prediction of the mirrored input
    mirrored back (flip test-time augmentation) when ``flip``."""
    pred = predict_clips(predict_fn, params, clips, batch_size, mesh)
    if flip:
        pf = predict_clips(predict_fn, params, flip_pose(clips, layout), batch_size, mesh)
        pred = (pred + flip_pose(pf, layout)) / 2
    return pred


def predict_sequences(predict_fn, params, sequences: Seq[Sequence], num_frames: int, batch_size: int,
                      mesh: Mesh, flip_tta: bool = True) -> list[np.ndarray]:
    """Whole-sequence predictions ``[T, J, 3]`` as the official evaluation makes
    them: non-overlapping clips of F frames (the last right-aligned, short ones
    edge-padded); with ``flip_tta`` the horizontally flipped input is predicted
    too, flipped back and averaged."""
    if not sequences:
        return []
    layout = get_layout(sequences[0].layout)
    all_clips, index = [], []
    for s in sequences:
        c, idx = eval_clips(s.pose2d, num_frames)
        all_clips.append(c)
        index.append(idx)
    clips = np.concatenate(all_clips).astype(np.float32)
    pred = predict_clips_tta(predict_fn, params, clips, batch_size, mesh, layout, flip_tta)
    out, lo = [], 0
    for s, idx in zip(sequences, index):
        out.append(stitch(pred[lo:lo + len(idx)], idx, s.num_frames))
        lo += len(idx)
    return out


def predict_any_length(module, params, pose2d: np.ndarray, *, stride: Optional[int] = None,
                       flip: bool = True, batch_size: int = 64, layout=H36M17) -> np.ndarray:
    """``pose2d[T, J, 2]`` (normalised screen coordinates) -> ``[T, J, 3]``:
    windows every ``stride`` frames (default F/2), flip TTA, cross-faded."""
    f = module.spec.num_frames
    index = clip_index(len(pose2d), f, stride or max(1, f // 2))
    mesh = train_lib.make_mesh()
    pred = predict_clips_tta(make_predict_fn(module, mesh), params, pose2d[index].astype(np.float32),
                             batch_size, mesh, layout, flip)
    return crossfade(pred, index, len(pose2d))


# ----------------------------------------------------------------------------
# Scores


def score_sequences(sequences: Seq[Sequence], predictions: Seq[np.ndarray]) -> dict:
    """P1, P2 and MPJVE in mm per sequence, averaged per action then over actions.

    Frames flagged invalid (MPI-INF-3DHP) are left out.  The ground truth's root
    is zero; predictions are scored as they come (the official evaluation).
    MPI-INF-3DHP sequences also get its standard metrics: PCK at 150 mm and AUC
    (PCK averaged over 0, 5, ..., 150 mm), in %, over all 17 joints and over the
    customary 14 (``pck14_*``, ``auc14``); besides the per-sequence averages the
    result then holds ``pooled_*`` values over all valid test frames together."""
    rows = []
    joint_sum, joint_n = 0.0, 0
    pooled_pred, pooled_gt = [], []
    for s, pred in zip(sequences, predictions):
        gt = s.pose3d.astype(np.float64)
        pred = pred.astype(np.float64)
        v = np.ones(len(gt), bool) if s.valid is None else s.valid
        vals = {
            "mpjpe_mm": metrics.mpjpe(pred[v], gt[v]) * 1000.0,
            "p_mpjpe_mm": metrics.p_mpjpe(pred[v], gt[v]) * 1000.0,
            "mpjve_mm": metrics.mpjve(pred, gt) * 1000.0 if len(gt) > 1 else 0.0,
        }
        if s.layout == MPI3DHP17.name:
            vals.update(_pck_auc(pred[v] * 1000.0, gt[v] * 1000.0))
            pooled_pred.append(pred[v])
            pooled_gt.append(gt[v])
        rows.append((s.action, vals, int(v.sum())))
        joint_sum = joint_sum + np.linalg.norm(pred[v] - gt[v], axis=-1).sum(axis=0)
        joint_n += int(v.sum())
    overall, per_action = metrics.aggregate_by_action(rows)
    if pooled_pred:
        p, g = np.concatenate(pooled_pred), np.concatenate(pooled_gt)
        overall["pooled_mpjpe_mm"] = metrics.mpjpe(p, g) * 1000.0
        overall.update({f"pooled_{k}": v for k, v in _pck_auc(p * 1000.0, g * 1000.0).items()})
    per_joint = (np.asarray(joint_sum) / max(joint_n, 1) * 1000.0).tolist()
    return {**overall, "per_action": per_action, "per_joint_mm": per_joint}


def _pck_auc(pred_mm: np.ndarray, gt_mm: np.ndarray) -> dict:
    return {"pck_150mm": metrics.pck(pred_mm, gt_mm), "auc": metrics.auc(pred_mm, gt_mm),
            "pck14_150mm": metrics.pck(pred_mm, gt_mm, joints=metrics.MPI3DHP_PCK14),
            "auc14": metrics.auc(pred_mm, gt_mm, joints=metrics.MPI3DHP_PCK14)}


def mean_pose_baseline(train: Seq[Sequence]) -> np.ndarray:
    """The mean root-relative training pose ``[J, 3]``."""
    return np.concatenate([s.pose3d for s in train]).mean(axis=0)


def linear_baseline(train: Seq[Sequence], ridge: float = 1e-3) -> np.ndarray:
    """Per-frame least squares ``pose3d = [pose2d - pose2d_root, 1] @ W`` (ridge-
    regularised), returns ``W[(2J+1), 3J]``."""
    x = np.concatenate([_linear_features(s.pose2d) for s in train])
    y = np.concatenate([s.pose3d.reshape(s.num_frames, -1) for s in train])
    a = x.T @ x + ridge * np.eye(x.shape[1])
    return np.linalg.solve(a, x.T @ y)


def _linear_features(pose2d: np.ndarray) -> np.ndarray:
    rel = (pose2d - pose2d[:, :1]).reshape(len(pose2d), -1).astype(np.float64)
    return np.concatenate([rel, np.ones((len(pose2d), 1))], axis=1)


def apply_linear_baseline(w: np.ndarray, pose2d: np.ndarray) -> np.ndarray:
    return (_linear_features(pose2d) @ w).reshape(len(pose2d), -1, 3)


# ----------------------------------------------------------------------------
# Reports


def format_table(results: dict) -> str:
    """The per-action table; MPI-INF-3DHP results add PCK and AUC columns and
    a row over all valid frames pooled."""
    pck = "pck_150mm" in results
    head = f"{'action':<18} {'P1 (mm)':>9} {'P2 (mm)':>9} {'MPJVE (mm)':>11}"
    lines = [head + (f" {'PCK (%)':>8} {'AUC (%)':>8}" if pck else "")]

    def row(name, r):
        line = f"{name:<18} {r['mpjpe_mm']:>9.1f} {r['p_mpjpe_mm']:>9.1f} {r['mpjve_mm']:>11.2f}"
        return line + (f" {r['pck_150mm']:>8.1f} {r['auc']:>8.1f}" if pck else "")

    for a, r in results["per_action"].items():
        lines.append(row(a, r))
    lines.append(row("average", results))
    if pck:
        lines.append(f"{'all frames':<18} {results['pooled_mpjpe_mm']:>9.1f} {'':>9} {'':>11} "
                     f"{results['pooled_pck_150mm']:>8.1f} {results['pooled_auc']:>8.1f}")
    return "\n".join(lines)


def write_results(results: dict, out_dir: str, layout_name: str) -> str:
    """``results.json``, ``per_action_errors.png`` and ``per_joint_errors.png``
    in ``out_dir`` (local or remote); returns the JSON's path."""
    from rtpca_jax import viz
    from rtpca_jax.data.skeleton import get_layout

    storage.makedirs(out_dir)
    path = storage.join(out_dir, "results.json")
    storage.write_json(path, results)
    pa = results["per_action"]
    viz.bar_chart({a: r["mpjpe_mm"] for a, r in pa.items()}, storage.join(out_dir, "per_action_errors.png"),
                  "error (mm)", "per-action error", secondary={a: r["p_mpjpe_mm"] for a, r in pa.items()})
    viz.bar_chart(dict(zip(get_layout(layout_name).joints, results["per_joint_mm"])),
                  storage.join(out_dir, "per_joint_errors.png"), "MPJPE (mm)", "per-joint error")
    return path
