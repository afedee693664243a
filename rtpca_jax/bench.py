"""Benchmark: inference frames/s and training-step clips/s, compile time,
memory, XLA FLOPs and the fraction of this device's float32 matmul peak.

    python -m rtpca_jax.bench                                  # default + paper preset
    python -m rtpca_jax.bench --config configs/default.py --case train_step --batch 16
    python -m rtpca_jax.bench --json bench.json

Every case has fixed shapes, is timed after compilation as the median of
``--reps`` runs with ``block_until_ready``, and is reported with the FLOPs per
clip from XLA's cost analysis of the compiled program.  The "peak" is the
FLOP/s of a large float32 matrix product measured in the same run on the same
device, so each result is also a ratio to what this machine can do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
DEFAULT_CASES = {
    "default.py": {"inference": (16, 64), "train_step": (8, 16, 32)},
    "rtpca_h36m_243.py": {"inference": (1, 2), "train_step": (1, 2)},
}


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


def _time(fn, args, reps: int, sync=jax.block_until_ready) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sync(fn(*args))
        out.append(time.perf_counter() - t0)
    return out


def _record(config_path: str, case: str, batch: int, spec, times: list[float], flops_per_clip: float,
            peak: float, compile_s: float, **extra) -> dict:
    med = float(np.median(times))
    return {
        "config": os.path.basename(config_path), "case": case, "batch": batch, "frames": spec.num_frames,
        "width": spec.width, "depth": spec.depth, "variant": spec.variant,
        "median_s": med, "min_s": float(np.min(times)), "reps": len(times),
        "clips_per_s": batch / med, "frames_per_s": batch * spec.num_frames / med,
        "flops_per_clip": flops_per_clip, "achieved_flops_per_s": flops_per_clip * batch / med,
        "peak_flops_per_s": peak, "fraction_of_peak": flops_per_clip * batch / med / peak,
        "compile_s": compile_s, "peak_rss_bytes": _peak_rss(), **extra,
    }


def matmul_peak(n: int | None = None, reps: int = 5) -> float:
    """FLOP/s of an ``n x n`` float32 matrix product on the default device."""
    dev = jax.devices()[0]
    n = n or (8192 if dev.platform in ("gpu", "tpu") else 2048)
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y).lower(a, b).compile()
    jax.block_until_ready(f(a, b))
    return 2.0 * n ** 3 / float(np.median(_time(f, (a, b), reps)))


def _peak_rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _device_peak() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def bench_case(config_path: str, case: str, batch: int, reps: int, peak: float, overrides=None) -> dict:
    from rtpca_jax import model as model_lib
    from rtpca_jax import train_lib
    from rtpca_jax.config_lib import load_config_file

    cfg = load_config_file(config_path)
    for k, v in (overrides or {}).items():
        cfg.model[k] = v
    module = model_lib.build(cfg.model)
    s = module.spec
    mesh = train_lib.make_mesh()
    batch = -(-batch // mesh.devices.size) * mesh.devices.size
    rng = np.random.default_rng(0)
    x = train_lib.global_batch(rng.uniform(-1, 1, (batch, s.num_frames, s.num_joints, 2)).astype(np.float32), mesh)
    if case == "inference":
        params = jax.device_put(model_lib.init_params(module, jax.random.PRNGKey(0)), train_lib.replicated(mesh))
        fn = jax.jit(lambda p, x: module.apply({"params": p}, x, train=False),
                     in_shardings=(train_lib.replicated(mesh), train_lib.batch_sharding(mesh)))
        t0 = time.perf_counter()
        compiled = fn.lower(params, x).compile()
        compile_s = time.perf_counter() - t0
        args = (params, x)
        call = compiled
    elif case == "train_step":
        y = train_lib.global_batch(rng.normal(0, 0.2, (batch, s.num_frames, s.num_joints, 3)).astype(np.float32),
                                   mesh)
        tx = train_lib.make_optimizer(cfg.train, 1000)
        state = train_lib.create_state(module, tx, 0, mesh)
        step = train_lib.make_train_step(module, tx, cfg.train, mesh, train_lib.state_sharding(state, mesh))
        t0 = time.perf_counter()
        compiled = step.lower(state, x, y).compile()
        compile_s = time.perf_counter() - t0
        holder = {"state": state}

        def call(x, y):  # the state is donated: thread it through
            holder["state"], m = compiled(holder["state"], x, y)
            return m

        args = (x, y)
    else:
        raise ValueError(f"unknown case {case!r}: inference or train_step")
    flops = _flops(compiled)
    jax.block_until_ready(call(*args))  # warm-up
    return _record(config_path, case, batch, s, _time(call, args, reps), flops / batch, peak, compile_s,
                   dtype=str(s.dtype or "float32"), peak_device_bytes=_device_peak(),
                   device=f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind} x{len(jax.devices())}",
                   framework=f"jax {jax.__version__}")


def bench_torch_case(config_path: str, case: str, batch: int, reps: int, peak: float,
                     flops_per_clip: float) -> dict:
    """The same case with :mod:`rtpca_jax.torch_ref` (eager PyTorch, the
    official float32 network), timed the same way in a fresh process (so
    neither runtime's thread pool competes with the other's); FLOPs are the
    JAX model's (same math)."""
    import subprocess

    job = json.dumps(dict(config_path=config_path, case=case, batch=batch, reps=reps, peak=peak,
                          flops_per_clip=flops_per_clip))
    proc = subprocess.run([sys.executable, "-c", "from rtpca_jax import bench; bench._torch_worker()"],
                          input=job, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"PyTorch benchmark failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _torch_worker() -> None:
    job = json.loads(sys.stdin.read())
    print(json.dumps(_torch_case(**job)))


def _torch_case(config_path: str, case: str, batch: int, reps: int, peak: float, flops_per_clip: float) -> dict:
    import torch

    from rtpca_jax import torch_ref
    from rtpca_jax.config_lib import load_config_file

    cfg = load_config_file(config_path)
    torch.manual_seed(0)
    model = torch_ref.build(cfg.model)
    s = model.spec
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(-1, 1, (batch, s.num_frames, s.num_joints, 2)).astype(np.float32))
    if case == "inference":
        model.eval()

        def call():
            with torch.no_grad():
                return model(x)
    else:
        y = torch.from_numpy(rng.normal(0, 0.2, (batch, s.num_frames, s.num_joints, 3)).astype(np.float32))
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        weights = list(cfg.train.joint_weights)
        model.train()

        def call():
            opt.zero_grad(set_to_none=True)
            loss = torch_ref.official_loss(model(x), y, weights)
            loss.backward()
            opt.step()
            return loss

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    matmul = lambda: a @ b  # noqa: E731
    matmul()
    torch_peak = 2.0 * n ** 3 / float(np.median(_time(matmul, (), 5, sync=lambda out: out)))
    t0 = time.perf_counter()
    call()  # warm-up (eager: nothing to compile)
    first_s = time.perf_counter() - t0
    return _record(config_path, case, batch, s, _time(call, (), reps, sync=lambda out: out), flops_per_clip, peak,
                   first_s, dtype="float32", peak_device_bytes=None, device="cpu",
                   framework=f"torch {torch.__version__} eager ({torch.get_num_threads()} threads)",
                   torch_matmul_peak_flops_per_s=torch_peak)


def _row(r: dict) -> str:
    return (f"{r['config']:<20} {r['framework'].split()[0]:<5} {r['case']:<10} {r['batch']:>5} {r['frames']:>4} "
            f"{r['median_s']:>9.4f} {r['clips_per_s']:>9.2f} {r['frames_per_s']:>10.0f} "
            f"{r['flops_per_clip'] / 1e9:>10.3f} {r['achieved_flops_per_s'] / 1e9:>8.1f} "
            f"{r['fraction_of_peak']:>7.1%} {r['compile_s']:>9.1f} {r['peak_rss_bytes'] / 1e9:>7.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rtpca_jax.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", action="append", help="config file(s); default: default.py and the paper preset")
    ap.add_argument("--case", choices=("inference", "train_step"), action="append")
    ap.add_argument("--batch", type=int, action="append")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dtype", help="compute dtype override, e.g. bfloat16")
    ap.add_argument("--remat", action="store_true", help="rematerialise blocks")
    ap.add_argument("--json", help="write the records here")
    ap.add_argument("--torch", action="store_true",
                    help="also time each case with rtpca_jax.torch_ref (eager PyTorch statement of the official "
                         "network in float32, needs the torch extra; --dtype/--remat apply to JAX only) and print "
                         "the JAX/PyTorch speed ratio")
    a = ap.parse_args(argv)
    configs = a.config or [os.path.join(REPO_CONFIGS, c) for c in DEFAULT_CASES]
    overrides = {}
    if a.dtype:
        overrides["dtype"] = a.dtype
    if a.remat:
        overrides["remat"] = True
    peak = matmul_peak()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}, "
          f"devices {jax.devices()}")
    print(f"float32 matmul peak on this device: {peak / 1e9:,.1f} GFLOP/s")
    head = (f"{'config':<20} {'impl':<5} {'case':<10} {'batch':>5} {'F':>4} {'median s':>9} {'clips/s':>9} {'frames/s':>10} "
            f"{'GFLOP/clip':>10} {'GFLOP/s':>8} {'of peak':>7} {'compile s':>9} {'RSS GB':>7}")
    print(head)
    records = []
    for c in configs:
        name = os.path.basename(c)
        cases = a.case or list(DEFAULT_CASES.get(name, {"inference": (8,), "train_step": (8,)}))
        for case in cases:
            batches = a.batch or DEFAULT_CASES.get(name, {}).get(case, (8,))
            for b in batches:
                r = bench_case(c, case, b, a.reps, peak, overrides)
                records.append(r)
                print(_row(r), flush=True)
                if a.torch:
                    t = bench_torch_case(c, case, b, a.reps, peak, r["flops_per_clip"])
                    t["jax_speedup"] = t["median_s"] / r["median_s"]
                    records.append(t)
                    print(_row(t) + f"   JAX/PyTorch speed {t['jax_speedup']:.2f}x (PyTorch's own matmul: "
                          f"{t['torch_matmul_peak_flops_per_s'] / 1e9:.0f} GFLOP/s)", flush=True)
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump(records, f, indent=1)
        os.replace(a.json + ".tmp", a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
