"""The PyTorch statement of the official forward pass (used by the benchmark
as a stand-in for the official code) against the official golden outputs."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rtpca_jax import convert, torch_ref  # noqa: E402


@pytest.mark.parametrize("name", ["rtpca_small", "mixste_small"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matches_official_outputs(golden_dir, name, dtype):
    sd = dict(np.load(golden_dir / f"{name}_state_dict.npz"))
    io = np.load(golden_dir / f"{name}_io.npz")
    model = torch_ref.build(convert.infer_config(sd))
    tdt = getattr(torch, dtype)
    missing = model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    model = model.to(tdt).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(io["input"]).to(tdt)).numpy()
    err = np.abs(out - io["output_f64"]).max()
    assert err < (1e-12 if dtype == "float64" else 1e-5), err


def test_official_loss_equals_the_jax_loss():
    import jax.numpy as jnp

    from rtpca_jax import losses

    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 5, 17, 3)), rng.normal(size=(2, 5, 17, 3))
    w = rng.uniform(1, 4, 17)
    got = torch_ref.official_loss(torch.from_numpy(pred), torch.from_numpy(target), w).item()
    # closed form, written out independently of both implementations
    t = target.copy()
    t[:, :, 0] = 0
    d = pred[:, 1:] - pred[:, :-1]
    want = ((w * np.linalg.norm(pred - t, axis=-1)).mean() + 0.5 * (w[:, None] * d ** 2).mean()
            + 2.0 * np.linalg.norm(d - (t[:, 1:] - t[:, :-1]), axis=-1).mean())
    assert abs(got - want) < 1e-12
    jl = float(losses.total_loss(jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32), list(w))[0])
    assert abs(jl - want) < 1e-5


def test_refuses_a_variant_without_official_code():
    with pytest.raises(ValueError, match="no official code"):
        torch_ref.build({"variant": "ste_tpca", "num_frames": 27, "width": 16, "depth": 1, "num_heads": 2})


@pytest.mark.parametrize("ratio,levels,frames", [(3, 2, 27), (4, 2, 33)])
def test_pyramid_ratios_3_and_4_match_the_pytorch_statement(ratio, levels, frames):
    """The official outputs cover ratio 2 only; pyramids of ratio 3 and 4
    (the paper's ablation) are checked against the independent PyTorch
    statement (``AdaptiveAvgPool1d``, ``ConvTranspose1d``), outputs and the
    gradient of the input, in float64 with the weights converted from PyTorch."""
    import jax
    import ml_collections

    from rtpca_jax import model as model_lib
    from rtpca_jax.model.spec import default_config

    cfg = default_config()
    cfg.update(dict(variant="rtpca", num_frames=frames, width=16, depth=2, num_heads=2,
                    pyramid_ratio=ratio, pyramid_levels=levels, drop_path_rate=0.0))
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    torch.manual_seed(ratio)
    tmodel = torch_ref.build(cfg).double().eval()
    with torch.no_grad():  # move every parameter off its initial value (LayerNorm 1/0 included)
        for p in tmodel.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sd = {k: v.numpy() for k, v in tmodel.state_dict().items()}
    x = np.random.default_rng(ratio).uniform(-1, 1, (2, frames, 17, 2))
    xt = torch.from_numpy(x).requires_grad_(True)
    out_t = tmodel(xt)
    (out_t ** 2).sum().backward()
    with jax.enable_x64(True):
        params = convert.from_torch(sd, cfg, dtype=np.float64)
        module = model_lib.build(cfg)
        lengths = module.spec.pyramid_lengths
        assert len(lengths) == levels + 1 and lengths[1] == frames // ratio
        f = lambda x: module.apply({"params": params}, x)  # noqa: E731
        out_j = np.asarray(f(x))
        grad_j = np.asarray(jax.grad(lambda x: (f(x) ** 2).sum())(x))
    np.testing.assert_allclose(out_j, out_t.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(grad_j, xt.grad.numpy(), rtol=1e-9, atol=1e-9)
