"""The benchmark produces complete records (it measures; it asserts no speed)."""

import json

from conftest import REPO
from rtpca_jax import bench

FIELDS = {"config", "case", "batch", "frames", "median_s", "clips_per_s", "flops_per_clip",
          "achieved_flops_per_s", "peak_flops_per_s", "compile_s", "peak_rss_bytes", "host_cpu"}


def test_bench_records_have_every_field(tmp_path):
    out = tmp_path / "b.json"
    assert bench.main(["--config", str(REPO / "configs" / "default.py"), "--case", "inference", "--batch", "4",
                       "--reps", "2", "--json", str(out)]) == 0
    recs = json.load(open(out))
    assert len(recs) == 1 and FIELDS <= set(recs[0])
    r = recs[0]
    assert r["case"] == "inference" and r["batch"] == 4 and r["frames"] == 27
    assert r["flops_per_clip"] > 1e6 and r["peak_flops_per_s"] > 0 and r["median_s"] > 0
    # forward FLOPs per clip match the model summary's cost analysis
    from rtpca_jax import model
    from rtpca_jax.config_lib import load_config_file
    from rtpca_jax.model.summary import flops_per_clip
    import jax

    m = model.build(load_config_file(str(REPO / "configs" / "default.py")).model)
    p = model.init_params(m, jax.random.PRNGKey(0))
    assert abs(flops_per_clip(m, p, batch=4) - r["flops_per_clip"]) / r["flops_per_clip"] < 0.02
    # XLA's memory analysis: the arguments hold at least the float32 parameters and the input batch
    assert r["xla_argument_bytes"] >= 4 * (model.count_params(p) + 4 * 27 * 17 * 2)
    assert r["flops_source"] == "lowered" and r["peak_flops_per_s"] > 0


def test_host_cpu_names_the_model_and_the_widest_vector_extension():
    # /proc/cpuinfo excerpts (two processors each; the first one's fields count)
    avx512 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n"
              "flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16\n\n"
              "processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 avx512f\n")
    avx2 = "processor\t: 0\nmodel name\t: AMD EPYC 7551 32-Core Processor\nflags\t\t: fpu sse2 avx fma avx2\n"
    assert bench.host_cpu(avx512) == "AMD EPYC, AVX-512"
    assert bench.host_cpu(avx2) == "AMD EPYC 7551 32-Core Processor, AVX2"
    # no cpuinfo (another OS): the machine type, no vector extension claimed
    import platform

    assert bench.host_cpu("") == (platform.processor() or platform.machine())


def test_torch_comparison_records(tmp_path):
    import pytest

    pytest.importorskip("torch")
    out = tmp_path / "b.json"
    assert bench.main(["--config", str(REPO / "configs" / "default.py"), "--case", "inference", "--batch", "2",
                       "--reps", "2", "--torch", "--json", str(out)]) == 0
    jax_rec, torch_rec = json.load(open(out))
    # the two alternated: as many PyTorch calls as JAX calls, in one worker
    assert torch_rec["interleaved"] is True and torch_rec["reps"] == jax_rec["reps"] == 2
    assert FIELDS <= set(torch_rec) and torch_rec["framework"].startswith("torch")
    assert jax_rec["framework"].startswith("jax")
    assert torch_rec["flops_per_clip"] == jax_rec["flops_per_clip"] and torch_rec["batch"] == 2
    assert torch_rec["device"].startswith("cpu") and torch_rec["torch_matmul_peak_flops_per_s"] > 0


def test_a_failing_torch_worker_is_reported_with_its_error(tmp_path):
    """The worker's own error reaches the caller (its stderr goes to a file,
    read when it has ended), rather than a hang or a bare JSON error."""
    import pytest

    missing = str(tmp_path / "no_such_config.py")
    job = dict(config_path=missing, case="inference", batch=1, peak=1.0)
    with pytest.raises(RuntimeError, match=r"(?s)PyTorch benchmark failed: exit 1.*no_such_config"):
        bench.TorchPartner(job).start()


def test_dotted_overrides_reach_the_benchmarked_model(tmp_path):
    out = tmp_path / "b.json"
    assert bench.main(["--config", str(REPO / "configs" / "default.py"), "--config.model.remat=True",
                       "--config.model.attention_impl=einsum", "--case", "inference", "--batch", "2",
                       "--reps", "1", "--json", str(out)]) == 0
    (r,) = json.load(open(out))
    assert r["remat"] is True and r["attention"] == "einsum"


def test_remat_saves_memory_in_the_compiled_step():
    """XLA's own analysis of the compiled training step (not JAX's count of
    saved residuals): each further depth unit costs the plain step a block's
    activations, the rematerialised one little more than its inputs.  Under
    ``nn.remat`` XLA:CPU merged the re-run with the forward pass and the
    increment stayed the same (README, "Remat on XLA:CPU")."""
    config = str(REPO / "configs" / "default.py")

    def temp(depth, *remat):
        size = ["model.num_frames=81", "model.width=64", f"model.depth={depth}"]
        c = bench.compile_case(config, "train_step", 16, size + list(remat))
        return bench.memory_bytes(c.compiled)["xla_temp_bytes"]

    plain = temp(2) - temp(1)
    remat = temp(2, "model.remat=True") - temp(1, "model.remat=True")
    assert 0 < remat < plain / 3
    # the temporal blocks' attention sublayers only: between the two
    attention = ("model.remat=True", "model.remat_blocks=temporal_attention")
    assert remat < temp(2, *attention) - temp(1, *attention) < plain


def test_dense_layers_compute_their_weight_gradients_with_the_backward_pass(monkeypatch):
    """``attention.project`` ties each layer's input gradient to its
    parameters' gradients.  Differentiated by plain autodiff (the same 2-D
    product, written out here), XLA:CPU's scheduler left every layer's weight
    products to the end of the backward pass and kept their output gradients
    alive until then: the compiled step's temporary memory per depth unit is
    at least 15 % lower with the tie (about 28 % here; the paper preset's step
    at batch 1: 3.59 against 2.56 GiB, README "Dense layers as 2-D products")."""
    import jax.numpy as jnp

    from rtpca_jax.model import attention, blocks

    config = str(REPO / "configs" / "default.py")

    def temp(depth):
        size = ["model.num_frames=81", "model.width=64", f"model.depth={depth}"]
        c = bench.compile_case(config, "train_step", 16, size)
        return bench.memory_bytes(c.compiled)["xla_temp_bytes"]

    tied = temp(2) - temp(1)

    def autodiff_project(x, kernel, bias, dtype):
        dtype = dtype or jnp.result_type(x, kernel)
        y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(dtype), kernel.astype(dtype))
        y = y.reshape(x.shape[:-1] + (kernel.shape[-1],))
        return y if bias is None else y + bias.astype(dtype)

    monkeypatch.setattr(attention, "project", autodiff_project)
    monkeypatch.setattr(blocks, "project", autodiff_project)
    untied = temp(2) - temp(1)
    assert 0 < tied < 0.85 * untied
