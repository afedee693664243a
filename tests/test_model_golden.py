"""The Flax model reproduces the official PyTorch outputs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rtpca_jax import convert, model
from rtpca_jax.config_lib import load_config_file

NAMES = ["rtpca_small", "mixste_small"]


def _load(golden_dir, name):
    sd = dict(np.load(golden_dir / f"{name}_state_dict.npz"))
    io = dict(np.load(golden_dir / f"{name}_io.npz"))
    kwargs = json.loads((golden_dir / f"{name}_config.json").read_text())["kwargs"]
    return sd, io, kwargs


@pytest.mark.parametrize("name", NAMES)
def test_infer_config_recovers_official_kwargs(golden_dir, name):
    sd, _, kw = _load(golden_dir, name)
    cfg = convert.infer_config(sd)
    assert cfg.variant == ("rtpca" if name.startswith("rtpca") else "ste")
    assert cfg.num_frames == kw["num_frame"]
    assert cfg.num_joints == kw["num_joints"]
    assert cfg.in_dim == kw["in_chans"]
    assert cfg.width == kw["embed_dim_ratio"]
    assert cfg.depth == kw["depth"]
    assert cfg.num_heads == kw["num_heads"]
    assert cfg.mlp_ratio == kw["mlp_ratio"]
    assert cfg.qkv_bias == kw["qkv_bias"]


@pytest.mark.parametrize("name", NAMES)
def test_golden_float32(golden_dir, name):
    sd, io, _ = _load(golden_dir, name)
    cfg = convert.infer_config(sd)
    m = model.build(cfg)
    params = convert.from_torch(sd, cfg)
    # float32 matmuls in float32 on every backend (GPUs default to TF32 inputs)
    with jax.default_matmul_precision("highest"):
        out = np.asarray(jax.jit(lambda p, x: m.apply({"params": p}, x))(params, io["input"]))
    assert out.dtype == np.float32
    assert np.abs(out - io["output"]).max() <= 1e-5


@pytest.mark.parametrize("layout", ["transposed", "grouped"])
@pytest.mark.parametrize("name", NAMES)
def test_golden_float64(golden_dir, name, layout):
    """Only float64 separates exact from tanh GELU, LN eps and pooling bins.
    Both temporal layouts must give the official outputs."""
    sd, io, _ = _load(golden_dir, name)
    cfg = convert.infer_config(sd)
    cfg.temporal_layout = layout
    with jax.enable_x64(True):
        m = model.build(cfg)
        params = convert.from_torch(sd, cfg, dtype=np.float64)
        fwd = jax.jit(lambda p, x: m.apply({"params": p}, x))
        out = np.asarray(fwd(params, jnp.asarray(io["input"], jnp.float64)))
    assert out.dtype == np.float64
    assert np.abs(out - io["output_f64"]).max() <= 1e-9


def test_golden_unused_keys_are_exactly_the_official_unused(golden_dir):
    """KEYS.md: 60 entries / 5,058 numbers of rtpca_small are never used."""
    sd, _, _ = _load(golden_dir, "rtpca_small")
    cfg = convert.infer_config(sd)
    unused = convert.unused_official_keys(model.resolve(cfg))
    assert len(unused) == 60
    assert sum(int(np.prod(s)) for s in unused.values()) == 5058
    params = convert.from_torch(sd, cfg)
    assert model.count_params(params) == 65029


@pytest.mark.parametrize(
    "preset,expected",
    [
        ("rtpca_h36m_243", 33_847_219),
        ("ste_tpca_h36m_243", 33_847_219),
        ("mixste_h36m_243", 33_783_811),
    ],
)
def test_preset_parameter_counts_equal_official_used_counts(preset, expected):
    from conftest import REPO

    cfg = load_config_file(str(REPO / "configs" / f"{preset}.py"))
    m = model.build(cfg.model)
    shapes = jax.eval_shape(lambda: model.init_params(m, jax.random.PRNGKey(0)))
    assert model.count_params(shapes) == expected
    s = m.spec
    assert (s.num_frames, s.width, s.depth, s.num_heads, s.mlp_ratio, s.drop_path_rate) == (
        243, 512, 8, 8, 2.0, 0.1)


@pytest.mark.parametrize("impl", ["explicit", "xla", "cudnn"])
@pytest.mark.parametrize("name", NAMES)
def test_golden_bfloat16_compute_stays_within_bfloat16_precision(golden_dir, name, impl):
    """bf16 compute with float32 parameters: the official outputs (|y| < 0.3)
    to within a few bf16 roundings (2^-8 relative each), far from exact; with
    each attention implementation (``cudnn`` is cuDNN's fused kernel on
    NVIDIA GPUs, where the golden models' head size allows, else the
    explicit form)."""
    sd, io, _ = _load(golden_dir, name)
    cfg = convert.infer_config(sd)
    params = convert.from_torch(sd, cfg)
    cfg.dtype = "bfloat16"
    cfg.attention_impl = impl
    m = model.build(cfg)
    out = np.asarray(jax.jit(lambda p, x: m.apply({"params": p}, x))(params, io["input"]))
    assert out.dtype == np.float32
    err = np.abs(out - io["output_f64"]).max()
    assert 1e-5 < err < 1e-2, err
