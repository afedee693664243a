"""Flax models: MixSTE (``ste``), STE + TPCA (``ste_tpca``) and RTPCA (``rtpca``).

Public entry point: :func:`build`.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from rtpca_jax.model.rtpca import PoseTransformer
from rtpca_jax.model.spec import ModelSpec, default_config, resolve

__all__ = ["PoseTransformer", "ModelSpec", "build", "default_config", "resolve", "init_params",
           "count_params"]


def build(model_config: Mapping[str, Any] | ModelSpec) -> nn.Module:
    """The network for a model config (``ConfigDict``/mapping) or a resolved spec.

    ``module.apply({'params': p}, pose2d[B,F,J,2], train=False) -> pose3d[B,F,J,3]``;
    ``train=True`` enables dropout and stochastic depth from the ``'dropout'`` rng.
    """
    spec = model_config if isinstance(model_config, ModelSpec) else resolve(model_config)
    return PoseTransformer(spec)


def init_params(module: PoseTransformer, rng: jax.Array, batch: int = 1):
    """Initial parameters for ``module`` (shapes only depend on the spec)."""
    s = module.spec
    x = jnp.zeros((batch, s.num_frames, s.num_joints, s.in_dim), jnp.float32)
    return jax.jit(lambda r: module.init({"params": r}, x, train=False)["params"])(rng)


def count_params(params) -> int:
    return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))
