"""The full network: alternating spatial / temporal transformer (MixSTE) with
optional TPCA key/value refinement and XLR cross-layer refinement (RTPCA)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rtpca_jax.model.attention import Dense, pool_kv
from rtpca_jax.model.blocks import Block, layer_norm, rematerialised
from rtpca_jax.model.spec import ModelSpec


class PoseTransformer(nn.Module):
    """``pose2d[B, F, J, in_dim] -> pose3d[B, F, J, out_dim]``."""

    spec: ModelSpec

    @nn.compact
    def __call__(self, pose2d: jax.Array, train: bool = False) -> jax.Array:
        s = self.spec
        if pose2d.ndim != 4 or pose2d.shape[1:] != (s.num_frames, s.num_joints, s.in_dim):
            raise ValueError(
                f"pose2d has shape {tuple(pose2d.shape)}; the model expects "
                f"[batch, {s.num_frames}, {s.num_joints}, {s.in_dim}]"
            )
        b, f, j, _ = pose2d.shape
        c = s.width
        pos_init = nn.initializers.truncated_normal(0.02)
        x = Dense(c, dtype=s.dtype, param_dtype=s.param_dtype, name="embed")(pose2d)  # cast by Dense
        spatial_pos = self.param("spatial_pos", pos_init, (j, c), s.param_dtype)
        temporal_pos = self.param("temporal_pos", pos_init, (f, c), s.param_dtype)
        x = x + spatial_pos.astype(x.dtype)
        x = nn.Dropout(s.drop_rate, deterministic=not train)(x)

        def block(name: str, rate: float, temporal: bool):
            attention_only = s.remat and temporal and s.remat_blocks == "temporal_attention"
            b = Block(s, rate, tpca=temporal and s.tpca, train=train, remat_attention=attention_only, name=name)
            remat = s.remat and (s.remat_blocks == "all" or (temporal and s.remat_blocks == "temporal"))
            return rematerialised(b) if remat else b

        rates = np.linspace(0.0, s.drop_path_rate, s.depth) if s.depth > 1 else [0.0]
        spatial_norm = layer_norm(s, s.block_ln_eps, "spatial_norm")
        temporal_norm = layer_norm(s, s.block_ln_eps, "temporal_norm")
        prev_kv = None
        grouped = s.temporal_layout == "grouped"
        for i in range(s.depth):
            # Spatial stream: the free reshape to B*F sequences of J joints.
            x = x.reshape(b * f, j, c)
            x, _ = block(f"spatial_block_{i}", float(rates[i]), temporal=False)(x)
            x = spatial_norm(x)
            # Temporal stream, sequences of F frames, one per (clip, joint):
            # either transposed to [B*J, F, C], or left as [B, F, J, C] with
            # the joints as extra attention heads (spec.temporal_layout).
            if grouped:
                x = x.reshape(b, f, j, c)
                pos = temporal_pos.astype(x.dtype)[:, None, :]
            else:
                x = x.reshape(b, f, j, c).transpose(0, 2, 1, 3).reshape(b * j, f, c)
                pos = temporal_pos.astype(x.dtype)
            if i == 0:
                x = x + pos
                x = nn.Dropout(s.drop_rate, deterministic=not train)(x)
            extra = pool_kv(prev_kv, s.xlr_len) if s.xlr and i > 0 else None
            x, kv = block(f"temporal_block_{i}", float(rates[i]), temporal=True)(x, extra)
            prev_kv = kv if s.xlr else None
            x = temporal_norm(x)
            if not grouped:
                x = x.reshape(b, j, f, c).transpose(0, 2, 1, 3)
            if s.double_temporal_output and i > 0:
                x = x + x
        x = layer_norm(s, s.head_ln_eps, "head_norm")(x)
        out = Dense(s.out_dim, dtype=s.dtype, param_dtype=s.param_dtype, name="head")(x)
        if s.dtype is not None:
            out = out.astype(jnp.promote_types(s.param_dtype, jnp.float32))
        return out
