"""The hand-written gradients of model/ops.py against autodiff of independent
plain statements of the same functions (float64, so any formula error shows
far above rounding), and the memory they are there to save."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rtpca_jax.model import ops


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _check_vjp(f_lean, f_ref, args, rtol=1e-10, atol=1e-11):
    y1, vjp1 = jax.vjp(f_lean, *args)
    y2, vjp2 = jax.vjp(f_ref, *args)
    np.testing.assert_allclose(y1, y2, rtol=rtol, atol=atol * 0.1)
    ct = jnp.asarray(np.random.default_rng(7).normal(size=y1.shape))
    for g1, g2 in zip(vjp1(ct), vjp2(ct)):
        assert g1.shape == g2.shape
        np.testing.assert_allclose(g1, g2, rtol=rtol, atol=atol)


def _plain_attention(q, k, v, scale):
    """softmax(scale q k^T) v by the textbook statement, under plain autodiff."""
    w = jnp.einsum("nthd,nshd->nhts", q, k) * scale
    w = jnp.exp(w - w.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    return jnp.einsum("nhts,nshd->nthd", w, v)


def test_layer_norm_matches_flax_and_its_gradient():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(1.5, 2.0, (3, 5, 16)))
    scale = jnp.asarray(rng.normal(1.0, 0.3, (16,)))
    bias = jnp.asarray(rng.normal(0.0, 0.3, (16,)))
    ref = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, param_dtype=jnp.float64)

    def lean(x, s, b):
        return ops.normalize(x, s.reshape(1, 1, 16), b.reshape(1, 1, 16), 2, 1e-6)

    def plain(x, s, b):
        return ref.apply({"params": {"scale": s, "bias": b}}, x)

    _check_vjp(lean, plain, (x, scale, bias))


def test_normalize_along_time_axis_gradient():
    """The pyramid's time-axis norm: statistics over axis 1, one affine pair
    per time step, every other axis independent."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 7, 3, 4)))
    scale = jnp.asarray(rng.normal(1.0, 0.3, (7,)))
    bias = jnp.asarray(rng.normal(0.0, 0.3, (7,)))

    def lean(x, s, b):
        return ops.normalize(x, s.reshape(1, 7, 1, 1), b.reshape(1, 7, 1, 1), 1, 1e-5)

    def plain(x, s, b):
        mean = x.mean(axis=1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + 1e-5) * s.reshape(1, 7, 1, 1) + b.reshape(1, 7, 1, 1)

    _check_vjp(lean, plain, (x, scale, bias))


def test_gelu_exact_gradient():
    x = jnp.linspace(-6.0, 6.0, 97)
    from jax.scipy.special import ndtr

    _check_vjp(ops.gelu_exact, lambda x: x * ndtr(x), (x,))


def test_gelu_unit_is_the_exact_gelu_with_its_constants_moved_out():
    """``z + z erf z = sqrt 2 * gelu(sqrt 2 * z)`` = ``2 z Phi(sqrt 2 z)``."""
    z = jnp.linspace(-5.0, 5.0, 97)
    from jax.scipy.special import ndtr

    _check_vjp(ops.gelu_unit, lambda z: 2 * z * ndtr(np.sqrt(2.0) * z), (z,))
    np.testing.assert_allclose(ops.gelu_unit(z / np.sqrt(2.0)) / np.sqrt(2.0), ops.gelu_exact(z), rtol=1e-12,
                               atol=1e-15)


@pytest.mark.parametrize("t,s", [(5, 5), (6, 9)])
@pytest.mark.parametrize("d", [4, ops.HEAD_MAJOR_MIN_HEAD_DIM])  # contracted in place, head-major
def test_softmax_attention_gradient(t, s, d):
    rng = np.random.default_rng(2)
    q = jnp.asarray(rng.normal(size=(2, t, 3, d)))
    k = jnp.asarray(rng.normal(size=(2, s, 3, d)))
    v = jnp.asarray(rng.normal(size=(2, s, 3, d)))
    scale = d ** -0.5
    _check_vjp(lambda q, k, v: ops.softmax_attention(q, k, v, scale), functools.partial(_plain_attention, scale=scale),
               (q, k, v))
    # without a gradient the primal form runs (normalised after the values' product)
    np.testing.assert_allclose(ops.softmax_attention(q, k, v, scale), _plain_attention(q, k, v, scale), rtol=1e-12,
                               atol=1e-14)


@pytest.mark.parametrize("pad_to", [1, 2, 8])
def test_padded_fused_attention_is_plain_attention(pad_to):
    """The sequence padding the cuDNN path needs (odd lengths: 243 frames, 17
    joints) masks the padded keys and drops the padded queries: same values
    and gradients as unpadded attention (here through XLA's implementation of
    the same call)."""
    from rtpca_jax.model.attention import fused_attention

    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.normal(size=(2, 7, 3, 8)))
    k = jnp.asarray(rng.normal(size=(2, 9, 3, 8)))
    v = jnp.asarray(rng.normal(size=(2, 9, 3, 8)))
    scale = 8 ** -0.5
    # jax's XLA implementation rounds like float32 even on float64 inputs
    # (1.7e-7 unpadded); an unmasked padded key would be off by ~1e-1
    _check_vjp(lambda q, k, v: fused_attention(q, k, v, scale, "xla", pad_to),
               functools.partial(_plain_attention, scale=scale), (q, k, v), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["auto", "cudnn"])
def test_attention_choice_off_nvidia_gpus_is_the_explicit_form(impl):
    """Where there is no cuDNN (this CPU), ``auto`` and ``cudnn`` attention
    are the explicit form, bit for bit, rather than an error."""
    from rtpca_jax.model.attention import attend, on_nvidia_gpu

    if on_nvidia_gpu():
        pytest.skip("this checks the fallback off NVIDIA GPUs")
    rng = np.random.default_rng(4)
    q, k, v = (jnp.asarray(rng.normal(size=(2, n, 3, 8)), jnp.bfloat16) for n in (7, 9, 9))
    np.testing.assert_array_equal(attend(q, k, v, impl=impl), attend(q, k, v, impl="explicit"))


@pytest.mark.parametrize("layout", ["transposed", "grouped"])
def test_cudnn_min_length_keeps_short_sequences_off_cudnn(monkeypatch, layout):
    """With ``model.attention_cudnn_min_length`` the cuDNN path takes only the
    sequences at least that long: the temporal stream's frames (27 here),
    not the spatial stream's 17 joints, which take the explicit form.  The
    GPU is simulated: ``fused_attention`` records the query lengths it is
    given and computes plain attention."""
    from rtpca_jax import model
    from rtpca_jax.model import attention

    seen = []

    def fused(q, k, v, scale, impl, pad_to=1):
        seen.append((q.shape[1], impl))
        return _plain_attention(q, k, v, scale)

    monkeypatch.setattr(attention, "on_nvidia_gpu", lambda: True)
    monkeypatch.setattr(attention, "fused_attention", fused)
    x = jnp.asarray(np.random.default_rng(7).normal(size=(2, 27, 17, 2)), jnp.float32)
    outs = {}
    for min_length in (0, 18):
        m = model.build(dict(variant="rtpca", num_frames=27, width=16, depth=2, num_heads=4,
                             drop_path_rate=0.0, attention_impl="cudnn", temporal_layout=layout,
                             attention_cudnn_min_length=min_length))
        params = model.init_params(m, jax.random.PRNGKey(0))
        seen.clear()  # initialisation traced the blocks too
        outs[min_length] = m.apply({"params": params}, x)
        lengths = sorted({n for n, _ in seen})
        assert {impl for _, impl in seen} == {"cudnn"}
        assert lengths == ([17, 27] if min_length == 0 else [27]), (min_length, lengths)
    # same parameters (same seed), same function: the explicit form for the joints
    np.testing.assert_allclose(outs[0], outs[18], rtol=1e-5, atol=1e-5)


def test_cudnn_attention_at_the_paper_size_on_a_gpu():
    """On an NVIDIA GPU: cuDNN's fused attention (bf16, padded from 243 to
    244 queries and 273 to 274 keys) against float32 explicit attention,
    values and gradients, to within bf16 rounding (2^-8 relative).  The
    logits are made negative (about -4), so an unmasked zero padding key
    (logit 0) would take a sixth of each row's weight: 22 % off."""
    from rtpca_jax.model.attention import attend, on_nvidia_gpu

    if not on_nvidia_gpu():
        pytest.skip("cuDNN attention needs an NVIDIA GPU")
    rng = np.random.default_rng(6)
    q = jnp.asarray(rng.normal(0.7, 0.3, (4, 243, 16, 64)), jnp.float32)
    k = jnp.asarray(rng.normal(-0.7, 0.3, (4, 273, 16, 64)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(4, 273, 16, 64)), jnp.float32)
    ct = jnp.asarray(rng.normal(size=q.shape), jnp.float32)

    def run(impl, dtype):
        f = jax.jit(lambda q, k, v: attend(q.astype(dtype), k.astype(dtype), v.astype(dtype), impl=impl)
                    .astype(jnp.float32))
        if impl == "cudnn":  # the fused kernel, not the fallback
            assert "cudnn" in f.lower(q, k, v).compile().as_text()
        y, vjp = jax.vjp(f, q, k, v)
        return (y, *vjp(ct))

    for a, b in zip(run("cudnn", jnp.bfloat16), run("explicit", jnp.float32)):
        err = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        assert err < 2e-2, err


def test_lean_layers_save_less_for_the_backward_pass():
    """What autodiff keeps from the forward pass: only the input for GELU and
    layer norm (plus per-row statistics), one probability array for
    attention; the plain statements keep several arrays of the input's size."""
    import contextlib
    import io
    import re

    from jax.ad_checkpoint import print_saved_residuals

    def saved_elements(f, *args):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            print_saved_residuals(f, *args)
        shapes = re.findall(r"^\w+\[([\d,]*)\]", out.getvalue(), re.M)
        assert shapes, out.getvalue()
        return sum(int(np.prod([int(d) for d in s.split(",") if d])) for s in shapes)

    x = jnp.ones((64, 32))
    scale, bias = jnp.ones((1, 32)), jnp.zeros((1, 32))
    assert saved_elements(lambda x: ops.gelu_exact(x).sum(), x) == x.size
    assert saved_elements(lambda x: ops.gelu_unit(x).sum(), x) == x.size
    assert saved_elements(lambda x: jax.nn.gelu(x, approximate=False).sum(), x) >= 3 * x.size
    lean_ln = saved_elements(lambda x: ops.normalize(x, scale, bias, 1, 1e-6).sum(), x)
    assert lean_ln <= x.size + 2 * 64 + 2 * 32
    plain_ln = saved_elements(
        lambda x: nn.LayerNorm(use_fast_variance=False).apply({"params": {"scale": scale[0], "bias": bias[0]}}, x).sum(),
        x)
    assert plain_ln >= 2 * x.size
    for d in (8, ops.HEAD_MAJOR_MIN_HEAD_DIM):  # contracted in place, head-major
        q = jnp.ones((1, 16, 2, d))
        probs = 1 * 2 * 16 * 16
        k, v = q + 1, q + 2
        lean_att = saved_elements(lambda q, k, v: ops.softmax_attention(q, k, v, 0.3).sum(), q, k, v)
        # the scaled queries, the keys and values and the probabilities
        assert lean_att <= 3 * q.size + probs
        plain_att = saved_elements(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=0.3).sum(), q, k, v)
        assert plain_att >= lean_att + probs
