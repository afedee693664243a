"""Orbax checkpoints of training runs (the v1 ``training.Checkpointer``).

A checkpoint holds the whole ``TrainState`` (params, optimiser state, step,
dropout rng) plus the data-pipeline position (epoch, step within the epoch)
and, when known, the validation MPJPE it was saved with.  Kept: the latest
``keep`` checkpoints and the best one by validation MPJPE.

Restoring walks from the newest checkpoint back and skips, with a warning,
any that cannot be read (truncated or corrupted files), so a damaged latest
checkpoint costs one interval, not the run.  Orbax writes each checkpoint to a
temporary folder and renames it when complete, so a process killed while
saving leaves no half-written checkpoint behind.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
from absl import logging

from orbax.checkpoint.experimental import v1 as ocp

METRIC = "val_mpjpe_mm"


class Checkpoints:
    def __init__(self, directory: str, keep: int = 3):
        self.directory = os.path.abspath(directory)
        policies = [ocp.training.preservation_policies.LatestN(keep)]
        policies.append(ocp.training.preservation_policies.BestN(
            get_metric_fn=lambda m: m[METRIC], reverse=True, n=1, keep_checkpoints_without_metrics=False))
        self._ckpt = ocp.training.Checkpointer(
            self.directory,
            preservation_policy=ocp.training.preservation_policies.AnyPreservationPolicy(policies),
        )

    def save(self, state, *, epoch: int, epoch_step: int, val_mpjpe_mm: Optional[float] = None) -> None:
        """Save synchronously (returns once the checkpoint is complete on disk)."""
        step = int(jax.device_get(state.step))
        tree = {"state": state, "position": {"epoch": np.asarray(epoch, np.int64), "epoch_step": np.asarray(epoch_step, np.int64)}}
        metrics = {METRIC: float(val_mpjpe_mm)} if val_mpjpe_mm is not None else None
        self._ckpt.save_pytree(step, tree, force=True, overwrite=True, metrics=metrics)
        self._ckpt.wait()

    def steps(self) -> list[int]:
        return sorted(int(c.step) for c in self._ckpt.checkpoints)

    def restore_latest(self, abstract_state) -> Optional[tuple[Any, int, int, int]]:
        """``(state, epoch, epoch_step, step)`` of the newest readable checkpoint,
        or None when there is none.  Unreadable ones are skipped with a warning."""
        abstract = {"state": abstract_state,
                    "position": {"epoch": np.zeros((), np.int64), "epoch_step": np.zeros((), np.int64)}}
        for step in reversed(self.steps()):
            try:
                tree = self._ckpt.load_pytree(step, abstract)
            except Exception as e:  # noqa: BLE001 - any damage means: try the previous one
                logging.warning("checkpoint %d in %s is unreadable (%s: %s); trying the previous one",
                                step, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
                continue
            pos = tree["position"]
            return tree["state"], int(pos["epoch"]), int(pos["epoch_step"]), step
        return None

    def close(self) -> None:
        self._ckpt.close()


def load_params(directory: str, abstract_params=None):
    """Model parameters of the newest readable checkpoint in a training or
    conversion directory (``<dir>/params`` written by ``convert to-jax`` is
    read too)."""
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"{directory}: checkpoint directory not found")
    if os.path.isdir(os.path.join(directory, "params")):
        return ocp.load_pytree(os.path.join(directory, "params"), abstract_params)
    ckpt = ocp.training.Checkpointer(directory)
    try:
        for c in sorted(ckpt.checkpoints, key=lambda c: c.step, reverse=True):
            try:
                tree = ckpt.load_pytree(c.step)
            except Exception as e:  # noqa: BLE001
                logging.warning("checkpoint %d unreadable (%s); trying the previous one", c.step, e)
                continue
            return tree["state"]["params"]
    finally:
        ckpt.close()
    raise ValueError(f"{directory}: no readable checkpoint found")
