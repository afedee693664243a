"""Multi-head attention whose keys/values may come from a refined sequence and
may be extended by keys/values handed over from another block."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rtpca_jax.model import ops
from rtpca_jax.model.pyramid import Pyramid, adaptive_avg_pool
from rtpca_jax.model.spec import ModelSpec

KV = tuple[jax.Array, jax.Array]  # keys, values: [N, S, G*H, d] each (G: group axes folded into heads)


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    impl: str,
    dropout_rate: float = 0.0,
    dropout_rng: Optional[jax.Array] = None,
    cudnn_min_length: int = 0,
) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v for ``q[N,T,H,d]``, ``k, v[N,S,H,d]``.

    ``impl``: ``explicit`` is :func:`rtpca_jax.model.ops.softmax_attention`
    (the explicit form with a gradient that saves the probabilities once);
    ``xla`` and ``cudnn`` go through ``jax.nn.dot_product_attention`` with
    that implementation; ``einsum`` is the explicit form under plain
    autodiff; ``auto`` is ``cudnn`` on an NVIDIA GPU and ``explicit``
    elsewhere.  Attention dropout always takes the explicit form.  cuDNN's
    fused kernel trains only on even sequence lengths: ``cudnn`` pads odd
    ones (243 frames, 17 joints) by one token (a masked key, a dropped
    query row: :func:`fused_attention`); shapes and dtypes it refuses all
    the same (float32, head sizes that are not a multiple of 8) and other
    backends take the ``explicit`` form, so ``cudnn`` means "cuDNN wherever
    it runs".  Queries shorter than ``cudnn_min_length`` tokens take the
    ``explicit`` form instead of cuDNN (``model.attention_cudnn_min_length``).
    """
    scale = q.shape[-1] ** -0.5
    dropout = dropout_rate > 0 and dropout_rng is not None
    impl = resolve_impl(impl)
    if impl == "cudnn" and q.shape[1] < cudnn_min_length:
        impl = "explicit"
    if impl in ("xla", "cudnn") and not dropout:
        try:
            return fused_attention(q, k, v, scale, impl, pad_to=2 if impl == "cudnn" else 1)
        except NotImplementedError:  # raised while tracing: shapes cuDNN does not take
            if impl == "xla":
                raise
            impl = "explicit"
    if impl == "explicit" and not dropout:
        return ops.softmax_attention(q, k, v, scale)
    logits = jnp.einsum("nthd,nshd->nhts", q, k) * jnp.asarray(scale, q.dtype)
    probs = jax.nn.softmax(logits.astype(jnp.promote_types(q.dtype, jnp.float32)), axis=-1)
    probs = probs.astype(v.dtype)
    if dropout:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0).astype(v.dtype)
    return jnp.einsum("nhts,nshd->nthd", probs, v)


def on_nvidia_gpu() -> bool:
    """Whether JAX's default devices are CUDA GPUs (cuDNN's)."""
    d = jax.devices()[0]
    return d.platform == "gpu" and "rocm" not in str(getattr(d.client, "platform_version", "")).lower()


def resolve_impl(impl: str) -> str:
    """``auto`` and ``cudnn`` are ``cudnn`` on NVIDIA GPUs, ``explicit``
    elsewhere; other names are themselves."""
    if impl in ("auto", "cudnn"):
        return "cudnn" if on_nvidia_gpu() else "explicit"
    return impl


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float, impl: str, pad_to: int = 1):
    """``jax.nn.dot_product_attention`` with the query and key sequences
    padded to a multiple of ``pad_to``; padded keys are masked out
    (``key_value_seq_lengths``), padded query rows are dropped."""
    t, s = q.shape[1], k.shape[1]

    def pad(x):  # along the sequence axis, to a multiple of pad_to (no-op when it is one)
        return jnp.pad(x, ((0, 0), (0, -x.shape[1] % pad_to), (0, 0), (0, 0)))

    lengths = jnp.full((q.shape[0],), s, jnp.int32) if s % pad_to else None
    out = jax.nn.dot_product_attention(pad(q), pad(k), pad(v), scale=scale, implementation=impl,
                                       key_value_seq_lengths=lengths)
    return out[:, :t]


def pool_kv(kv: KV, length: int) -> KV:
    """XLR: adaptive average pooling of handed-over keys/values along tokens."""
    return tuple(adaptive_avg_pool(t, length, axis=1) for t in kv)  # type: ignore[return-value]


class DenseParams(nn.Module):
    """The kernel and bias of a Dense layer, returned rather than applied, so
    that projections can be fused (same parameter tree as ``nn.Dense``)."""

    features: int
    use_bias: bool = True
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, in_features: int):
        return _kernel_and_bias(self, in_features, self.features, self.use_bias, self.param_dtype)


def _kernel_and_bias(module: nn.Module, in_features: int, features: int, use_bias: bool, param_dtype):
    """A Dense layer's parameters in ``module``: kernel (truncated normal 0.02), bias (zeros) or None."""
    kernel = module.param("kernel", nn.initializers.truncated_normal(0.02), (in_features, features), param_dtype)
    bias = module.param("bias", nn.initializers.zeros, (features,), param_dtype) if use_bias else None
    return kernel, bias


class Dense(nn.Module):
    """``nn.Dense`` (the same parameters and initialisation, truncated normal
    0.02 and zero bias) applied through :func:`project`."""

    features: int
    dtype: Optional[jnp.dtype] = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = _kernel_and_bias(self, x.shape[-1], self.features, True, self.param_dtype)
        return project(x, kernel, bias, self.dtype)


def project(x, kernel, bias, dtype):
    """``x[..., C] @ kernel + bias`` in ``dtype`` (:func:`ops.affine`)."""
    dtype = dtype or jnp.result_type(x, kernel)
    return ops.affine(x.astype(dtype), kernel.astype(dtype), None if bias is None else bias.astype(dtype))


class Attention(nn.Module):
    """Attention along axis 1 of ``h[N, L, *G, C]``.

    Axes ``G`` between the sequence and channel axes (the joints, when the
    temporal stream runs in the ``[B, F, J, C]`` layout) index independent
    sequences; they are folded into the head axis (``G*H`` heads), which is a
    free reshape, so the stream needs no transpose.  Queries come from ``h``; keys/values from ``h`` or, with ``tpca``, from the
    TPCA-refined ``h``.  ``extra_kv`` (already pooled) is concatenated after the
    block's own keys/values.  Returns the projected output and the keys/values
    the block attended to (own, or own + extra).
    """

    spec: ModelSpec
    tpca: bool = False
    train: bool = False

    @nn.compact
    def __call__(self, h: jax.Array, extra_kv: Optional[KV] = None) -> tuple[jax.Array, KV]:
        s = self.spec
        n, length, *groups, c = h.shape
        heads = s.num_heads * int(np.prod(groups, dtype=np.int64))
        qk, qb = DenseParams(c, s.qkv_bias, s.param_dtype, name="q")(c)
        kvk, kvb = DenseParams(2 * c, s.qkv_bias, s.param_dtype, name="kv")(c)
        if self.tpca:
            kv_src = Pyramid(s, name="pyramid")(h)
            q = project(h, qk, qb, s.dtype)
            kv = project(kv_src, kvk, kvb, s.dtype)
        else:
            # plain self-attention: one fused projection for queries, keys and values
            fused = project(h, jnp.concatenate([qk, kvk], axis=1),
                             None if qb is None else jnp.concatenate([qb, kvb]), s.dtype)
            q, kv = fused[..., :c], fused[..., c:]
        q = q.reshape(n, length, heads, s.head_dim)
        k = kv[..., :c].reshape(n, length, heads, s.head_dim)
        v = kv[..., c:].reshape(n, length, heads, s.head_dim)
        if extra_kv is not None:
            k = jnp.concatenate([k, extra_kv[0].astype(k.dtype)], axis=1)
            v = jnp.concatenate([v, extra_kv[1].astype(v.dtype)], axis=1)
        use_drop = self.train and s.attn_drop_rate > 0
        out = attend(
            q, k, v, impl=s.attention_impl, dropout_rate=s.attn_drop_rate if use_drop else 0.0,
            dropout_rng=self.make_rng("dropout") if use_drop else None,
            cudnn_min_length=s.attention_cudnn_min_length,
        )
        out = out.reshape(h.shape)
        out = Dense(c, dtype=s.dtype, param_dtype=s.param_dtype, name="proj")(out)
        out = nn.Dropout(s.drop_rate, deterministic=not self.train)(out)
        return out, (k, v)
