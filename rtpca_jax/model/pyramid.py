"""TPCA: temporal pyramidal compression and amplification of keys/values.

Everything here works on ``x[N, L, ..., C]``: time on axis 1, channels last,
and any axes between them (joints, in the model's ``[B, F, J, C]`` layout)
treated as independent series.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rtpca_jax.model import ops
from rtpca_jax.model.spec import ModelSpec, upsample_kernel


@functools.lru_cache(maxsize=None)
def adaptive_pool_matrix(length: int, out_length: int) -> np.ndarray:
    """Averaging matrix ``[out_length, length]`` of PyTorch's AdaptiveAvgPool1d.

    Output bin ``i`` averages inputs ``[floor(i*L/n), ceil((i+1)*L/n))``.
    """
    if length < 1 or out_length < 1:
        raise ValueError(f"adaptive pool from {length} to {out_length}: lengths must be >= 1")
    m = np.zeros((out_length, length), dtype=np.float64)
    for i in range(out_length):
        start = (i * length) // out_length
        end = -((-(i + 1) * length) // out_length)  # ceil
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: jax.Array, out_length: int, axis: int = 1) -> jax.Array:
    """Adaptive average pooling of ``x`` along ``axis`` as one batched matrix
    product over the axes before ``axis``: ``y[b] = M @ x[b]`` with the
    averaging matrix ``M`` repeated per ``b`` (it is small: out_length x
    length), so that both operands and the result keep their layout.
    Contracting ``M`` with ``x`` unbatched (``ol,blr->bor``) made XLA:CPU
    transpose ``x`` so that time was minor, and the result back: the pool
    and its gradient took 3-4x longer at ``default.py``'s sizes (README,
    Benchmarks)."""
    length = x.shape[axis]
    m = jnp.asarray(adaptive_pool_matrix(length, out_length), dtype=x.dtype)
    axis = axis % x.ndim
    lead = x.shape[:axis]
    b = int(np.prod(lead, dtype=np.int64))
    xr = x.reshape((b, length, -1))
    y = jnp.einsum("bol,blr->bor", jnp.broadcast_to(m, (b,) + m.shape), xr)
    return y.reshape(lead + (out_length,) + x.shape[axis + 1:])


class TimeLayerNorm(nn.Module):
    """LayerNorm over the time axis (axis 1) with one affine pair per time step;
    every other axis indexes an independent series.

    The official pyramid applies ``nn.LayerNorm(L)`` to tensors laid out
    ``[N, C, L]``, i.e. it normalises each channel's time series.
    """

    length: int
    eps: float = 1e-5
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[1] != self.length:
            raise ValueError(f"TimeLayerNorm expects {self.length} time steps, got {x.shape[1]}")
        scale = self.param("scale", nn.initializers.ones, (self.length,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.length,), self.param_dtype)
        x = x.astype(self.dtype or jnp.result_type(x, scale))
        # With a leading axis of size 1 (batch 1 in the [B, F, J, C] layout)
        # XLA:CPU computes the gradient of this reduction about 50x slower
        # (measured: 1.3 s against 0.02 s at [1, 243, 17, 512]); drop it.
        squeeze = x.shape[0] == 1
        xs = x[0] if squeeze else x
        axis = 0 if squeeze else 1
        shape = (1,) * axis + (self.length,) + (1,) * (xs.ndim - axis - 1)
        y = ops.normalize(xs, scale.reshape(shape), bias.reshape(shape), axis, self.eps)
        return y[None] if squeeze else y


class DepthwiseUpsample(nn.Module):
    """Depthwise ``ConvTranspose1d(C, C, k, stride=r, groups=C)`` along time.

    ``out[r*i + t, c] += kernel[t, c] * x[i, c]`` plus a per-channel bias, with
    ``k = out_length - r*(L_in - 1)`` so the output has exactly ``out_length``
    steps.  Written phase by phase, without a scatter: with ``r <= k < 2r``,
    output ``r*i + t`` is ``kernel[t] * x[i] + kernel[t + r] * x[i - 1]``
    (the second term when ``t + r < k``); the ``r`` phases are interleaved by
    a stack and a reshape.  (Forming every tap ``x[i] * kernel[t]`` first,
    ``[N, L, k, ..., C]``, and adding two padded halves was 5 % of
    ``default.py``'s training step: XLA:CPU wrote the kernel out broadcast to
    that shape, README, Benchmarks.)
    """

    out_length: int
    ratio: int
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, l_in, *rest = x.shape
        c = rest[-1]
        r = self.ratio
        k = upsample_kernel(l_in, self.out_length, r)
        if not r <= k <= 2 * r - 1:
            raise ValueError(
                f"upsampling {l_in} -> {self.out_length} with stride {r} needs kernel {k}, "
                f"outside [{r}, {2 * r - 1}]"
            )
        kernel = self.param("kernel", nn.initializers.truncated_normal(0.02), (k, c), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        dtype = self.dtype or jnp.result_type(x, kernel)
        x = x.astype(dtype)
        kernel = kernel.astype(dtype)
        none = ((0, 0),) * len(rest)
        cur = jnp.pad(x, ((0, 0), (0, 1)) + none)  # x[i] for i = 0..L_in (x[L_in] = 0)
        prev = jnp.pad(x, ((0, 0), (1, 0)) + none)  # x[i - 1] (x[-1] = 0)
        phases = [cur * kernel[t] + prev * kernel[t + r] if t + r < k else cur * kernel[t] for t in range(r)]
        out = jnp.stack(phases, axis=2).reshape((n, (l_in + 1) * r, *rest))[:, : self.out_length]
        return out + bias.astype(dtype)


class Pyramid(nn.Module):
    """TPCA refinement of ``h[N, F, ..., C]`` into the keys/values source.

    ``p_k = GELU(LN_k(pool(p_{k-1})))`` for k = 1..n (p_0 = h); then from the
    coarsest level up, ``c = GELU(upLN_k(up_k(c + p_k)))`` (no skip at the
    coarsest level); finally ``LayerNorm_C(c + h)``.
    """

    spec: ModelSpec

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        s = self.spec
        lengths = s.pyramid_lengths
        n = s.pyramid_levels
        gelu = functools.partial(ops.gelu, approximate=s.gelu_approximate)
        tln = functools.partial(
            TimeLayerNorm, eps=s.pyramid_ln_eps, dtype=s.dtype, param_dtype=s.param_dtype
        )
        levels = [h]
        p = h
        for k in range(1, n + 1):
            p = gelu(tln(lengths[k], name=f"pool_norm_{k}")(adaptive_avg_pool(p, lengths[k])))
            levels.append(p)
        c = levels[n]
        for k in range(n, 0, -1):
            inp = c if k == n else c + levels[k]
            up = DepthwiseUpsample(
                lengths[k - 1], s.pyramid_ratio, dtype=s.dtype, param_dtype=s.param_dtype,
                name=f"up_{k}",
            )(inp)
            c = gelu(tln(lengths[k - 1], name=f"up_norm_{k}")(up))
        return ops.LayerNorm(s.pyramid_ln_eps, dtype=s.dtype, param_dtype=s.param_dtype, name="out_norm")(c + h)
