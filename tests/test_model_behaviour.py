"""Shapes, determinism, gradients and config validation of the three variants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_params
from rtpca_jax import convert, model

SMALL = dict(width=16, depth=2, num_heads=4, drop_path_rate=0.0)


def _build(**kw):
    cfg = {**SMALL, **kw}
    m = model.build(cfg)
    return m, random_params(m)


def _fwd(m, p, x, **kw):
    return jax.jit(lambda p, x: m.apply({"params": p}, x, **kw))(p, x)


def _x(m, batch=2, seed=0):
    s = m.spec
    return jax.random.uniform(jax.random.PRNGKey(seed), (batch, s.num_frames, s.num_joints, 2),
                              minval=-1, maxval=1)


@pytest.mark.parametrize(
    "variant,frames,ratio,levels",
    [
        ("ste", 351, 2, 3),
        ("ste_tpca", 81, 3, 3),
        ("rtpca", 27, 2, 3), ("rtpca", 81, 2, 3), ("rtpca", 243, 2, 3), ("rtpca", 351, 2, 3),
        ("rtpca", 243, 3, 3), ("rtpca", 243, 4, 3), ("rtpca", 81, 4, 2), ("rtpca", 100, 3, 1),
    ],
)
def test_output_shapes(variant, frames, ratio, levels):
    m, p = _build(variant=variant, num_frames=frames, pyramid_ratio=ratio, pyramid_levels=levels)
    y = jax.jit(lambda p, x: m.apply({"params": p}, x))(p, _x(m))
    assert y.shape == (2, frames, 17, 3)
    assert np.isfinite(np.asarray(y)).all()
    if variant != "ste":
        lengths = m.spec.pyramid_lengths
        pyr = p["temporal_block_0"]["attn"]["pyramid"]
        for k in range(1, levels + 1):
            assert pyr[f"pool_norm_{k}"]["scale"].shape == (lengths[k],)
            assert pyr[f"up_norm_{k}"]["scale"].shape == (lengths[k - 1],)


def test_xlr_length_configurable_and_official_default():
    m, _ = _build(variant="rtpca", num_frames=243)
    assert m.spec.xlr_len == 30
    m, p = _build(variant="rtpca", num_frames=81, xlr_len=7)
    assert m.spec.xlr_len == 7
    assert _fwd(m, p, _x(m)).shape == (2, 81, 17, 3)


def test_other_joint_counts():
    m, p = _build(variant="rtpca", num_frames=27, num_joints=15)
    assert _fwd(m, p, _x(m)).shape == (2, 27, 15, 3)


@pytest.mark.parametrize("variant", ["ste", "rtpca"])
def test_jit_equals_no_jit(variant):
    m, p = _build(variant=variant, num_frames=27)
    x = _x(m)
    eager = m.apply({"params": p}, x)
    jitted = jax.jit(lambda p, x: m.apply({"params": p}, x))(p, x)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["ste", "rtpca"])
def test_eval_deterministic_train_differs_only_through_dropout(variant):
    m, p = _build(variant=variant, num_frames=27)
    x = _x(m)
    a = m.apply({"params": p}, x, train=False)
    b = m.apply({"params": p}, x, train=False)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # With every rate at zero, train mode is the eval function.
    t = m.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    np.testing.assert_allclose(np.asarray(t), np.asarray(a), rtol=1e-6, atol=1e-6)
    # With stochastic depth and dropout, train mode depends on the rng only.
    md = model.build({**SMALL, "variant": variant, "num_frames": 27, "drop_path_rate": 0.5,
                      "drop_rate": 0.1, "attn_drop_rate": 0.1})
    t1 = md.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    t1b = md.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    t2 = md.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    np.testing.assert_array_equal(np.asarray(t1), np.asarray(t1b))
    assert np.abs(np.asarray(t1) - np.asarray(t2)).max() > 1e-4
    assert np.abs(np.asarray(t1) - np.asarray(a)).max() > 1e-4
    e = md.apply({"params": p}, x, train=False)
    np.testing.assert_array_equal(np.asarray(e), np.asarray(a))


@pytest.mark.parametrize("variant", ["ste", "ste_tpca", "rtpca"])
def test_gradients_finite_and_nonzero_for_every_parameter(variant):
    m, p = _build(variant=variant, num_frames=27)
    x = _x(m)
    target = jax.random.normal(jax.random.PRNGKey(4), (2, 27, 17, 3))
    g = jax.jit(jax.grad(lambda p: jnp.mean((m.apply({"params": p}, x) - target) ** 2)))(p)
    for path, leaf in jax.tree_util.tree_flatten_with_path(g)[0]:
        name = jax.tree_util.keystr(path)
        leaf = np.asarray(leaf)
        assert np.isfinite(leaf).all(), name
        assert np.abs(leaf).max() > 0, f"dead parameter {name}"


def test_xlr_changes_output_and_is_off_in_ste_tpca():
    m_r, p = _build(variant="rtpca", num_frames=27)
    m_t = model.build({**SMALL, "variant": "ste_tpca", "num_frames": 27,
                       "double_temporal_output": True})
    x = _x(m_r)
    a = _fwd(m_r, p, x)
    b = _fwd(m_t, p, x)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-5


def test_compute_dtype_bfloat16_keeps_float32_params_and_output():
    m = model.build({**SMALL, "variant": "rtpca", "num_frames": 27, "dtype": "bfloat16"})
    p = random_params(m)
    assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(p))
    y = _fwd(m, p, _x(m))
    assert y.dtype == jnp.float32
    m32 = model.build({**SMALL, "variant": "rtpca", "num_frames": 27})
    y32 = _fwd(m32, p, _x(m))
    err = np.abs(np.asarray(y) - np.asarray(y32)).max()
    assert 0 < err < 0.05 * np.abs(np.asarray(y32)).max() + 1e-3


def test_remat_gives_same_gradients():
    m, p = _build(variant="rtpca", num_frames=27)
    mr = model.build({**SMALL, "variant": "rtpca", "num_frames": 27, "remat": True})
    x = _x(m)
    loss = lambda mod: jax.jit(jax.grad(lambda p: jnp.sum(mod.apply({"params": p}, x) ** 2)))(p)  # noqa: E731
    ga, gb = jax.tree_util.tree_leaves(loss(m)), jax.tree_util.tree_leaves(loss(mr))
    scale = max(float(np.abs(np.asarray(a)).max()) for a in ga)
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6 * scale)


@pytest.mark.parametrize("blocks", ["all", "temporal", "temporal_attention"])
def test_remat_in_training_differentiates_its_own_forward_pass(blocks):
    """Dropout and drop path on: the re-run blocks must draw the forward
    pass's masks, so the gradient is the derivative of the very loss the
    forward pass computed (central difference along a random direction,
    float64), and the loss is the same with and without a gradient."""
    with jax.enable_x64(True):
        m = model.build({**SMALL, "variant": "rtpca", "num_frames": 27, "remat": True, "remat_blocks": blocks,
                         "drop_rate": 0.2, "drop_path_rate": 0.3, "param_dtype": "float64"})
        p = random_params(m)
        x = _x(m).astype(jnp.float64)
        rng = jax.random.PRNGKey(3)

        def loss(p, train=True):
            return jnp.sum(m.apply({"params": p}, x, train=train, rngs={"dropout": rng}) ** 2)

        value, g = jax.jit(jax.value_and_grad(loss))(p)
        f = jax.jit(loss, static_argnums=1)
        assert float(value) == pytest.approx(float(f(p)), rel=1e-12)
        assert abs(float(f(p, False)) - float(value)) > 1e-3 * abs(float(value))  # the masks are on
        leaves, tree = jax.tree_util.tree_flatten(p)
        r = np.random.default_rng(0)
        d = jax.tree_util.tree_unflatten(tree, [r.normal(size=a.shape) for a in leaves])
        eps = 1e-6
        shift = lambda sign: jax.tree_util.tree_map(lambda a, b: a + sign * eps * b, p, d)  # noqa: E731
        numeric = (float(f(shift(1))) - float(f(shift(-1)))) / (2 * eps)
        analytic = sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(d)))
        assert analytic == pytest.approx(numeric, rel=1e-6)


@pytest.mark.parametrize(
    "cfg,match",
    [
        (dict(variant="rtpca", num_frames=9), "too short"),
        (dict(variant="ste_tpca", num_frames=27, pyramid_ratio=3), "too short"),
        (dict(variant="rtpca", pyramid_ratio=5), "pyramid_ratio"),
        (dict(variant="rtpca", pyramid_levels=4), "pyramid_levels"),
        (dict(variant="rtpca", width=30, num_heads=8), "divisible"),
        (dict(variant="nope"), "variant"),
        (dict(variant="rtpca", num_frames=27, xlr_len=28), "xlr_len"),
        (dict(variant="ste", xlr=True), "tpca"),
        (dict(variant="rtpca", drop_path_rate=1.5), "drop_path_rate"),
        (dict(variant="rtpca", widht=32), "unknown"),
        (dict(variant="rtpca", attention_impl="magic"), "attention_impl"),
        (dict(variant="rtpca", attention_cudnn_min_length=-1), "attention_cudnn_min_length"),
        (dict(variant="rtpca", attention_cudnn_min_length=2.5), "attention_cudnn_min_length"),
        (dict(variant="rtpca", temporal_layout="sideways"), "temporal_layout"),
        (dict(variant="rtpca", remat=True, remat_blocks="spatial"), "remat_blocks"),
    ],
)
def test_invalid_configs_raise(cfg, match):
    with pytest.raises(ValueError, match=match):
        model.build(cfg)


def test_wrong_input_shape_raises():
    m, p = _build(variant="ste", num_frames=27)
    with pytest.raises(ValueError, match=r"\[batch, 27, 17, 2\]"):
        m.apply({"params": p}, jnp.zeros((1, 26, 17, 2)))


def test_from_torch_reports_every_problem_at_once():
    cfg = {**SMALL, "variant": "rtpca", "num_frames": 27}
    m, p = _build(**cfg)
    sd = convert.to_torch(jax.tree_util.tree_map(np.asarray, p), cfg)
    sd["bogus.weight"] = np.zeros(3)
    del sd["head.1.bias"]
    sd["Temporal_pos_embed"] = np.zeros((1, 26, 16))
    with pytest.raises(ValueError) as e:
        convert.from_torch(sd, cfg)
    msg = str(e.value)
    assert "unexpected key bogus.weight" in msg
    assert "missing key head.1.bias" in msg
    assert "shape of Temporal_pos_embed" in msg


@pytest.mark.parametrize("variant", ["ste", "ste_tpca", "rtpca"])
def test_to_torch_from_torch_round_trip_is_bit_exact(variant):
    cfg = {**SMALL, "variant": variant, "num_frames": 27}
    m, p = _build(**cfg)
    p = jax.tree_util.tree_map(np.asarray, p)
    sd = convert.to_torch(p, cfg)
    if variant == "ste":
        assert "STEblocks.0.attn.qkv.weight" in sd
    back = convert.from_torch(sd, cfg)
    for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(back)):
        np.testing.assert_array_equal(a, b)
