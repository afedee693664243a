"""Conversion between official PyTorch checkpoints and rtpca-jax."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_fixtures import RunsCode

from conftest import REPO, child_env
from rtpca_jax import convert, model

torch = pytest.importorskip("torch")


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "rtpca_jax.convert", *map(str, args)], capture_output=True,
                       timeout=600, cwd=str(REPO), env=child_env())
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    return r.stdout.decode()


def _eval_model_path(directory):
    """The model eval.py loads for a converted directory (its config is the default one)."""
    from rtpca_jax.config_lib import load_config_file

    cfg = load_config_file(str(REPO / "configs" / "default.py"))
    return convert.load_model(str(directory), model_config=cfg.model)


@pytest.mark.parametrize("name", ["rtpca_small", "mixste_small"])
def test_cli_to_jax_reproduces_official_outputs(golden_dir, tmp_path, name):
    out = tmp_path / name
    _cli("to-jax", golden_dir / f"{name}.bin", "--out", out)
    module, params = _eval_model_path(out)
    io = np.load(golden_dir / f"{name}_io.npz")
    y = jax.jit(lambda p, x: module.apply({"params": p}, x))(params, io["input"])
    err32 = float(np.abs(np.asarray(y) - io["output"]).max())
    assert err32 <= 1e-5
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params)
        y64 = jax.jit(lambda p, x: module.apply({"params": p}, x))(p64, jnp.asarray(io["input"], jnp.float64))
        err64 = float(np.abs(np.asarray(y64) - io["output_f64"]).max())
    assert err64 <= 1e-9
    print(f"{name}: float32 max error {err32:.2e}, float64 {err64:.2e}")


@pytest.mark.parametrize("name", ["rtpca_small", "mixste_small"])
def test_cli_to_torch_writes_the_official_layout(golden_dir, tmp_path, name):
    out = tmp_path / "jax"
    _cli("to-jax", golden_dir / f"{name}.bin", "--out", out)
    _cli("to-torch", out, "--out", tmp_path / "back.bin")
    official = torch.load(golden_dir / f"{name}.bin", map_location="cpu", weights_only=True)
    back = torch.load(tmp_path / "back.bin", map_location="cpu", weights_only=True)
    assert set(back) >= {"epoch", "lr", "optimizer", "model_pos"} and back["optimizer"] is None
    # strict=True loading needs exactly the official keys and shapes
    assert {k: tuple(v.shape) for k, v in back["model_pos"].items()} == \
        {k: tuple(v.shape) for k, v in official["model_pos"].items()}
    used = convert.unused_official_keys(model.resolve(convert.infer_config(convert.strip_prefix(
        {k: v.numpy() for k, v in official["model_pos"].items()}))))
    for k, v in official["model_pos"].items():
        if k.removeprefix("module.") not in used:
            assert torch.equal(back["model_pos"][k], v), k
    _cli("to-torch", out, "--out", tmp_path / "noprefix.bin", "--no-prefix")
    np_ = torch.load(tmp_path / "noprefix.bin", weights_only=True)["model_pos"]
    assert not any(k.startswith("module.") for k in np_)


def test_jax_torch_jax_is_bit_exact(tmp_path):
    cfg = dict(variant="rtpca", num_frames=27, width=16, depth=2, num_heads=4)
    m = model.build(cfg)
    params = jax.tree_util.tree_map(np.asarray, model.init_params(m, jax.random.PRNGKey(3)))
    convert.save_torch_checkpoint(convert.to_torch(params, cfg), tmp_path / "x.bin")
    back = convert.from_torch(convert.load_torch_checkpoint(tmp_path / "x.bin"), cfg)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(back)):
        np.testing.assert_array_equal(a, b)


def test_reading_variants_half_and_double_precision(golden_dir, tmp_path):
    sd = {k: v for k, v in torch.load(golden_dir / "mixste_small.bin", weights_only=True)["model_pos"].items()}
    ref = convert.load_torch_checkpoint(golden_dir / "mixste_small.bin")
    for key in ("model", "state_dict", None):
        half = {k: v.half() if i % 2 else v.double() for i, (k, v) in enumerate(sd.items())}
        torch.save(half if key is None else {key: half}, tmp_path / "v.pth")
        got = convert.load_torch_checkpoint(tmp_path / "v.pth")
        assert set(got) == set(ref)
        params = convert.from_torch(got, convert.infer_config(got))
        assert all(a.dtype == np.float32 for a in jax.tree_util.tree_leaves(params))
        np.testing.assert_allclose(got["head.1.weight"].astype(np.float32), ref["head.1.weight"], rtol=1e-3, atol=1e-3)


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model_pos": {"x": torch.zeros(1)}, "evil": RunsCode(marker)}, tmp_path / "evil.bin")
    with pytest.raises(ValueError, match="not a weights-only PyTorch checkpoint"):
        convert.load_torch_checkpoint(tmp_path / "evil.bin")
    assert not marker.exists()


def test_missing_torch_names_the_extra(monkeypatch, golden_dir):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install '\.\[torch\]'"):
        convert.load_torch_checkpoint(golden_dir / "rtpca_small.bin")


def test_resampled_frames_run_and_stay_close(golden_dir, tmp_path):
    """A 243-frame checkpoint serves 81 frames; report how far outputs move."""
    _cli("to-jax", golden_dir / "rtpca_small.bin", "--out", tmp_path / "f81", "--frames", "81")
    module, params = _eval_model_path(tmp_path / "f81")
    assert module.spec.num_frames == 81
    io = np.load(golden_dir / "rtpca_small_io.npz")
    clips = io["input"].reshape(2 * 3, 81, 17, 2)
    y = np.asarray(jax.jit(lambda p, x: module.apply({"params": p}, x))(params, clips)).reshape(2, 243, 17, 3)
    ref = io["output"]
    moved = float(np.mean(np.linalg.norm(y - ref, axis=-1)))
    scale = float(np.mean(np.linalg.norm(ref - ref.mean(axis=(1, 2), keepdims=True), axis=-1)))
    print(f"resampled 243->81: mean per-joint distance to the 243-frame outputs {moved:.4f} "
          f"(output spread {scale:.4f})")
    assert np.isfinite(y).all() and moved < scale
    with pytest.raises(ValueError, match="too short"):
        convert.resample_frames(params, convert.infer_config(convert.load_torch_checkpoint(
            golden_dir / "rtpca_small.bin")), 9)
