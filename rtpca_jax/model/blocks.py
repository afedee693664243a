"""Transformer blocks of the spatial and temporal streams."""

from __future__ import annotations

import math
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from rtpca_jax.model import ops
from rtpca_jax.model.attention import KV, Attention, DenseParams, project
from rtpca_jax.model.spec import ModelSpec


def layer_norm(spec: ModelSpec, eps: float, name: str) -> ops.LayerNorm:
    return ops.LayerNorm(eps, dtype=spec.dtype, param_dtype=spec.param_dtype, name=name)


class Mlp(nn.Module):
    spec: ModelSpec
    train: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.spec
        k1, b1 = DenseParams(s.mlp_hidden, True, s.param_dtype, name="fc1")(x.shape[-1])
        k2, b2 = DenseParams(s.width, True, s.param_dtype, name="fc2")(s.mlp_hidden)
        if s.gelu_approximate:
            x = ops.gelu(project(x, k1, b1, s.dtype), approximate=True)
        else:
            # fc2(gelu(fc1 x)) = fc2'(gelu_unit(fc1' x)) with fc1' = fc1 / sqrt 2 and fc2's kernel
            # / sqrt 2, so that the element-wise part has no constants (ops.gelu_unit)
            r = 1.0 / math.sqrt(2.0)
            k1, b1, k2 = k1 * r, b1 * r, k2 * r
            x = ops.gelu_unit(project(x, k1, b1, s.dtype))
        x = nn.Dropout(s.drop_rate, deterministic=not self.train)(x)
        x = project(x, k2, b2, s.dtype)
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

    ``tpca``: keys/values from the TPCA pyramid.  ``extra_kv``: keys/values
    handed over by the previous block, already pooled (XLR), appended to the
    block's own.  Returns ``(x, kv)`` where ``kv`` is what this block hands on.
    """

    spec: ModelSpec
    drop_path_rate: float = 0.0
    tpca: bool = False
    train: bool = False
    remat_attention: bool = False  # rematerialise the attention sublayer only (:func:`rematerialised`)

    @nn.compact
    def __call__(self, x: jax.Array, extra_kv: Optional[KV] = None) -> tuple[jax.Array, KV]:
        s = self.spec
        h = layer_norm(s, s.block_ln_eps, "norm1")(x)
        attn = Attention(s, tpca=self.tpca, train=self.train, name="attn")
        a, kv = (rematerialised(attn) if self.remat_attention else attn)(h, extra_kv)
        x = x + drop_path(self, a, self.drop_path_rate, self.train)
        m = Mlp(s, train=self.train, name="mlp")(layer_norm(s, s.block_ln_eps, "norm2")(x))
        x = x + drop_path(self, m, self.drop_path_rate, self.train)
        if not s.xlr_pass_concatenated:
            length = x.shape[1]
            kv = (kv[0][:, :length], kv[1][:, :length])
        return x, kv


def rematerialised(block: nn.Module) -> Callable:
    """``block(x, extra_kv)`` that keeps only its inputs (and parameters) for
    the backward pass and runs the block again there, with plain gradients.
    ``block``: a :class:`Block` or an :class:`Attention` (both return a pair).

    Unlike ``nn.remat`` (``jax.checkpoint``) this survives XLA:CPU, which
    drops the optimisation barriers that keep a rematerialisation apart
    from the forward pass and then merges the two: the re-run starts from
    :func:`rtpca_jax.model.ops.after` of the cotangent, so it can neither be
    merged with the forward pass nor scheduled before the backward pass
    reaches the block.  Dropout draws one key per block in the forward pass
    and hands it to the re-run, so both see the same masks.
    """
    pure = block.clone(parent=None, name=None)

    def run(params, x, extra_kv, key):
        return pure.apply({"params": params}, x, extra_kv, rngs=None if key is None else {"dropout": key})

    def forward(mdl: Block, x, extra_kv):
        params = mdl.variables["params"]
        s = mdl.spec
        random = mdl.train and max(s.drop_rate, s.attn_drop_rate, getattr(mdl, "drop_path_rate", 0.0)) > 0
        key = mdl.make_rng("dropout") if random else None
        return run(params, x, extra_kv, key), (params, x, extra_kv, key)

    def backward(residuals, g):
        params, x, extra_kv, key = residuals
        x = ops.after(x, g[0])  # re-run the block only once its output's cotangent exists
        _, vjp = jax.vjp(lambda p, x, e: run(p, x, e, key), params, x, extra_kv)
        dparams, dx, dextra = vjp(g)
        # hand the input's cotangent on only with all parameter gradients done,
        # else the previous block re-runs while this one's activations wait
        # for its weight gradients
        done = jnp.stack([jnp.max(t) for t in jax.tree_util.tree_leaves(dparams)])
        return {"params": dparams}, ops.after(dx, done), dextra

    def call(mdl: Block, x, extra_kv):  # without a gradient: the same masks as ``forward``
        return mdl(x, extra_kv) if mdl.is_initializing() else forward(mdl, x, extra_kv)[0]

    wrapped = nn.custom_vjp(call, forward_fn=forward, backward_fn=backward)
    return lambda x, extra_kv=None: wrapped(block, x, extra_kv)
