"""Benchmark: inference frames/s and training-step clips/s, compile time,
memory, XLA FLOPs and the fraction of this device's float32 matmul peak.

    python -m rtpca_jax.bench                                  # default + paper preset
    python -m rtpca_jax.bench --config configs/default.py --case train_step --batch 16
    python -m rtpca_jax.bench --json bench.json
    python -m rtpca_jax.bench --config configs/rtpca_h36m_243.py --config.model.dtype=bfloat16 --fit

Configs are read as ``train.py`` reads them: ``--config FILE`` (repeatable)
and dotted overrides ``--config.model.remat=True`` applied to every file.

Every case has fixed shapes, is timed after compilation as the median of
``--reps`` runs with ``block_until_ready``, and is reported with the FLOPs per
clip from XLA's cost analysis of the compiled program.  The "peak" is the
FLOP/s of a large float32 matrix product measured in the same run on the same
device, so each result is also a ratio to what this machine can do.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

REPO_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
DEFAULT_CASES = {
    "default.py": {"inference": (16, 64), "train_step": (8, 16, 32)},
    "rtpca_h36m_243.py": {"inference": (1, 2), "train_step": (1, 2)},
}


def _flops(program) -> float:
    """XLA's FLOP count of a lowered (preferred) or compiled program.  Count
    the lowered one: after optimisation XLA:GPU hands matmuls and attention to
    cuBLAS/cuDNN custom calls, which its cost analysis does not count (a
    compiled paper-preset step reads 10x too few FLOPs on an H100)."""
    cost = program.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    if not cost or "flops" not in cost:
        return float("nan")
    return float(cost["flops"])


def _count_flops(jitted, lowered, args) -> tuple[float, str]:
    """FLOPs of a case and where the count came from: the lowered program;
    where the backend gives no count for it (XLA:GPU), the same program
    lowered for the CPU platform."""
    f = _flops(lowered)
    if np.isfinite(f):
        return f, "lowered"
    try:
        f = _flops(jitted.trace(*args).lower(lowering_platforms=("cpu",)))
    except Exception:  # noqa: BLE001 - shardings tied to another platform
        f = float("nan")
    return f, "lowered for cpu"


def _time(fn, args, reps: int, sync=jax.block_until_ready, between: Callable[[], None] | None = None) -> list[float]:
    """Wall seconds of ``reps`` calls; ``between()`` runs after each timed
    call, outside the timing (the paired PyTorch call of ``--torch``)."""
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sync(fn(*args))
        out.append(time.perf_counter() - t0)
        if between is not None:
            between()
    return out


@functools.lru_cache(maxsize=None)
def _proc_cpuinfo() -> str:
    """This host's ``/proc/cpuinfo`` (a kernel file, not user data: no path
    layer), read once per process; "" where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def host_cpu(cpuinfo: str | None = None) -> str:
    """The CPU model and its widest x86 vector extension, e.g. ``"AMD EPYC,
    AVX-512"``, from ``/proc/cpuinfo`` (or the text given); the machine type
    where there is no such file.  The development VM's host changed between
    days (AVX2 or AVX-512 under the same name): the float32 product peak
    changed 7-9x with it and the timings 3-7x, so each record says which."""
    if cpuinfo is None:
        cpuinfo = _proc_cpuinfo()
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "AVX" if "avx" in flags else ""
    return f"{model}, {vector}" if vector else model


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
        "compile_s": compile_s, "peak_rss_bytes": _peak_rss(), "host_cpu": host_cpu(), **extra,
    }


def matmul_peak(sizes=None, reps: int = 7, dtype: str = "float32") -> dict[int, float]:
    """The device's matrix-product FLOP/s in ``dtype`` per size: the best of
    ``reps`` timed products at each of several sizes.  The peak is the largest
    value (a best, not a median: any case is then a fraction of something the
    device really did); the others are its spread."""
    dev = jax.devices()[0]
    sizes = sizes or ((4096, 8192, 12288) if dev.platform in ("gpu", "tpu") else (1024, 2048, 3072))
    best = {}
    for n in sizes:
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
        b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
        f = jax.jit(lambda x, y: x @ y).lower(a, b).compile()
        jax.block_until_ready(f(a, b))
        best[n] = 2.0 * n ** 3 / float(np.min(_time(f, (a, b), reps)))
    return best


def memory_bytes(compiled) -> dict:
    """XLA's own account of a compiled program's device memory (any backend)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - some backends have none
        m = None
    if m is None:
        return {}
    out = {k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0) for k in ("temp", "argument", "output", "alias",
                                                                       "generated_code")}
    out["total"] = out["temp"] + out["argument"] + out["output"] - out["alias"]
    return {f"xla_{k}_bytes": v for k, v in out.items()}


def _peak_rss() -> int:
    """Peak resident memory of this process: Linux's ``VmHWM`` (the address
    space's high-water mark, which starts afresh at exec).  ``ru_maxrss`` is
    the fallback elsewhere; on Linux it is kept across fork and exec, so a
    worker started by a big process would report its parent's peak."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _device_peak() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


class CompiledCase(NamedTuple):
    jitted: Any  # the jit-wrapped function
    lowered: Any
    lower_args: tuple
    compiled: Any
    call: Callable  # call(*args) runs one case (threads a donated state through)
    args: tuple
    spec: Any
    compile_s: float


def compile_case(config_path: str, case: str, batch: int, overrides=()) -> CompiledCase:
    """One case, compiled for fixed shapes; ``overrides``: dotted config
    overrides (``"model.remat=True"``)."""
    from rtpca_jax import model as model_lib
    from rtpca_jax import train_lib
    from rtpca_jax.config_lib import load_config_file

    cfg = load_config_file(config_path, overrides)
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
        lower_args = (params, x)
        lowered = fn.lower(params, x)
        compiled = lowered.compile()
        compile_s = time.perf_counter() - t0
        args = (params, x)
        call = compiled
    elif case == "train_step":
        y = train_lib.global_batch(rng.normal(0, 0.2, (batch, s.num_frames, s.num_joints, 3)).astype(np.float32),
                                   mesh)
        cfg.train.batch_size = batch  # the step's compiler options depend on it
        tx = train_lib.make_optimizer(cfg.train, 1000)
        state = train_lib.create_state(module, tx, 0, mesh, ema=cfg.train.ema_decay > 0)
        # loss weights change the values, not the cost: uniform ones, whatever the layout
        step = train_lib.make_train_step(module, tx, cfg.train, mesh, train_lib.state_sharding(state, mesh),
                                         joint_weights=(1.0,) * s.num_joints)
        t0 = time.perf_counter()
        lower_args = (state, x, y)
        lowered = step.lower(state, x, y)
        compiled = lowered.compile()
        compile_s = time.perf_counter() - t0
        holder = {"state": state}

        def call(x, y):  # the state is donated: thread it through
            holder["state"], m = compiled(holder["state"], x, y)
            return m

        args = (x, y)
    else:
        raise ValueError(f"unknown case {case!r}: inference or train_step")
    return CompiledCase(fn if case == "inference" else step, lowered, lower_args, compiled, call, args, s, compile_s)


def bench_case(config_path: str, case: str, batch: int, reps: int, peak: float, overrides=(),
               partner: Callable[[], Callable[[], None]] | None = None) -> dict:
    """One case compiled and timed.  ``partner``, called after the warm-up,
    returns a function run after each timed call (outside the timing): the
    paired PyTorch call of an interleaved ``--torch`` comparison."""
    from rtpca_jax.model import attention as attention_lib  # the model is imported where it is used, as above

    c = compile_case(config_path, case, batch, overrides)
    compiled, call, args, s, compile_s = c.compiled, c.call, c.args, c.spec, c.compile_s
    flops, flops_source = _count_flops(c.jitted, c.lowered, c.lower_args)
    if not np.isfinite(flops):  # no count available: NaN rather than a wrong count
        flops_source = "unavailable"
    jax.block_until_ready(call(*args))  # warm-up
    between = partner() if partner is not None else None
    return _record(config_path, case, batch, s, _time(call, args, reps, between=between), flops / batch, peak,
                   compile_s,
                   dtype=str(s.dtype or "float32"), peak_device_bytes=_device_peak(),
                   device=f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind} x{len(jax.devices())}",
                   framework=f"jax {jax.__version__}", attention=attention_lib.resolve_impl(s.attention_impl),
                   remat=s.remat, flops_source=flops_source,
                   **memory_bytes(compiled))


def fit_batches(config_path: str, overrides=(), chips_gib=(16, 32, 80)) -> dict:
    """Largest training-step batch that fits a device, from XLA's memory
    analysis of the compiled step at batch 1 and 2 (bytes = fixed + per-clip
    x batch), for this device and for chips of ``chips_gib``; then the
    predicted largest batch for this device is compiled and run once to
    check it.  Accelerators only (XLA:CPU's analysis is not its peak)."""
    m1 = memory_bytes(compile_case(config_path, "train_step", 1, overrides).compiled)
    m2 = memory_bytes(compile_case(config_path, "train_step", 2, overrides).compiled)
    per_clip = m2["xla_total_bytes"] - m1["xla_total_bytes"]
    fixed = m1["xla_total_bytes"] - per_clip
    stats = jax.devices()[0].memory_stats() or {}
    limit = int(stats.get("bytes_limit", 0))
    out = {"config": os.path.basename(config_path), "per_clip_bytes": per_clip, "fixed_bytes": fixed,
           "device_limit_bytes": limit, "overrides": list(overrides)}
    for g in chips_gib:
        out[f"max_batch_{g}gib"] = int((g * 2 ** 30 * 0.95 - fixed) // per_clip)  # 5% for the runtime
    if limit:
        b = int((limit - fixed) // per_clip)
        out["predicted_max_batch"] = b
        for trial in (b, int(b * 0.9)):
            try:
                c = compile_case(config_path, "train_step", trial, overrides)
                jax.block_until_ready(c.call(*c.args))
                out["verified_batch"] = trial
                break
            except Exception as e:  # noqa: BLE001 - out of memory
                out[f"failed_{trial}"] = str(e).splitlines()[0][:200]
    return out


def bench_torch_case(config_path: str, case: str, batch: int, reps: int, peak: float,
                     flops_per_clip: float, device: str = "cpu", dtype: str = "float32", overrides=()) -> dict:
    """The same case with :mod:`rtpca_jax.torch_ref` (eager PyTorch, the
    official float32 network), timed the same way in a fresh process (so
    neither runtime's thread pool competes with the other's), after the JAX
    case; FLOPs are the JAX model's (same math).  :class:`TorchPartner`
    interleaves the two instead."""
    w = TorchPartner(dict(config_path=config_path, case=case, batch=batch, peak=peak, device=device, dtype=dtype,
                          overrides=list(overrides)))
    w.start()
    for _ in range(reps):
        w.call()
    rec = w.finish()
    _set_flops(rec, flops_per_clip)
    return rec


def _set_flops(rec: dict, flops_per_clip: float) -> None:
    """A record's FLOP figures from the count of another program of the same math."""
    rec["flops_per_clip"] = flops_per_clip
    rec["achieved_flops_per_s"] = flops_per_clip * rec["batch"] / rec["median_s"]
    rec["fraction_of_peak"] = rec["achieved_flops_per_s"] / rec["peak_flops_per_s"]


class TorchPartner:
    """The PyTorch statement of a case in its own process, called one step at
    a time, so that a JAX case can alternate with it: JAX call, PyTorch call,
    JAX call... The two then see the same machine, whatever a shared host's
    speed does meanwhile (one call of each at a time, two processes, so the
    thread pools never compete; both processes' memory is held at once)."""

    def __init__(self, job: dict):
        self.job = job
        self.proc = None

    def start(self) -> "TorchPartner":
        import subprocess
        import tempfile

        # stderr to a file, not a pipe nobody reads while the worker runs (a full pipe would block it)
        self.stderr = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, "-c", "from rtpca_jax import bench; bench._torch_worker()"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        self._send(self.job)
        self._receive()  # set up, matmul peak and warm-up done
        return self

    def call(self) -> None:
        self._send("go")
        self._receive()

    def finish(self) -> dict:
        self._send("end")
        rec = self._receive()
        self.proc.wait()
        return rec

    def _send(self, msg) -> None:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self._failed()

    def _receive(self):
        while True:  # the worker's answers, past anything else a library prints
            line = self.proc.stdout.readline()
            if not line:
                self._failed()
            if line.startswith(_ANSWER):
                return json.loads(line[len(_ANSWER):])

    def _failed(self):
        code = self.proc.wait()
        why = f"killed by signal {-code} (out of memory?)" if code < 0 else f"exit {code}"
        self.stderr.seek(0)
        raise RuntimeError(f"PyTorch benchmark failed: {why}\n{self.stderr.read()[-3000:]}")


_ANSWER = "torch-worker: "


def _torch_worker() -> None:
    """The process behind :class:`TorchPartner`: a job (one JSON line), then
    ``"go"`` lines (one timed call each, answered with its seconds) and
    ``"end"`` (answered with the record)."""
    job = json.loads(sys.stdin.readline())
    case = _TorchCase(**job)
    print(_ANSWER + json.dumps(case.first_s), flush=True)
    for line in sys.stdin:
        if json.loads(line) == "end":
            break
        print(_ANSWER + json.dumps(case.step()), flush=True)
    print(_ANSWER + json.dumps(case.record()), flush=True)


class _TorchCase:
    """One case with the eager PyTorch statement, warmed up; on CUDA,
    ``dtype='bfloat16'`` runs it under ``torch.autocast`` (float32
    parameters, bf16 matmuls: the usual PyTorch mixed precision)."""

    def __init__(self, config_path: str, case: str, batch: int, peak: float, device: str = "cpu",
                 dtype: str = "float32", overrides=()):
        import contextlib

        import torch

        from rtpca_jax import torch_ref
        from rtpca_jax.config_lib import load_config_file

        self.torch, self.times = torch, []
        self.args = (config_path, case, batch)
        self.peak, self.dtype = peak, dtype
        cfg = load_config_file(config_path, overrides)
        torch.manual_seed(0)
        dev = self.dev = torch.device(device)
        model = torch_ref.build(cfg.model).to(dev)
        s = self.spec = model.spec
        rng = np.random.default_rng(0)
        x = torch.from_numpy(rng.uniform(-1, 1, (batch, s.num_frames, s.num_joints, 2)).astype(np.float32)).to(dev)
        amp = (torch.autocast(device_type=dev.type, dtype=torch.bfloat16) if dtype == "bfloat16"
               else contextlib.nullcontext())
        if case == "inference":
            model.eval()

            def call():
                with torch.no_grad(), amp:
                    return model(x)
        else:
            y = torch.from_numpy(rng.normal(0, 0.2, (batch, s.num_frames, s.num_joints, 3)).astype(np.float32)).to(dev)
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
            weights = [1.0] * s.num_joints  # as in compile_case
            model.train()

            def call():
                opt.zero_grad(set_to_none=True)
                with amp:
                    loss = torch_ref.official_loss(model(x), y, weights)
                loss.backward()
                opt.step()
                return loss

        self.call = call
        best = 0.0
        for n in ((4096, 8192) if dev.type == "cuda" else (1024, 2048)):
            tdt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
            a, b = torch.randn(n, n, device=dev, dtype=tdt), torch.randn(n, n, device=dev, dtype=tdt)
            self.sync(a @ b)
            best = max(best, 2.0 * n ** 3 / float(np.min(_time(lambda: a @ b, (), 7, sync=self.sync))))
        self.matmul_peak = best
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        self.sync(call())  # warm-up (eager: nothing to compile)
        self.first_s = time.perf_counter() - t0

    def sync(self, out):
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()
        return out

    def step(self) -> float:
        self.times += _time(self.call, (), 1, sync=self.sync)
        return self.times[-1]

    def record(self) -> dict:
        torch, dev = self.torch, self.dev
        where = (f"cuda:{torch.cuda.get_device_name()}" if dev.type == "cuda"
                 else f"cpu ({torch.get_num_threads()} threads)")
        # FLOPs: the caller sets the JAX program's count (_set_flops), the same math
        return _record(*self.args, self.spec, self.times, float("nan"), self.peak, self.first_s,
                       dtype=self.dtype,
                       peak_device_bytes=int(torch.cuda.max_memory_allocated()) if dev.type == "cuda" else None,
                       device=where, framework=f"torch {torch.__version__} eager",
                       torch_matmul_peak_flops_per_s=self.matmul_peak)


def pipeline_throughput(config_path: str, batches: int = 200, steps: int = 10, overrides=()) -> dict:
    """Clips/s of the tf.data pipeline on the shipped data beside the clips/s a
    config's training step consumes (``--pipeline``)."""
    from rtpca_jax import train_loop
    from rtpca_jax.config_lib import load_config_file

    cfg = load_config_file(config_path, overrides)
    frames, batch = cfg.model.num_frames, cfg.train.batch_size
    # the config's clips drawn from the shipped data, as training draws them
    cfg.data.source, cfg.data.root, cfg.data.split = "cmu", "", "builtin"
    ds = train_loop.make_clip_dataset(cfg, train_loop.load_split(cfg.data, "train"), frames)
    it = iter(ds.epoch(0).repeat())
    next(it)
    n = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        p2, _ = next(it)
        n += int(p2.shape[0])
    pipe = n / (time.perf_counter() - t0)
    # the training step's consumption on a batch of the same shapes
    c = compile_case(config_path, "train_step", batch, overrides)
    jax.block_until_ready(c.call(*c.args))
    times = _time(c.call, c.args, steps)
    consume = batch / float(np.median(times))
    return {"config": os.path.basename(config_path), "frames": frames, "batch": batch, "clips_per_epoch": ds.num_clips,
            "pipeline_clips_per_s": pipe, "train_step_clips_per_s": consume, "ratio": pipe / consume}


def _row(r: dict) -> str:
    return (f"{r['config']:<20} {r['framework'].split()[0]:<5} {r['case']:<10} {r['batch']:>5} {r['frames']:>4} "
            f"{r['median_s']:>9.4f} {r['clips_per_s']:>9.2f} {r['frames_per_s']:>10.0f} "
            f"{r['flops_per_clip'] / 1e9:>10.3f} {r['achieved_flops_per_s'] / 1e9:>8.1f} "
            f"{r['fraction_of_peak']:>7.1%} {r['compile_s']:>9.1f} {r['peak_rss_bytes'] / 1e9:>7.2f}")


def main(argv=None) -> int:
    from rtpca_jax import runtime

    runtime.start(compilation_cache=False)  # its compile times are part of what it measures
    from rtpca_jax.config_lib import load_config_file, parse_command_line

    ap = argparse.ArgumentParser(prog="python -m rtpca_jax.bench", description=__doc__.split("\n\n")[0],
                                 epilog="--config FILE (repeatable; default: default.py and the paper preset) and "
                                        "--config.SECTION.KEY=VALUE overrides, read as train.py reads them "
                                        "(e.g. --config.model.dtype=bfloat16, --config.model.remat=True, "
                                        "--config.model.attention_impl=cudnn)")
    ap.add_argument("--case", choices=("inference", "train_step"), action="append")
    ap.add_argument("--batch", type=int, action="append")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--fit", action="store_true",
                    help="largest training batch per chip size from XLA's memory analysis (accelerators)")
    ap.add_argument("--pipeline", action="store_true",
                    help="tf.data clips/s on the shipped data beside what each config's training step consumes")
    ap.add_argument("--torch-device", default=None, help="cpu or cuda (default: cuda when JAX runs on a GPU)")
    ap.add_argument("--json", help="write the records here")
    ap.add_argument("--torch-after", action="store_true",
                    help="with --torch: time PyTorch after the JAX case (its memory released first) rather than "
                         "alternating one call of each; for cases whose two processes do not fit in memory at once")
    ap.add_argument("--torch", action="store_true",
                    help="also time each case with rtpca_jax.torch_ref (eager PyTorch statement of the official "
                         "network, needs the torch extra; model.dtype=bfloat16 runs it under autocast, remat and "
                         "attention_impl apply to JAX only) and print the JAX/PyTorch speed ratio; the two alternate, one "
                         "call of each in turn, so a shared machine's drifting speed falls on both")
    try:
        line = parse_command_line(ap, argv, min_configs=0, max_configs=64)
        a, files, overrides = line.args, line.files, line.overrides
        configs = files or [os.path.join(REPO_CONFIGS, c) for c in DEFAULT_CASES]
        loaded = line.configs or [load_config_file(c) for c in configs]
        dtypes = {c.model.dtype or "float32" for c in loaded}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(dtypes) > 1:
        print(f"error: the configs compute in different dtypes {sorted(dtypes)}; bench them separately",
              file=sys.stderr)
        return 2
    print(f"{host_cpu()}, {os.cpu_count()} CPUs, jax {jax.__version__}, "
          f"devices {jax.devices()}")
    if a.pipeline:
        for c in files or [os.path.join(REPO_CONFIGS, "default.py")]:
            r = pipeline_throughput(c, overrides=overrides)
            print(f"config {r['config']}: F={r['frames']}, batch {r['batch']}, {r['clips_per_epoch']} clips/epoch")
            print(f"  pipeline      {r['pipeline_clips_per_s']:>10,.0f} clips/s")
            print(f"  training step {r['train_step_clips_per_s']:>10,.1f} clips/s (median of 10)")
            print(f"  pipeline / consumption = {r['ratio']:,.0f}x")
        return 0
    if a.fit:
        fits = [fit_batches(c, overrides) for c in configs]
        for f in fits:
            print(json.dumps(f))
        if a.json:
            from rtpca_jax import storage

            storage.write_json(a.json, fits)
        return 0
    peak_dtype = dtypes.pop()
    per_size = matmul_peak(dtype=peak_dtype)
    peak = max(per_size.values())
    spread = ", ".join(f"{n}: {v / 1e9:,.1f}" for n, v in per_size.items())
    print(f"{peak_dtype} matmul peak on this device (best of 7 at each size): {peak / 1e9:,.1f} GFLOP/s "
          f"(per size {spread})")
    torch_device = a.torch_device or ("cuda" if jax.devices()[0].platform == "gpu" else "cpu")
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
                job = dict(config_path=c, case=case, batch=b, peak=peak, device=torch_device, dtype=peak_dtype,
                           overrides=list(overrides))
                partner = TorchPartner(job) if a.torch and not a.torch_after else None
                r = bench_case(c, case, b, a.reps, peak, overrides,
                               partner=None if partner is None else lambda: partner.start().call)
                records.append(r)
                print(_row(r), flush=True)
                if a.torch:
                    if partner is not None:
                        t = partner.finish()
                        _set_flops(t, r["flops_per_clip"])  # the same math: the JAX program's count
                    else:
                        runtime.release_host_memory()  # the worker must not stack on this process's peak
                        t = bench_torch_case(**job, reps=a.reps, flops_per_clip=r["flops_per_clip"])
                    t["jax_speedup"] = t["median_s"] / r["median_s"]
                    t["interleaved"] = partner is not None
                    records.append(t)
                    print(_row(t) + f"   JAX/PyTorch speed {t['jax_speedup']:.2f}x (PyTorch's own matmul: "
                          f"{t['torch_matmul_peak_flops_per_s'] / 1e9:.0f} GFLOP/s)", flush=True)
    if a.json:
        from rtpca_jax import storage

        storage.write_json(a.json, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
