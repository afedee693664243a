"""Transformer blocks of the spatial and temporal streams."""

from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from rtpca_jax.model import ops
from rtpca_jax.model.attention import KV, Attention, pool_kv
from rtpca_jax.model.spec import ModelSpec


def layer_norm(spec: ModelSpec, eps: float, name: str) -> ops.LayerNorm:
    return ops.LayerNorm(eps, dtype=spec.dtype, param_dtype=spec.param_dtype, name=name)


class Mlp(nn.Module):
    spec: ModelSpec
    train: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.spec
        dense = functools.partial(
            nn.Dense, dtype=s.dtype, param_dtype=s.param_dtype,
            kernel_init=nn.initializers.truncated_normal(0.02),
        )
        x = dense(s.mlp_hidden, name="fc1")(x)
        x = ops.gelu(x, s.gelu_approximate)
        x = nn.Dropout(s.drop_rate, deterministic=not self.train)(x)
        x = dense(s.width, name="fc2")(x)
        return nn.Dropout(s.drop_rate, deterministic=not self.train)(x)


def drop_path(module: nn.Module, x: jax.Array, rate: float, train: bool) -> jax.Array:
    """Stochastic depth: drop the residual branch per sequence.  For
    ``x[N, L, *G, C]`` a sequence is one index of N and of the group axes G
    (axis 1 is the sequence itself)."""
    if not train or rate == 0.0:
        return x
    keep = 1.0 - rate
    shape = (x.shape[0], 1) + tuple(x.shape[2:-1]) + (1,)
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / keep, 0).astype(x.dtype)


class Block(nn.Module):
    """``x + attn(norm1(x))`` then ``x + mlp(norm2(x))`` over ``x[N, L, *G, C]``
    (attention along axis 1, see :class:`Attention`).

    ``tpca``: keys/values from the TPCA pyramid.  ``xlr_in``: pool the
    keys/values handed over by the previous block and append them.
    Returns ``(x, kv)`` where ``kv`` is what this block hands on.
    """

    spec: ModelSpec
    drop_path_rate: float = 0.0
    tpca: bool = False
    xlr_in: bool = False
    train: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, prev_kv: Optional[KV] = None) -> tuple[jax.Array, KV]:
        s = self.spec
        h = layer_norm(s, s.block_ln_eps, "norm1")(x)
        extra = pool_kv(prev_kv, s.xlr_len) if self.xlr_in else None
        a, kv = Attention(s, tpca=self.tpca, train=self.train, name="attn")(h, extra)
        x = x + drop_path(self, a, self.drop_path_rate, self.train)
        m = Mlp(s, train=self.train, name="mlp")(layer_norm(s, s.block_ln_eps, "norm2")(x))
        x = x + drop_path(self, m, self.drop_path_rate, self.train)
        if not s.xlr_pass_concatenated:
            length = x.shape[1]
            kv = (kv[0][:, :length], kv[1][:, :length])
        return x, kv
