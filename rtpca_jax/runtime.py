"""Multi-process start-up from the environment."""

from __future__ import annotations

import os

import jax


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
