"""Layer norm, exact GELU and softmax attention with hand-written gradients
that keep only what the backward pass needs.

Plain autodiff of these three saves several same-sized intermediates for the
backward pass (layer norm: ``x - mean``, its square and the normalised value;
exact GELU: ``x/sqrt 2``, ``erfc``, ``exp`` and a copy; attention: the
exponentials and the probabilities), and XLA keeps most of them alive from the
forward pass to the backward pass.  These versions save the input (which the
surrounding layers keep anyway) and per-row statistics; the probabilities of
attention are saved once.  The outputs are the same functions; the gradients
are the textbook closed forms (checked against autodiff by
``tests/test_ops.py``).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def _stat_dtype(dtype) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


# ---------------------------------------------------------------- layer norm


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def normalize(x: jax.Array, scale: jax.Array, bias: jax.Array, axis: int, eps: float) -> jax.Array:
    """``(x - mean) / sqrt(var + eps) * scale + bias`` with the statistics over
    ``axis`` (two-pass variance, float32 or wider); ``scale`` and ``bias``
    broadcast against ``x`` (same rank).  Returns ``x``'s dtype."""
    return _normalize_fwd(x, scale, bias, axis, eps)[0]


def _stats(x, axis, eps):
    xs = x.astype(_stat_dtype(x.dtype))
    mean = jnp.mean(xs, axis=axis, keepdims=True)
    xc = xs - mean
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(xc), axis=axis, keepdims=True) + eps)
    return xc, mean, rstd


def _normalize_fwd(x, scale, bias, axis, eps):
    xc, mean, rstd = _stats(x, axis, eps)
    dt = xc.dtype
    y = xc * rstd * scale.astype(dt) + bias.astype(dt)
    return y.astype(x.dtype), (x, mean, rstd, scale, bias)


def _reduce_to(g: jax.Array, shape: tuple) -> jax.Array:
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return jnp.sum(g, axis=axes, keepdims=True).reshape(shape)


def _normalize_bwd(axis, eps, res, dy):
    x, mean, rstd, scale, bias = res
    dt = mean.dtype
    xhat = (x.astype(dt) - mean) * rstd
    dy = dy.astype(dt)
    dscale = _reduce_to(dy * xhat, scale.shape).astype(scale.dtype)
    dbias = _reduce_to(dy, bias.shape).astype(bias.dtype)
    g = dy * scale.astype(dt)
    dx = rstd * (g - jnp.mean(g, axis=axis, keepdims=True) - xhat * jnp.mean(g * xhat, axis=axis, keepdims=True))
    return dx.astype(x.dtype), dscale, dbias


normalize.defvjp(_normalize_fwd, _normalize_bwd)


class LayerNorm(nn.Module):
    """LayerNorm over the channel (last) axis: ``nn.LayerNorm``'s parameters
    (``scale``, ``bias``) and two-pass statistics, with the lean gradient of
    :func:`normalize`."""

    eps: float
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        x = x.astype(self.dtype or jnp.result_type(x, scale))
        shape = (1,) * (x.ndim - 1) + (c,)
        return normalize(x, scale.reshape(shape), bias.reshape(shape), x.ndim - 1, self.eps)


# ---------------------------------------------------------------------- GELU

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@jax.custom_vjp
def gelu_exact(x: jax.Array) -> jax.Array:
    """``x * Phi(x)`` with the erf form of the normal CDF (PyTorch's
    ``nn.GELU()``), the same expression as ``jax.nn.gelu(approximate=False)``."""
    return jnp.asarray(x * (jax.lax.erf(x * jnp.asarray(_INV_SQRT2, x.dtype)) + 1) / 2, dtype=x.dtype)


def _gelu_fwd(x):
    return gelu_exact(x), x


def _gelu_bwd(x, dy):
    dt = _stat_dtype(x.dtype)
    xs = x.astype(dt)
    cdf = (jax.lax.erf(xs * _INV_SQRT2) + 1) / 2
    pdf = jnp.exp(-0.5 * xs * xs) * _INV_SQRT_2PI
    return ((dy.astype(dt) * (cdf + xs * pdf)).astype(x.dtype),)


gelu_exact.defvjp(_gelu_fwd, _gelu_bwd)


def gelu(x: jax.Array, approximate: bool) -> jax.Array:
    return jax.nn.gelu(x, approximate=True) if approximate else gelu_exact(x)


# ----------------------------------------------------------------- attention


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
    """``softmax(scale * q k^T) v`` for ``q[N,T,H,d]``, ``k, v[N,S,H,d]``;
    the softmax in float32 or wider.  The gradient saves the probabilities
    (in the compute dtype) besides its inputs."""
    return _attention_fwd(q, k, v, scale)[0]


def _probs(q, k, scale):
    logits = jnp.einsum("nthd,nshd->nhts", q, k, preferred_element_type=_stat_dtype(q.dtype))
    return jax.nn.softmax(logits * scale, axis=-1)


def _attention_fwd(q, k, v, scale):
    p = _probs(q, k, scale).astype(v.dtype)
    out = jnp.einsum("nhts,nshd->nthd", p, v)
    return out, (q, k, v, p)


def _attention_bwd(scale, res, dout):
    q, k, v, p = res
    dt = _stat_dtype(q.dtype)
    dout = dout.astype(v.dtype)
    dv = jnp.einsum("nhts,nthd->nshd", p, dout)
    dp = jnp.einsum("nthd,nshd->nhts", dout, v, preferred_element_type=dt)
    pf = p.astype(dt)
    ds = (pf * (dp - jnp.sum(pf * dp, axis=-1, keepdims=True)) * scale).astype(q.dtype)
    dq = jnp.einsum("nhts,nshd->nthd", ds, k)
    dk = jnp.einsum("nhts,nthd->nshd", ds, q)
    return dq, dk, dv


softmax_attention.defvjp(_attention_fwd, _attention_bwd)
