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
