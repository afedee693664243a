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

import json
import os
import warnings
from typing import Any, Optional

import jax
import numpy as np
from absl import logging

from orbax.checkpoint.experimental import v1 as ocp

METRIC = "val_mpjpe_mm"


def _json_ok(path: str) -> bool:
    try:
        with open(path) as f:
            json.load(f)
        return True
    except (OSError, ValueError):
        return False


def quarantine_damaged(directory: str) -> list[str]:
    """Move aside (rename to ``<step>.damaged``, never delete) step folders
    whose JSON metadata cannot be parsed: Orbax reads those when it opens the
    directory and would refuse to open it at all.  Returns the moved paths."""
    moved = []
    if not os.path.isdir(directory):
        return moved
    for name in sorted(os.listdir(directory)):
        step_dir = os.path.join(directory, name)
        if not (name.isdigit() and os.path.isdir(step_dir)):
            continue
        candidates = [os.path.join(step_dir, "_CHECKPOINT_METADATA"), os.path.join(step_dir, "metrics", "metrics")]
        candidates += [os.path.join(step_dir, d, "_METADATA") for d in os.listdir(step_dir)]
        bad = [c for c in candidates if os.path.isfile(c) and not _json_ok(c)]
        if bad:
            target = step_dir + ".damaged"
            i = 1
            while os.path.exists(target):
                target = f"{step_dir}.damaged{i}"
                i += 1
            os.replace(step_dir, target)
            logging.warning("checkpoint %s is damaged (unreadable %s); moved to %s", name,
                            os.path.relpath(bad[0], step_dir), target)
            moved.append(target)
    return moved


class Checkpoints:
    def __init__(self, directory: str, keep: int = 3):
        self.directory = os.path.abspath(directory)
        if jax.process_index() == 0:
            quarantine_damaged(self.directory)
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
        self._ckpt.save(step, tree, force=True, overwrite=True, metrics=metrics)
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
                tree = self._ckpt.load(step, abstract)
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
    """Model parameters of the newest readable checkpoint in a training
    directory, or of ``<dir>/params`` written by ``convert to-jax`` (restored
    to ``abstract_params``' shapes, replicated, when given)."""
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"{directory}: checkpoint directory not found")
    if abstract_params is not None:
        abstract_params = _with_replicated_sharding(abstract_params)
    if os.path.isdir(os.path.join(directory, "params")):
        return ocp.load(os.path.join(directory, "params"), abstract_params)
    quarantine_damaged(directory)
    ckpt = ocp.training.Checkpointer(directory)
    try:
        for c in sorted(ckpt.checkpoints, key=lambda c: c.step, reverse=True):
            try:
                with warnings.catch_warnings():
                    # training checkpoints carry their sharding; restoring it replicated is what we want
                    warnings.simplefilter("ignore", UserWarning)
                    tree = ckpt.load(c.step)
            except Exception as e:  # noqa: BLE001
                logging.warning("checkpoint %d unreadable (%s: %s); trying the previous one", c.step,
                                type(e).__name__, str(e).splitlines()[0][:200])
                continue
            state = tree["state"]
            return state["params"] if isinstance(state, dict) else state.params
    finally:
        ckpt.close()
    raise ValueError(f"{directory}: no readable checkpoint found")


def _with_replicated_sharding(abstract):
    """Abstract arrays without a sharding get one replicated over all devices."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(jax.devices()), ("data",))

    def fix(a):
        if getattr(a, "sharding", None) is not None:
            return a
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, PartitionSpec()))

    return jax.tree_util.tree_map(fix, abstract)

