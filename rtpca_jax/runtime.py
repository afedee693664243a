"""Process start-up and per-backend compilation settings.

``start()`` is the first thing every command (train.py, eval.py, bench,
inference, experiments) runs: it tunes the host's memory allocator
(:func:`configure_host_allocator`), turns on JAX's persistent compilation
cache (:func:`enable_compilation_cache`) and joins a multi-process run
(:func:`maybe_initialize`).  :func:`compiler_options` gives the XLA options
the training step is compiled with.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import sys

import jax

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc <malloc.h>
_allocator_configured = False


def _libc():
    """glibc through ctypes, or None (no such library)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def configure_host_allocator() -> bool:
    """Keep freed host memory for reuse instead of returning it to the kernel.

    XLA:CPU allocates each program's temporary buffer (6 GB for the paper
    preset's training step at batch 1) with ``malloc`` on every call; glibc
    serves blocks that large with a fresh ``mmap`` and unmaps them on free, so
    every step page-faults its whole working set in again (1.7 million minor
    faults and 4-5 s of kernel time per paper-size step on a 2-core CPU).  One
    arena, no ``mmap`` for large blocks and no trimming make the second step
    reuse the first one's pages (0 faults; the step 9.9 s -> 7.3 s, README,
    Benchmarks).  Peak memory is unchanged; the process keeps its high-water
    mark.  glibc only (a no-op elsewhere, and where ``RTPCA_HOST_ALLOCATOR=system``);
    call it before JAX starts its threads.  Returns whether it was applied.
    """
    global _allocator_configured
    if _allocator_configured:
        return True
    if os.environ.get("RTPCA_HOST_ALLOCATOR", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = all(mallopt(p, v) == 1 for p, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
    _allocator_configured = ok
    return ok


def release_host_memory() -> bool:
    """Return the host allocator's free memory to the kernel (glibc
    ``malloc_trim``).  With :func:`configure_host_allocator` a process keeps
    its high-water mark after a big computation; call this before something
    else big starts beside it (the bench's PyTorch worker after a JAX case:
    at the paper preset's batch 4 the two together would pass 24 GB).
    Returns whether anything was released (False where not glibc)."""
    import gc

    gc.collect()
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes, trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return trim(0) == 1


def maybe_initialize() -> None:
    """Join a multi-process run when ``RTPCA_COORDINATOR`` (host:port),
    ``RTPCA_NUM_PROCESSES`` and ``RTPCA_PROCESS_ID`` are set; on TPU pods and
    SLURM/Kubernetes clusters JAX detects all of this itself
    (``RTPCA_DISTRIBUTED=auto``).  On CPU the gloo collectives are used."""
    coord = os.environ.get("RTPCA_COORDINATOR")
    if coord:
        if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coord,
                                   num_processes=int(os.environ["RTPCA_NUM_PROCESSES"]),
                                   process_id=int(os.environ["RTPCA_PROCESS_ID"]))
    elif os.environ.get("RTPCA_DISTRIBUTED") == "auto":
        jax.distributed.initialize()


def barrier(name: str, timeout_s: float = 1800.0) -> None:
    """Wait until every process of a multi-process run has reached ``name``
    (the coordination service's barrier; nothing with one process).

    On CPUs the first cross-process collective sets up gloo, which gives the
    other processes 30 s to arrive; a process slowed by data loading or
    compilation on a busy host misses that and the run fails or hangs.
    Waiting here first keeps the processes together before that collective."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the client JAX's own shutdown barrier uses

    # several processes means jax.distributed.initialize ran, so the client exists
    distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=int(timeout_s * 1000))


def start(cpu_devices: int = 0, compilation_cache: bool = True) -> None:
    """Start-up of every command: host allocator, CPU devices, compilation
    cache, then the process group.  ``cpu_devices``: see :func:`split_cpu`;
    ``compilation_cache=False`` for the benchmark, which times compilations.

    The host allocator is tuned only where the CPU backend has one device
    (:func:`cpu_device_count`): its single malloc arena serialises the
    allocations of several CPU device threads.  ``default.py``'s step on 8
    CPU devices took 1.24x as long with it as without it, against 0.77x of
    the 2-device step without it (README, Benchmarks); the paper-size step
    that needs the tuning runs on one device.  (An accelerator host given
    ``cpu_devices > 1`` keeps glibc's defaults too; its step's temporaries
    are on the accelerator.)"""
    if cpu_device_count(cpu_devices) <= 1:
        configure_host_allocator()
    split_cpu(cpu_devices)
    if compilation_cache:
        enable_compilation_cache()
    maybe_initialize()


CACHE_ENV = "RTPCA_COMPILATION_CACHE"
COMPILATION_CACHE_MAX_BYTES = 2 << 30


def default_compilation_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rtpca-jax", "xla")


def _have_filelock() -> bool:
    try:
        import filelock  # noqa: F401  (JAX needs it to bound the cache)
    except ImportError:
        return False
    return True


def enable_compilation_cache() -> str | None:
    """Keep compiled programs on disk so that the next command with the same
    program loads it instead of compiling it again.

    The training step, the initialisation and the prediction function take
    8-9, 2-4 and 1-1.5 s to compile for ``configs/default.py`` on a 2-core
    CPU (minutes for the paper preset on an accelerator); a second run of
    ``train.py`` (another seed), ``eval.py`` after it, or a preempted run
    resuming loads them in well under a second.  JAX keys every entry on the
    program, the devices, the compiler options and the JAX/XLA version, so a
    changed program is compiled anew, never taken from a stale entry; programs
    that compile in under a second are not stored (JAX's default).

    Where: ``$RTPCA_COMPILATION_CACHE`` (a local directory, or ``off``), else ``~/.cache/rtpca-jax/xla`` (``$XDG_CACHE_HOME`` honoured);
    a directory JAX was already given (``JAX_COMPILATION_CACHE_DIR``) wins.
    A local cache is capped at 2 GiB, least recently used entries evicted
    first (JAX then locks the directory, so concurrent processes share it
    safely).  A directory that cannot be written, or a bucket path (the
    cache is host-local state, like ``~/.cache``: each host of a pod keeps
    its own), leaves the cache off with a warning.  Returns the cache's
    location, or None when it is off."""
    have = jax.config.jax_compilation_cache_dir
    if have:
        return have
    choice = os.environ.get(CACHE_ENV, "").strip()
    if choice.lower() in ("off", "0", "false", "no", "none"):
        return None
    path = choice or default_compilation_cache_dir()
    from rtpca_jax import storage

    try:
        if storage.is_remote(path):
            raise ValueError("a bucket path; give a local directory")
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f"{path} is not writable")
    except (OSError, ValueError) as e:
        from absl import logging

        logging.warning("compilation cache off: cannot use %s (%s); set %s to another directory or to off",
                        path, e, CACHE_ENV)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    if jax.config.jax_compilation_cache_max_size == -1 and _have_filelock():
        jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_MAX_BYTES)
    return path


def _forced_cpu_devices() -> int | None:
    """The CPU device count forced through ``XLA_FLAGS``, if any."""
    m = re.search(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    return int(m.group(1)) if m else None


def cpu_device_count(cpu_devices: int) -> int:
    """How many devices JAX's CPU backend will have after ``start(cpu_devices)``:
    a count forced through ``XLA_FLAGS`` wins, as in :func:`split_cpu`."""
    forced = _forced_cpu_devices()
    return forced if forced is not None else max(1, cpu_devices)


def split_cpu(n: int) -> bool:
    """Make JAX's CPU backend ``n`` devices instead of one (0 or 1: leave it).

    A small model's training step on a CPU is a few thousand kernels of a
    megabyte or less; one XLA:CPU device splits each over all cores and
    synchronises the threads after every kernel.  With two devices and the
    batch split between them (the training step's data-parallel mesh), each
    half runs mostly on its own core: ``configs/default.py``'s step at batch
    16 on a 2-core CPU measured 9 % faster (README, Benchmarks).  More
    devices than cores fill the gaps where one device's thread waits (for
    the other at the all-reduce, for the input pipeline): 8 devices took
    0.73-0.77x the time of 2 in the training loop on 2 cores.  It only
    changes the CPU backend: on a GPU or TPU host the mesh is the
    accelerators, whatever ``n`` is.  A device count already forced through
    ``XLA_FLAGS`` wins; after JAX's backends have started it cannot change,
    and a different count is reported with a warning.  Returns whether the
    CPU backend will have ``n`` devices."""
    if n <= 1:
        return False
    if _forced_cpu_devices() is not None:
        return False
    try:
        jax.config.update("jax_num_cpu_devices", int(n))
        return True
    except RuntimeError:  # JAX refuses once its backends have started
        have = len(jax.devices("cpu"))
        if have != n:
            from absl import logging

            logging.warning("cpu_devices=%d ignored: JAX's backends started before (%d CPU devices)", n, have)
        return have == n


# One activation of the network ([tokens, width] per device) above this many
# elements makes the CPU training step memory-bound enough for the
# memory-optimising scheduler (see compiler_options).
MEMORY_SCHEDULER_MIN_ELEMENTS = 1 << 20


def compiler_options(devices, activation_elements: int = 0) -> dict:
    """XLA options for a program that runs on ``devices`` whose largest
    per-device activation (``[tokens, width]``) has ``activation_elements``.

    On CPUs, for large activations, the memory-optimising scheduler: XLA:CPU's
    default scheduler orders the training step for concurrency and holds 1.6x
    the temporary memory (paper preset, batch 1: 5.9 GB against 3.6 GB; batch
    4 would not fit 24 GB) for a few per cent of speed.  Small models keep the
    default: for them the memory-optimising order measured 12-17 % slower
    (``default.py`` at batch 16: 0.146 s against 0.164-0.185 s per step) for
    13 % less memory.

    On GPUs, matrix products go to cuBLAS rather than XLA's Triton GEMM
    fusions: the bf16 paper-preset training step on an H100 ran 5-6 % faster
    (cuDNN attention: 0.1365 s against 0.1440 s at batch 16, 0.376 s against
    0.397 s at 48) and compiled in 45 s rather than 55-58 s.  TPUs keep
    their defaults.
    """
    platforms = {d.platform for d in devices}
    if platforms == {"cpu"} and activation_elements >= MEMORY_SCHEDULER_MIN_ELEMENTS:
        return {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
    if platforms == {"gpu"}:
        return {"xla_gpu_enable_triton_gemm": False}
    return {}
