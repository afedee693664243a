"""Layers against closed forms and (where installed) PyTorch's own layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rtpca_jax.model.pyramid import (
    DepthwiseUpsample,
    TimeLayerNorm,
    adaptive_avg_pool,
    adaptive_pool_matrix,
)


def test_adaptive_pool_243_matches_fixed_pools():
    """OFFICIAL_MODEL.md: 243->121 and 121->60 are avg-pool k3 s2, 60->30 is k2 s2."""
    x = np.random.default_rng(0).normal(size=(2, 243, 5))
    y = np.asarray(adaptive_avg_pool(jnp.asarray(x), 121))
    ref = np.stack([x[:, 2 * i:2 * i + 3].mean(1) for i in range(121)], 1)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)
    y2 = np.asarray(adaptive_avg_pool(jnp.asarray(ref), 60))
    ref2 = np.stack([ref[:, 2 * i:2 * i + 3].mean(1) for i in range(60)], 1)
    np.testing.assert_allclose(y2, ref2, rtol=1e-6, atol=1e-6)
    y3 = np.asarray(adaptive_avg_pool(jnp.asarray(ref2), 30))
    ref3 = np.stack([ref2[:, 2 * i:2 * i + 2].mean(1) for i in range(30)], 1)
    np.testing.assert_allclose(y3, ref3, rtol=1e-6, atol=1e-6)


def test_adaptive_pool_bins_hand_computed():
    # L=5 -> n=3: bins [0,2), [1,4), [3,5)
    m = adaptive_pool_matrix(5, 3)
    expected = np.array([[.5, .5, 0, 0, 0], [0, 1 / 3, 1 / 3, 1 / 3, 0], [0, 0, 0, .5, .5]])
    np.testing.assert_allclose(m, expected)
    # XLR from 243 to 30: window i starts at floor(8.1 i)
    m = adaptive_pool_matrix(243, 30)
    starts = [int(np.flatnonzero(row)[0]) for row in m]
    assert starts == [int(np.floor(8.1 * i)) for i in range(30)]


@pytest.mark.parametrize("l_in,l_out,r", [(30, 60, 2), (60, 121, 2), (121, 243, 2), (9, 27, 3),
                                          (29, 88, 3), (21, 87, 4), (5, 22, 4)])
def test_depthwise_upsample_matches_definition(l_in, l_out, r):
    rng = np.random.default_rng(l_in)
    x = rng.normal(size=(2, l_in, 4))
    mod = DepthwiseUpsample(l_out, r)
    params = mod.init(jax.random.PRNGKey(0), jnp.asarray(x))
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(size=a.shape)), params)
    y = np.asarray(mod.apply(params, jnp.asarray(x)))
    w = np.asarray(params["params"]["kernel"])
    b = np.asarray(params["params"]["bias"])
    k = w.shape[0]
    assert k == l_out - r * (l_in - 1)
    ref = np.zeros((2, l_out, 4)) + b
    for i in range(l_in):
        for t in range(k):
            ref[:, r * i + t] += w[t] * x[:, i]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_time_layer_norm_closed_form():
    x = np.random.default_rng(1).normal(size=(3, 7, 4))
    mod = TimeLayerNorm(7, eps=1e-5)
    p = {"params": {"scale": jnp.arange(1.0, 8.0), "bias": jnp.arange(7.0) * 0.1}}
    y = np.asarray(mod.apply(p, jnp.asarray(x)))
    mu = x.mean(1, keepdims=True)
    var = x.var(1, keepdims=True)
    ref = (x - mu) / np.sqrt(var + 1e-5) * np.arange(1.0, 8.0)[None, :, None] + (np.arange(7.0) * .1)[None, :, None]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)




@pytest.mark.parametrize("length,out", [(351, 175), (81, 40), (27, 9), (100, 33), (273, 30)])
def test_adaptive_pool_matches_torch(length, out):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(length).normal(size=(2, 3, length))
    ref = torch.nn.AdaptiveAvgPool1d(out)(torch.tensor(x)).numpy()
    y = np.asarray(adaptive_avg_pool(jnp.asarray(x), out, axis=2))
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("l_in,l_out,r", [(43, 87, 2), (9, 27, 3), (29, 88, 3), (21, 87, 4)])
def test_depthwise_upsample_matches_torch_conv_transpose(l_in, l_out, r):
    torch = pytest.importorskip("torch")
    c = 6
    k = l_out - r * (l_in - 1)
    conv = torch.nn.ConvTranspose1d(c, c, k, stride=r, groups=c).double()
    x = np.random.default_rng(0).normal(size=(2, c, l_in))
    ref = conv(torch.tensor(x)).detach().numpy()
    params = {"params": {"kernel": jnp.asarray(conv.weight.detach().numpy()[:, 0, :].T),
                         "bias": jnp.asarray(conv.bias.detach().numpy())}}
    y = DepthwiseUpsample(l_out, r).apply(params, jnp.asarray(x.transpose(0, 2, 1)))
    np.testing.assert_allclose(np.asarray(y).transpose(0, 2, 1), ref, rtol=1e-5, atol=1e-5)


def test_drop_path_drops_whole_sequences_of_the_grouped_layout():
    """In [B, F, J, C] a temporal sequence is one (clip, joint): stochastic
    depth must keep or drop it across all frames and channels, as the official
    per-(b n) mask does, with kept sequences scaled by 1/keep."""
    import flax.linen as nn

    from rtpca_jax.model.blocks import drop_path

    class M(nn.Module):
        @nn.compact
        def __call__(self, x):
            return drop_path(self, x, 0.5, True)

    x = jnp.ones((64, 5, 17, 4))
    y = np.asarray(M().apply({}, x, rngs={"dropout": jax.random.PRNGKey(3)}))
    per_seq = y[:, :1, :, :1]
    assert np.all(y == per_seq)  # constant along frames and channels
    assert set(np.unique(per_seq)) == {0.0, 2.0}
    assert 0.4 < (per_seq == 0).mean() < 0.6
    assert not np.all(per_seq == per_seq[:, :, :1])  # joints are independent


@pytest.mark.parametrize("approximate", [False, True])
def test_mlp_is_fc2_gelu_fc1(approximate):
    """The MLP against ``fc2(gelu(fc1 x))`` written out from its parameters
    (float64): the exact form runs as ``z + z erf z`` with ``1 / sqrt 2``
    moved into fc1 and fc2, the tanh form as it is."""
    from jax.scipy.special import ndtr

    from rtpca_jax.model import spec as spec_lib
    from rtpca_jax.model.blocks import Mlp

    with jax.enable_x64(True):
        s = spec_lib.resolve({"width": 8, "mlp_ratio": 2.0, "num_heads": 2, "num_frames": 27,
                              "gelu_approximate": approximate, "param_dtype": "float64"})
        m = Mlp(s)
        x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 8)))
        p = m.init(jax.random.PRNGKey(0), x)["params"]
        h = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
        if approximate:
            g = 0.5 * h * (1 + jnp.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
        else:
            g = h * ndtr(h)
        ref = g @ p["fc2"]["kernel"] + p["fc2"]["bias"]
        np.testing.assert_allclose(m.apply({"params": p}, x), ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("bias", [True, False])
def test_project_is_the_affine_map_with_its_gradient(bias):
    """``project`` (a 2-D product over the flattened leading axes, with its own
    gradient) against ``x @ kernel + bias`` contracted over the last axis of a
    4-D ``x`` and differentiated by autodiff (float64)."""
    from rtpca_jax.model.attention import project

    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(2, 3, 4, 5)))
        k = jnp.asarray(rng.normal(size=(5, 6)))
        b = jnp.asarray(rng.normal(size=(6,))) if bias else None
        w = jnp.asarray(rng.normal(size=(2, 3, 4, 6)))

        def ours(x, k, b):
            return jnp.sum(jnp.sin(project(x, k, b, None)) * w)

        def ref(x, k, b):
            y = jnp.einsum("abcd,de->abce", x, k)
            return jnp.sum(jnp.sin(y if b is None else y + b) * w)

        args = (x, k, b) if bias else (x, k)
        wrt = (0, 1, 2) if bias else (0, 1)
        f_ours = ours if bias else (lambda x, k: ours(x, k, None))
        f_ref = ref if bias else (lambda x, k: ref(x, k, None))
        np.testing.assert_allclose(f_ours(*args), f_ref(*args), rtol=1e-12)
        for g, r in zip(jax.grad(f_ours, wrt)(*args), jax.grad(f_ref, wrt)(*args)):
            assert g.shape == r.shape
            np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12)
