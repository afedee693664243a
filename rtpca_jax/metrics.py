"""Evaluation metrics (numpy, float64), as the literature computes them.

All poses ``[..., J, 3]`` in the same unit; per-frame errors are averaged over
frames and joints.  Human3.6M results are averaged per action first, then over
actions (:func:`aggregate_by_action`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Optional

import numpy as np


def mpjpe(pred: np.ndarray, gt: np.ndarray) -> float:
    """Protocol 1: mean per-joint position error."""
    return float(np.mean(np.linalg.norm(pred - gt, axis=-1)))


def procrustes_align(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Similarity transform (rotation with reflection correction, uniform scale,
    translation) of each frame of ``pred[N, J, 3]`` that best fits ``gt``."""
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    mu_p = pred.mean(axis=1, keepdims=True)
    mu_g = gt.mean(axis=1, keepdims=True)
    p0, g0 = pred - mu_p, gt - mu_g
    norm_p = np.sqrt(np.sum(p0 ** 2, axis=(1, 2), keepdims=True))
    norm_g = np.sqrt(np.sum(g0 ** 2, axis=(1, 2), keepdims=True))
    norm_p = np.where(norm_p == 0, 1.0, norm_p)
    norm_g = np.where(norm_g == 0, 1.0, norm_g)
    p0, g0 = p0 / norm_p, g0 / norm_g
    h = np.matmul(np.transpose(g0, (0, 2, 1)), p0)  # [N, 3, 3]
    u, s, vt = np.linalg.svd(h)
    v = np.transpose(vt, (0, 2, 1))
    r = np.matmul(v, np.transpose(u, (0, 2, 1)))
    # reflection correction: make det(R) = +1
    sign = np.sign(np.linalg.det(r))[:, None]
    v[:, :, -1] *= sign
    s[:, -1] *= sign[:, 0]
    r = np.matmul(v, np.transpose(u, (0, 2, 1)))
    tr = np.sum(s, axis=1, keepdims=True)[:, :, None]
    scale = tr * norm_g / norm_p
    t = mu_g - scale * np.matmul(mu_p, r)
    return scale * np.matmul(pred, r) + t


def p_mpjpe(pred: np.ndarray, gt: np.ndarray) -> float:
    """Protocol 2: MPJPE after per-frame similarity Procrustes alignment."""
    pred = np.asarray(pred).reshape(-1, *pred.shape[-2:])
    gt = np.asarray(gt).reshape(-1, *gt.shape[-2:])
    return mpjpe(procrustes_align(pred, gt), gt)


def n_mpjpe(pred: np.ndarray, gt: np.ndarray) -> float:
    """MPJPE after the per-frame least-squares scale of ``pred``."""
    pred = np.asarray(pred, np.float64).reshape(-1, *pred.shape[-2:])
    gt = np.asarray(gt, np.float64).reshape(-1, *gt.shape[-2:])
    num = np.sum(pred * gt, axis=(1, 2), keepdims=True)
    den = np.sum(pred * pred, axis=(1, 2), keepdims=True)
    return mpjpe(num / np.where(den == 0, 1.0, den) * pred, gt)


def mpjve(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean per-joint velocity error of a sequence ``[T, J, 3]`` (first differences)."""
    return float(np.mean(np.linalg.norm(np.diff(pred, axis=0) - np.diff(gt, axis=0), axis=-1)))


def accel_error(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean per-joint acceleration error of a sequence ``[T, J, 3]`` (second differences)."""
    return float(np.mean(np.linalg.norm(np.diff(pred, 2, axis=0) - np.diff(gt, 2, axis=0), axis=-1)))


PCK_THRESHOLDS_MM = np.arange(0, 151, 5, dtype=np.float64)  # 31 thresholds
MPI3DHP_PCK14 = tuple(range(14))  # the customary 14 joints: all but pelvis, spine, head


def pck(pred_mm: np.ndarray, gt_mm: np.ndarray, threshold_mm: float = 150.0,
        valid: Optional[np.ndarray] = None, joints: Optional[Iterable[int]] = None) -> float:
    """Percentage of joints within ``threshold_mm`` (valid frames only), in %."""
    d = _distances(pred_mm, gt_mm, valid, joints)
    return float(np.mean(d < threshold_mm) * 100.0)


def auc(pred_mm: np.ndarray, gt_mm: np.ndarray, valid: Optional[np.ndarray] = None,
        joints: Optional[Iterable[int]] = None) -> float:
    """Mean PCK over the 31 thresholds 0, 5, ..., 150 mm, in %."""
    d = _distances(pred_mm, gt_mm, valid, joints)
    return float(np.mean([np.mean(d < t) for t in PCK_THRESHOLDS_MM]) * 100.0)


def _distances(pred, gt, valid, joints):
    d = np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=-1)
    if valid is not None:
        d = d[np.asarray(valid, bool)]
    if joints is not None:
        d = d[..., list(joints)]
    return d


def aggregate_by_action(per_sequence: list[tuple[str, dict[str, float], int]]) -> tuple[dict, dict]:
    """Average per action (frame-weighted over its sequences), then over actions.

    ``per_sequence``: ``(action, {metric: value}, frames)``.  The action name's
    take number is dropped (``'Walking 1'`` -> ``'Walking'``).
    """
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    frames: dict[str, int] = defaultdict(int)
    for action, values, n in per_sequence:
        a = action.split(" ")[0]
        for k, v in values.items():
            sums[a][k] += v * n
        frames[a] += n
    per_action = {a: {k: v / frames[a] for k, v in m.items()} for a, m in sorted(sums.items())}
    keys = sorted({k for m in per_action.values() for k in m})
    overall = {k: float(np.mean([m[k] for m in per_action.values() if k in m])) for k in keys}
    return overall, per_action
