"""Training losses (jax), as in the official RTPCA / MixSTE training scripts."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def weighted_mpjpe(pred: jax.Array, target: jax.Array, joint_weights: jax.Array) -> jax.Array:
    """``mean(w_j * ||pred - target||)`` over batch, frames and joints."""
    return jnp.mean(joint_weights * jnp.linalg.norm(pred - target, axis=-1))


def temporal_consistency(pred: jax.Array, joint_weights: jax.Array) -> jax.Array:
    """Joint-weighted mean squared difference of consecutive predicted frames:
    ``mean(w_j * (pred[t+1] - pred[t])^2)`` over every element."""
    diff = pred[:, 1:] - pred[:, :-1]
    return jnp.mean(joint_weights[:, None] * jnp.square(diff))


def mean_velocity_error(pred: jax.Array, target: jax.Array) -> jax.Array:
    """``mean(||diff_t(pred) - diff_t(target)||)`` (MPJVE)."""
    vp = pred[:, 1:] - pred[:, :-1]
    vt = target[:, 1:] - target[:, :-1]
    return jnp.mean(jnp.linalg.norm(vp - vt, axis=-1))


def total_loss(pred: jax.Array, target: jax.Array, joint_weights: Sequence[float], *, w_mpjpe: float = 1.0,
               w_temporal: float = 0.5, w_velocity: float = 2.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Official objective; the target's root joint is taken as exactly zero.

    Computed in float32 whatever the model's compute dtype.
    """
    pred = pred.astype(jnp.float32)
    target = target.astype(jnp.float32).at[:, :, 0].set(0.0)
    w = jnp.asarray(joint_weights, jnp.float32)
    if w.shape[0] != pred.shape[2]:
        raise ValueError(f"{w.shape[0]} joint weights for {pred.shape[2]} joints")
    parts = {
        "mpjpe_w": weighted_mpjpe(pred, target, w),
        "temporal": temporal_consistency(pred, w),
        "velocity": mean_velocity_error(pred, target),
    }
    loss = w_mpjpe * parts["mpjpe_w"] + w_temporal * parts["temporal"] + w_velocity * parts["velocity"]
    return loss, parts
