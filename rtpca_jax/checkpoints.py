"""Orbax checkpoints of training runs (the v1 ``training.Checkpointer``) and
of converted models (:func:`save_params`).  The loader for every kind of
checkpoint path, official PyTorch files included, is
:func:`rtpca_jax.convert.load_model`.

A checkpoint holds the whole ``TrainState`` (params, optimiser state, step,
dropout rng) plus the data-pipeline position (epoch, step within the epoch)
and, when known, the validation MPJPE it was saved with.  Kept: the latest
``keep`` checkpoints and the best one by validation MPJPE.

Restoring walks from the newest checkpoint back and skips, with a warning,
any that cannot be read (truncated or corrupted files), so a damaged latest
checkpoint costs one interval, not the run.  On local disks Orbax writes each
checkpoint to a temporary folder and renames it when complete; on object
stores (``gs://``) it writes in place and marks a finished checkpoint with a
commit file, so in both cases a process killed while saving leaves no
checkpoint that looks complete but is not.

Directories may be local or remote (``gs://...``): every access goes through
:mod:`rtpca_jax.storage` (Orbax itself uses etils.epath and tensorstore).
"""

from __future__ import annotations

import json
import warnings
from typing import Any, Callable, Optional

import jax
import numpy as np
from absl import logging

from orbax.checkpoint.experimental import v1 as ocp

from rtpca_jax import storage

METRIC = "val_mpjpe_mm"


def _json_ok(path: str) -> bool:
    try:
        json.loads(storage.read_text(path))
        return True
    except (OSError, ValueError):
        return False


def quarantine_damaged(directory: str) -> list[str]:
    """Move aside (to ``<step>.damaged``, never delete) step folders whose JSON
    metadata cannot be parsed: Orbax reads those when it opens the directory
    and would refuse to open it at all.  Returns the new paths."""
    moved = []
    if not storage.isdir(directory):
        return moved
    names = storage.listdir(directory)
    for name in names:
        step_dir = storage.join(directory, name)
        if not (name.isdigit() and storage.isdir(step_dir)):
            continue
        candidates = [storage.join(step_dir, "_CHECKPOINT_METADATA"), storage.join(step_dir, "metrics", "metrics")]
        candidates += [storage.join(step_dir, d, "_METADATA") for d in storage.listdir(step_dir)]
        bad = [c for c in candidates if storage.isfile(c) and not _json_ok(c)]
        if bad:
            target = step_dir + ".damaged"
            i = 1
            while storage.exists(target):
                target = f"{step_dir}.damaged{i}"
                i += 1
            storage.replace_tree(step_dir, target)
            logging.warning("checkpoint %s is damaged (unreadable %s); moved to %s", name,
                            bad[0][len(step_dir) + 1:], target)
            moved.append(target)
    return moved


class IncompatibleCheckpointError(ValueError):
    """A checkpoint written by a different config (model size, ``train.ema_decay``)."""


def _shapes(tree) -> dict:
    """``{"a/b/0": shape}``: Orbax's metadata keeps tuples as lists, flax's state dict as ``{"0": ...}``."""
    def name(k):
        return str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0] if tree is not None else []
    return {"/".join(name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def _mismatch(saved_state: dict, state) -> Optional[str]:
    """How a checkpoint's weights or optimiser state differ from ``state``'s, or None."""
    import flax.serialization

    want = flax.serialization.to_state_dict(state)
    for key in ("params", "ema_params"):
        have, need = _shapes(saved_state.get(key)), _shapes(want.get(key))
        if have == need:
            continue
        if not have or not need:
            return (f"it {'holds' if have else 'has no'} {key}, this config {'does not' if have else 'does'}"
                    + (" (train.ema_decay)" if key == "ema_params" else ""))
        path = sorted(set(have) ^ set(need) or {p for p in have if have[p] != need[p]})[0]
        return f"{key}/{path} is {have.get(path, 'absent')} there, {need.get(path, 'absent')} in this config"
    if _shapes(saved_state.get("opt_state")) != _shapes(want.get("opt_state")):
        return "its optimiser state differs from this config's (train.grad_clip_norm or the optimiser changed)"
    return None


def _newest_readable(ckpt, load: Callable[[int], Any], where: str):
    """``(step, tree)`` of the newest checkpoint ``load`` can read, skipping
    (with a warning) every unreadable one; None when there is none.  A
    checkpoint of another config stops the search (``IncompatibleCheckpointError``):
    training from scratch over it would lose the run."""
    for step in sorted((int(c.step) for c in ckpt.checkpoints), reverse=True):
        try:
            return step, load(step)
        except IncompatibleCheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - any damage means: try the previous one
            logging.warning("checkpoint %d in %s is unreadable (%s: %s); trying the previous one",
                            step, where, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
    return None


# Orbax writes a replicated array in per-device pieces, one slicing
# computation each, when a piece holds at least this much (default: always).
# Below a mebibyte the slicing costs more than the parallel write saves:
# default.py's state on 2 CPU devices (4 x 204 arrays of at most 12 KiB) took
# 0.71 s per save to hand over, 0.33 s written whole (8 alternated saves each,
# medians).  The paper preset's large matrices are still split.
MIN_REPLICA_SLICE_BYTES = 1 << 20


class Checkpoints:
    def __init__(self, directory: str, keep: int = 3):
        self.directory = storage.normalize(directory)
        if jax.process_index() == 0:
            quarantine_damaged(self.directory)
        policies = [ocp.training.preservation_policies.LatestN(keep)]
        policies.append(ocp.training.preservation_policies.BestN(
            get_metric_fn=lambda m: m[METRIC], reverse=True, n=1, keep_checkpoints_without_metrics=False))
        context = ocp.Context()
        context.array.saving.min_slice_bytes_for_replica_parallel = MIN_REPLICA_SLICE_BYTES
        self._ckpt = ocp.training.Checkpointer(
            self.directory,
            preservation_policy=ocp.training.preservation_policies.AnyPreservationPolicy(policies),
            context=context,
        )
        self._pending = None

    def save(self, state, *, epoch: int, epoch_step: int, val_mpjpe_mm: Optional[float] = None,
             wait: bool = True) -> None:
        """Save ``state``; with ``wait`` return once the checkpoint is complete.

        ``wait=False`` returns once the arrays are copied off the devices
        (``state`` may then be donated to the next step) and writes the files
        in the background: 0.33 s here against 1.2 s for ``default.py``'s
        state on 2 CPU devices.  A later save, :meth:`wait`, :meth:`steps`
        and :meth:`close` wait for it (and raise its error, if it failed); a
        process killed meanwhile leaves the previous checkpoint as the newest
        complete one."""
        step = int(jax.device_get(state.step))
        tree = {"state": state, "position": {"epoch": np.asarray(epoch, np.int64), "epoch_step": np.asarray(epoch_step, np.int64)}}
        metrics = {METRIC: float(val_mpjpe_mm)} if val_mpjpe_mm is not None else None
        self._pending = self._ckpt.save_async(step, tree, force=True, overwrite=True, metrics=metrics)
        if wait:
            self.wait()

    def wait(self) -> None:
        """Block until the last save is complete."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()
        self._ckpt.wait()

    def steps(self) -> list[int]:
        self.wait()
        return sorted(int(c.step) for c in self._ckpt.checkpoints)

    def restore_latest(self, abstract_state) -> Optional[tuple[Any, int, int, int]]:
        """``(state, epoch, epoch_step, step)`` of the newest readable checkpoint,
        or None when there is none.  Unreadable ones are skipped with a warning."""
        abstract = {"state": abstract_state,
                    "position": {"epoch": np.zeros((), np.int64), "epoch_step": np.zeros((), np.int64)}}
        def load(step):
            problem = _mismatch(self._ckpt.metadata(step).metadata["state"], abstract_state)
            if problem:
                raise IncompatibleCheckpointError(
                    f"{storage.join(self.directory, str(step))} was written by another config: {problem}. "
                    f"Resume with the config that wrote it, or train in a new work directory.")
            return self._ckpt.load(step, abstract)

        found = _newest_readable(self._ckpt, load, self.directory)
        if found is None:
            return None
        step, tree = found
        pos = tree["position"]
        return tree["state"], int(pos["epoch"]), int(pos["epoch_step"]), step

    def close(self) -> None:
        self.wait()
        self._ckpt.close()


def load_params(directory: str, abstract_params=None):
    """Model parameters of the newest readable checkpoint in a training
    checkpoint folder, or of ``<dir>/params`` written by ``convert to-jax``
    (restored to ``abstract_params``' shapes, replicated, when given)."""
    directory = storage.normalize(directory)
    if not storage.isdir(directory):
        raise ValueError(f"{directory}: checkpoint directory not found")
    if abstract_params is not None:
        abstract_params = _with_replicated_sharding(abstract_params)
    if storage.isdir(storage.join(directory, "params")):
        return ocp.load(storage.join(directory, "params"), abstract_params)
    quarantine_damaged(directory)
    ckpt = ocp.training.Checkpointer(directory)

    def load(step):
        # restored replicated over this process's devices, whatever devices saved it (a pod
        # slice's checkpoint on one GPU; train.cpu_devices=2 on one CPU device)
        saved = ckpt.metadata(step).metadata
        abstract = _with_replicated_sharding(
            jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return ckpt.load(step, abstract)

    try:
        found = _newest_readable(ckpt, load, directory)
    finally:
        ckpt.close()
    if found is None:
        raise ValueError(f"{directory}: no readable checkpoint found")
    state = found[1]["state"]  # plain dicts: restored from the checkpoint's own metadata
    # the moving average when the run kept one (train.ema_decay): the weights it evaluated
    return state["params"] if state.get("ema_params") is None else state["ema_params"]


def save_params(out_dir: str, params, model_config) -> None:
    """A model as ``convert to-jax`` writes it: ``<out>/params`` (Orbax) and
    ``<out>/model_config.json``.  The parameters go to ``params.tmp`` first and
    replace ``params`` when complete (a rename on local disks, a copy on object
    stores), so an existing model is never left half-overwritten."""
    from rtpca_jax.model.spec import as_dict

    target = storage.join(out_dir, "params")
    tmp = target + ".tmp"
    storage.makedirs(out_dir)
    storage.rmtree(tmp)
    ocp.save(tmp, params)
    storage.replace_tree(tmp, target)
    storage.write_json(storage.join(out_dir, "model_config.json"), as_dict(model_config))


def _with_replicated_sharding(abstract):
    """Abstract arrays without a sharding get one replicated over all devices."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(jax.devices()), ("data",))

    def fix(a):
        if getattr(a, "sharding", None) is not None:
            return a
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, PartitionSpec()))

    return jax.tree_util.tree_map(fix, abstract)
