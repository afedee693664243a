"""Layer norm, exact GELU and softmax attention with hand-written gradients
that keep only what the backward pass needs; dense layers whose backward pass
computes the weight gradients with the input's (:func:`affine`).

Plain autodiff of these three saves several same-sized intermediates for the
backward pass (layer norm: ``x - mean``, its square and the normalised value;
exact GELU: ``x/sqrt 2``, ``erfc``, ``exp`` and a copy; attention: the
exponentials and the probabilities), and XLA keeps most of them alive from the
forward pass to the backward pass.  These versions save the input (which the
surrounding layers keep anyway) and per-row statistics; the probabilities of
attention are saved once.  The outputs are the same functions; the gradients
are the textbook closed forms (checked against autodiff by
``tests/test_ops.py``).

What the backward passes recompute (the normalised values, ``erf``) starts
from :func:`after` of the cotangent, else XLA would merge it with the forward
pass's copy and keep that copy alive until the backward pass.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def _stat_dtype(dtype) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


def after(x: jax.Array, g: jax.Array) -> jax.Array:
    """``x``, made to depend on the cotangent ``g``: ``x + 0 * g`` (XLA keeps
    ``a * 0`` for floats because of NaN), with ``g`` first reduced (max) over
    the axes where ``x`` has size 1; over all of ``g`` when the ranks differ.

    A backward pass that recomputes from ``after(x, g)`` computes it when
    ``g`` exists, not in the forward pass; and XLA cannot merge it with the
    same expression of the forward pass.  Without this, XLA:CPU (which
    drops ``optimization_barrier`` before common-subexpression elimination)
    merges the recomputation with the forward pass's and keeps the result
    alive from the forward pass to the backward pass: the memory that the
    recomputation was meant to save.  An infinite or NaN element of ``g``
    makes the recomputation NaN where it is used; such a gradient is not
    finite anyway.

    The dependency is position by position, not on a reduction over all of
    ``g``: on a data-parallel mesh a reduction over the batch axis is a
    reduction across devices, and XLA gave each such call its own
    all-reduce (85 per training step of ``default.py`` on two CPU devices,
    each a rendezvous of the devices' threads; the step ran 1.17x faster
    without them, bit-identical).  A kernel's output exists all at once,
    so the recomputation still cannot start before ``g`` is known.
    """
    if x.ndim != g.ndim:
        return x + (jnp.max(g) * 0).astype(x.dtype)
    axes = _broadcast_axes(x.shape, g.shape)
    if axes:
        g = jnp.max(g, axis=axes, keepdims=True)
    return x + (g * 0).astype(x.dtype)


def _broadcast_axes(shape: tuple, full: tuple) -> tuple:
    """The axes along which ``shape`` (same rank) is broadcast to ``full``."""
    return tuple(i for i, (a, b) in enumerate(zip(shape, full)) if a == 1 and b != 1)


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
    return jnp.sum(g, axis=_broadcast_axes(shape, g.shape), keepdims=True).reshape(shape)


def _normalize_bwd(axis, eps, res, dy):
    x, mean, rstd, scale, bias = res
    dt = mean.dtype
    # gate the small statistics, not x: XLA:CPU's reduction fusion writes the
    # forward pass's mean and rstd out broadcast to x's shape, and a backward
    # pass built from the same expressions would reuse (and keep) those
    mean, rstd = after(mean, dy), after(rstd, dy)
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
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


@jax.custom_vjp
def gelu_exact(x: jax.Array) -> jax.Array:
    """``x * Phi(x)`` with the erf form of the normal CDF (PyTorch's
    ``nn.GELU()``), the same expression as ``jax.nn.gelu(approximate=False)``."""
    return jnp.asarray(x * (jax.lax.erf(x * jnp.asarray(_INV_SQRT2, x.dtype)) + 1) / 2, dtype=x.dtype)


def _gelu_fwd(x):
    return gelu_exact(x), x


def _gelu_bwd(x, dy):
    dt = _stat_dtype(x.dtype)
    xs = after(x, dy).astype(dt)
    cdf = (jax.lax.erf(xs * _INV_SQRT2) + 1) / 2
    pdf = jnp.exp(-0.5 * xs * xs) * _INV_SQRT_2PI
    return ((dy.astype(dt) * (cdf + xs * pdf)).astype(x.dtype),)


gelu_exact.defvjp(_gelu_fwd, _gelu_bwd)


@jax.custom_vjp
def gelu_unit(z: jax.Array) -> jax.Array:
    """``z + z * erf(z)``, which is ``sqrt(2) * gelu_exact(sqrt(2) * z)``:
    the exact GELU with its constants moved into the neighbouring matrix
    products (:class:`rtpca_jax.model.blocks.Mlp`).  XLA:CPU hands every
    scalar constant of an element-wise expression fused with a matrix
    product to its matrix library as a full array of the activation's size
    (three ``[tokens, hidden]`` arrays read per MLP for ``x * (erf(x /
    sqrt 2) + 1) / 2``); this form has none."""
    return z + z * jax.lax.erf(z)


def _gelu_unit_fwd(z):
    return gelu_unit(z), z


def _gelu_unit_bwd(z, dy):
    dt = _stat_dtype(z.dtype)
    zs = after(z, dy).astype(dt)
    # d/dz (z + z erf z) = 1 + erf z + z * 2/sqrt(pi) * exp(-z^2)
    slope = 1 + jax.lax.erf(zs) + zs * jnp.exp(-zs * zs) * _TWO_OVER_SQRT_PI
    return ((dy.astype(dt) * slope).astype(z.dtype),)


gelu_unit.defvjp(_gelu_unit_fwd, _gelu_unit_bwd)


def gelu(x: jax.Array, approximate: bool) -> jax.Array:
    return jax.nn.gelu(x, approximate=True) if approximate else gelu_exact(x)


# ----------------------------------------------------------------- attention


# Head sizes from which the attention's products run head-major (below).
HEAD_MAJOR_MIN_HEAD_DIM = 32


def softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
    """``softmax(scale * q k^T) v`` for ``q[N,T,H,d]``, ``k, v[N,S,H,d]``;
    the softmax in float32 or wider.  The gradient saves the probabilities
    (in the compute dtype) besides its inputs.

    For head sizes of ``HEAD_MAJOR_MIN_HEAD_DIM`` and more the products run
    head-major: the operands are transposed to ``[N,H,T,d]`` first, so every
    product is a plain batched matrix product.  Contracting the ``[N,T,H,d]``
    operands in place (``nthd,nshd->nhts``) leaves the layouts to XLA:CPU,
    which picked transposed ones for its matrix library: the paper preset's
    temporal attention (17 x 8 heads of size 64, 243 queries, 273 keys) took
    70 ms per call that way against 34 ms head-major, bit-identical, and its
    training step and inference ran 1.08x faster.  For small heads the
    transposes cost more than they save (``default.py``, 2 heads of size 16:
    its training step 0.86-0.96x), so those contract in place.

    The scale multiplies the queries, not the logits (exact when it is a
    power of two, as for head size 64): XLA:CPU hands a scalar factor of
    the ``[N, H, T, S]`` logits to its matmul library as a materialised
    ``[N, H, T, S]`` constant, which the backward pass would keep alive."""
    if q.shape[-1] < HEAD_MAJOR_MIN_HEAD_DIM:
        return _attention(q, k, v, scale, "thd")
    heads_major = lambda x: jnp.transpose(x, (0, 2, 1, 3))  # noqa: E731 - its own inverse
    return heads_major(_attention(heads_major(q), heads_major(k), heads_major(v), scale, "htd"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float, layout: str) -> jax.Array:
    """:func:`softmax_attention` with ``q, k, v`` laid out ``[N,T,H,d]``
    (``layout="thd"``) or head-major ``[N,H,T,d]`` (``"htd"``).

    Without a gradient (this primal form) the values are weighted by the
    unnormalised exponentials and the ``[N,H,T,d]`` result is divided by
    their row sums: one exponential and no normalised ``[N,H,T,S]`` array
    (the paper preset's temporal attention, 17 x 8 heads, 243 queries,
    273 keys: 19.9 against 31.8 ms per call on a 2-core CPU).  The forward
    pass of the gradient (below) keeps the normalised probabilities."""
    tq, tk = _subscripts(layout)
    qs, logits = _scaled_logits(q, k, scale, layout)
    e = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    total = jnp.sum(e, axis=-1)  # [N, H, T]
    out = jnp.einsum(f"nhts,{tk}->{tq}", e.astype(v.dtype), v, preferred_element_type=e.dtype)
    # the row sums, laid out like the output's rows: [N,H,T] -> [N,T,H,1] or [N,H,T,1]
    total = (jnp.transpose(total, (0, 2, 1)) if layout == "thd" else total)[..., None]
    return (out / total).astype(v.dtype)


def _subscripts(layout: str) -> tuple[str, str]:
    """einsum subscripts of the queries (and outputs) and of the keys/values."""
    return "n" + layout, "n" + layout.replace("t", "s")


def _scaled_logits(q, k, scale, layout):
    """The scaled queries and the ``[N,H,T,S]`` logits (float32 or wider)."""
    tq, tk = _subscripts(layout)
    qs = q * jnp.asarray(scale, q.dtype)
    return qs, jnp.einsum(f"{tq},{tk}->nhts", qs, k, preferred_element_type=_stat_dtype(qs.dtype))


def _attention_fwd(q, k, v, scale, layout):
    """The output and what the backward pass keeps.  The probabilities are
    ``exp(logits - logsumexp)``: the exponential is
    in the fusion that writes the probabilities, so XLA does not rebuild them
    in the backward pass from a kept ``exp(logits - max)`` and ``1 / sum``
    (a cheap product it would duplicate, keeping two arrays alive for one)."""
    tq, tk = _subscripts(layout)
    qs, logits = _scaled_logits(q, k, scale, layout)
    m = jnp.max(logits, axis=-1, keepdims=True)
    lse = m + jnp.log(jnp.sum(jnp.exp(logits - m), axis=-1, keepdims=True))
    p = jnp.exp(logits - lse).astype(v.dtype)
    out = jnp.einsum(f"nhts,{tk}->{tq}", p, v)
    return out, (qs, k, v, p)


def _attention_bwd(scale, layout, res, dout):
    tq, tk = _subscripts(layout)
    qs, k, v, p = res
    dt = _stat_dtype(qs.dtype)
    dout = dout.astype(v.dtype)
    dv = jnp.einsum(f"nhts,{tq}->{tk}", p, dout)
    dp = jnp.einsum(f"{tq},{tk}->nhts", dout, v, preferred_element_type=dt)
    pf = p.astype(dt)
    ds = (pf * (dp - jnp.sum(pf * dp, axis=-1, keepdims=True))).astype(qs.dtype)
    dq = jnp.einsum(f"nhts,{tk}->{tq}", ds, k) * jnp.asarray(scale, qs.dtype)
    dk = jnp.einsum(f"nhts,{tq}->{tk}", ds, qs)
    return dq, dk, dv


_attention.defvjp(_attention_fwd, _attention_bwd)

# ---------------------------------------------------------------------- dense


_TIED = contextvars.ContextVar("rtpca_jax_tied_weight_gradients", default=True)


@contextlib.contextmanager
def weight_gradients_tied(tied: bool):
    """Whether :func:`affine`'s backward passes traced in this context tie the
    input's gradient to the weight gradients (outside any: tied).  The
    training step ties them on a single device only: on a data-parallel mesh
    a weight gradient is a sum over the devices, and the tie made every
    layer's all-reduce a link of the backward chain (``default.py`` on 8 CPU
    devices: 34 all-reduces per step instead of XLA's one combined one)."""
    token = _TIED.set(bool(tied))
    try:
        yield
    finally:
        _TIED.reset(token)


def affine(x: jax.Array, kernel: jax.Array, bias: Optional[jax.Array] = None) -> jax.Array:
    """``x[..., C] @ kernel[C, F] (+ bias[F])``.  The forward pass contracts
    the last axis as it is; the backward pass flattens the leading axes (a
    free reshape) so that both gradients are 2-D products, and (see
    :func:`weight_gradients_tied`) returns the input's gradient through
    :func:`after` of the parameters' gradients.

    Under autodiff of the N-D contraction, XLA:CPU wrote each layer's output
    gradient out transposed for the weight product (a strided copy), and its
    scheduler put every layer's weight product after the whole backward pass,
    keeping the output gradients alive until then: the paper preset's
    training step at batch 1 held 3.32 GiB of temporary memory, 2.56 GiB
    with this (README, "Dense layers as 2-D products")."""
    return _affine(x, kernel, bias, _TIED.get())


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _affine(x, kernel, bias, tied):
    y = jnp.dot(x, kernel)
    return y if bias is None else y + bias


def _affine_fwd(x, kernel, bias, tied):
    return _affine(x, kernel, bias, tied), (x, kernel, bias)


def _affine_bwd(tied, res, g):
    x, kernel, bias = res  # bias: only whether there is one (None has no cotangent)
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    dkernel = jnp.dot(x2.T, g2)
    dbias = None if bias is None else jnp.sum(g2, axis=0)
    dx = jnp.dot(g2, kernel.T)
    if tied:
        dx = after(dx, jnp.max(dkernel) if dbias is None else jnp.max(dkernel) + jnp.max(dbias))
    return dx.reshape(x.shape), dkernel, dbias


_affine.defvjp(_affine_fwd, _affine_bwd)
