"""TrainState, mesh and shardings, jit-compiled train/eval steps, evaluation.

One code path for 1 CPU, 8 GPUs or a TPU pod: a ``Mesh`` over all devices
with one ``data`` axis; parameters and optimiser state replicated, batches
sharded along ``data``; ``jax.jit`` with explicit shardings and the state
donated.  Each process feeds its own rows; the global batch is assembled with
``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import collections
import functools
import itertools
from typing import Any, Callable, Iterator, Optional, Sequence as Seq

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rtpca_jax import losses, metrics
from rtpca_jax.data.pipeline import eval_clips, stitch
from rtpca_jax.data.skeleton import MPI3DHP17, get_layout
from rtpca_jax.data.sources.records import Sequence


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # base key; the dropout key of step s is fold_in(rng, s)


def make_mesh(devices: Optional[Seq[jax.Device]] = None) -> Mesh:
    devices = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devices, ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def learning_rate_schedule(train_cfg, steps_per_epoch: int) -> optax.Schedule:
    """``lr * decay ** epoch`` with the epoch counted in steps (staircase)."""
    return optax.exponential_decay(train_cfg.lr, transition_steps=steps_per_epoch,
                                   decay_rate=train_cfg.lr_decay, staircase=True)


def make_optimizer(train_cfg, steps_per_epoch: int) -> optax.GradientTransformation:
    """AdamW with the per-epoch decay; optional global-norm gradient clipping."""
    tx = optax.adamw(learning_rate_schedule(train_cfg, steps_per_epoch), b1=0.9, b2=0.999, eps=1e-8,
                     weight_decay=train_cfg.weight_decay)
    if train_cfg.get("grad_clip_norm"):
        tx = optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip_norm), tx)
    return tx


def create_state(module, tx: optax.GradientTransformation, seed: int, mesh: Mesh) -> TrainState:
    """Initial state, replicated over the mesh."""
    from rtpca_jax.model import init_params

    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))

    def init():
        params = init_params(module, init_key)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=dropout_key)

    return jax.jit(init, out_shardings=replicated(mesh))()


def state_sharding(state: TrainState, mesh: Mesh):
    return jax.tree_util.tree_map(lambda _: replicated(mesh), state)


def make_train_step(module, tx: optax.GradientTransformation, train_cfg, mesh: Mesh,
                    state_shardings) -> Callable:
    """``step(state, pose2d[B,F,J,2], pose3d[B,F,J,3]) -> (state, metrics)``."""
    weights = tuple(train_cfg.joint_weights)
    lw = dict(w_mpjpe=train_cfg.w_mpjpe, w_temporal=train_cfg.w_temporal, w_velocity=train_cfg.w_velocity)

    def step(state: TrainState, pose2d, pose3d):
        rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            pred = module.apply({"params": params}, pose2d, train=True, rngs={"dropout": rng})
            return losses.total_loss(pred, pose3d, weights, **lw)

        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        out = {"loss": loss, "grad_norm": optax.global_norm(grads), **parts}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng), out

    data = batch_sharding(mesh)
    return jax.jit(step, in_shardings=(state_shardings, data, data),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=(0,))


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """This process's rows -> one global array sharded along ``data``."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), np.asarray(local))


def device_prefetch(batches: Iterator, mesh: Mesh, size: int = 2) -> Iterator:
    """Yields the tuples of host arrays from ``batches`` as global device
    arrays, keeping ``size`` batches already transferred ahead, so the copy of
    the next batches overlaps the running step."""
    queue: collections.deque = collections.deque()

    def put(item):
        return tuple(global_batch(a.numpy() if hasattr(a, "numpy") else np.asarray(a), mesh) for a in item)

    it = iter(batches)
    for item in itertools.islice(it, size):
        queue.append(put(item))
    while queue:
        ready = queue.popleft()
        for item in itertools.islice(it, 1):
            queue.append(put(item))
        yield ready


# ----------------------------------------------------------------------------
# Evaluation


@functools.lru_cache(maxsize=16)
def make_predict_fn(module, mesh: Mesh) -> Callable:
    """Jitted ``predict(params, pose2d[B,F,J,2])``; one per (module, mesh), so
    repeated evaluations reuse the compiled program."""

    def predict(params, pose2d):
        return module.apply({"params": params}, pose2d, train=False).astype(jnp.float32)

    return jax.jit(predict, in_shardings=(replicated(mesh), batch_sharding(mesh)),
                   out_shardings=replicated(mesh))


def pad_bucket(n: int, batch_size: int, n_dev: int) -> int:
    """Padded size of a batch of ``n`` rows: ``n_dev * 2**k >= n``, at most ``batch_size``."""
    size = n_dev
    while size < n:
        size *= 2
    return min(size, batch_size)


def predict_clips(predict_fn, params, clips: np.ndarray, batch_size: int, mesh: Mesh) -> np.ndarray:
    """Predictions for ``clips[N, F, J, 2]`` in batches of ``batch_size``.

    The last, shorter batch is zero-padded (and the padding dropped) to the
    smallest power-of-two multiple of the device count that holds it, capped
    at ``batch_size``: at most log2(batch_size) + 1 shapes are ever compiled,
    a repeated evaluation never recompiles, and a 3-clip sequence does not pay
    for a 64-clip batch."""
    n_dev = mesh.devices.size
    batch_size = -(-batch_size // n_dev) * n_dev
    n = clips.shape[0]
    out = []
    for lo in range(0, n, batch_size):
        chunk = clips[lo:lo + batch_size]
        size = pad_bucket(chunk.shape[0], batch_size, n_dev)
        pad = size - chunk.shape[0]
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
        p = jax.process_count()
        rows = size // p
        local = chunk[jax.process_index() * rows:(jax.process_index() + 1) * rows]
        pred = predict_fn(params, global_batch(local, mesh))
        out.append(np.asarray(jax.device_get(pred))[: size - pad])
    return np.concatenate(out) if out else np.zeros((0,) + clips.shape[1:-1] + (3,), np.float32)


def predict_clips_tta(predict_fn, params, clips: np.ndarray, batch_size: int, mesh: Mesh, layout,
                      flip: bool = True) -> np.ndarray:
    """:func:`predict_clips`, averaged with the prediction of the mirrored input
    mirrored back (flip test-time augmentation) when ``flip``."""
    pred = predict_clips(predict_fn, params, clips, batch_size, mesh)
    if flip:
        perm = layout.flip_permutation
        flipped = clips[:, :, perm].copy()
        flipped[..., 0] *= -1
        pf = predict_clips(predict_fn, params, flipped, batch_size, mesh)[:, :, perm]
        pf[..., 0] *= -1
        pred = (pred + pf) / 2
    return pred


def predict_sequences(predict_fn, params, sequences: Seq[Sequence], num_frames: int, batch_size: int,
                      mesh: Mesh, flip_tta: bool = True) -> list[np.ndarray]:
    """Whole-sequence predictions ``[T, J, 3]`` as the official evaluation makes
    them: non-overlapping clips of F frames (the last right-aligned, short ones
    edge-padded); with ``flip_tta`` the horizontally flipped input is predicted
    too, flipped back and averaged."""
    if not sequences:
        return []
    layout = get_layout(sequences[0].layout)
    all_clips, index = [], []
    for s in sequences:
        c, idx = eval_clips(s.pose2d, num_frames)
        all_clips.append(c)
        index.append(idx)
    clips = np.concatenate(all_clips).astype(np.float32)
    pred = predict_clips_tta(predict_fn, params, clips, batch_size, mesh, layout, flip_tta)
    out, lo = [], 0
    for s, idx in zip(sequences, index):
        out.append(stitch(pred[lo:lo + len(idx)], idx, s.num_frames))
        lo += len(idx)
    return out


def score_sequences(sequences: Seq[Sequence], predictions: Seq[np.ndarray]) -> dict:
    """P1, P2 and MPJVE in mm per sequence, averaged per action then over actions.

    Frames flagged invalid (MPI-INF-3DHP) are left out.  The ground truth's root
    is zero; predictions are scored as they come (the official evaluation).
    MPI-INF-3DHP sequences also get its standard metrics: PCK at 150 mm and AUC
    (PCK averaged over 0, 5, ..., 150 mm), in %, over all 17 joints and over the
    customary 14 (``pck14_*``, ``auc14``); besides the per-sequence averages the
    result then holds ``pooled_*`` values over all valid test frames together."""
    rows = []
    joint_sum, joint_n = 0.0, 0
    pooled_pred, pooled_gt = [], []
    for s, pred in zip(sequences, predictions):
        gt = s.pose3d.astype(np.float64)
        pred = pred.astype(np.float64)
        v = np.ones(len(gt), bool) if s.valid is None else s.valid
        vals = {
            "mpjpe_mm": metrics.mpjpe(pred[v], gt[v]) * 1000.0,
            "p_mpjpe_mm": metrics.p_mpjpe(pred[v], gt[v]) * 1000.0,
            "mpjve_mm": metrics.mpjve(pred, gt) * 1000.0 if len(gt) > 1 else 0.0,
        }
        if s.layout == MPI3DHP17.name:
            vals.update(_pck_auc(pred[v] * 1000.0, gt[v] * 1000.0))
            pooled_pred.append(pred[v])
            pooled_gt.append(gt[v])
        rows.append((s.action, vals, int(v.sum())))
        joint_sum = joint_sum + np.linalg.norm(pred[v] - gt[v], axis=-1).sum(axis=0)
        joint_n += int(v.sum())
    overall, per_action = metrics.aggregate_by_action(rows)
    if pooled_pred:
        p, g = np.concatenate(pooled_pred), np.concatenate(pooled_gt)
        overall["pooled_mpjpe_mm"] = metrics.mpjpe(p, g) * 1000.0
        overall.update({f"pooled_{k}": v for k, v in _pck_auc(p * 1000.0, g * 1000.0).items()})
    per_joint = (np.asarray(joint_sum) / max(joint_n, 1) * 1000.0).tolist()
    return {**overall, "per_action": per_action, "per_joint_mm": per_joint}


def _pck_auc(pred_mm: np.ndarray, gt_mm: np.ndarray) -> dict:
    return {"pck_150mm": metrics.pck(pred_mm, gt_mm), "auc": metrics.auc(pred_mm, gt_mm),
            "pck14_150mm": metrics.pck(pred_mm, gt_mm, joints=metrics.MPI3DHP_PCK14),
            "auc14": metrics.auc(pred_mm, gt_mm, joints=metrics.MPI3DHP_PCK14)}


# ----------------------------------------------------------------------------
# Closed-form baselines


def mean_pose_baseline(train: Seq[Sequence]) -> np.ndarray:
    """The mean root-relative training pose ``[J, 3]``."""
    return np.concatenate([s.pose3d for s in train]).mean(axis=0)


def linear_baseline(train: Seq[Sequence], ridge: float = 1e-3) -> np.ndarray:
    """Per-frame least squares ``pose3d = [pose2d - pose2d_root, 1] @ W`` (ridge-
    regularised), returns ``W[(2J+1), 3J]``."""
    x = np.concatenate([_linear_features(s.pose2d) for s in train])
    y = np.concatenate([s.pose3d.reshape(s.num_frames, -1) for s in train])
    a = x.T @ x + ridge * np.eye(x.shape[1])
    return np.linalg.solve(a, x.T @ y)


def _linear_features(pose2d: np.ndarray) -> np.ndarray:
    rel = (pose2d - pose2d[:, :1]).reshape(len(pose2d), -1).astype(np.float64)
    return np.concatenate([rel, np.ones((len(pose2d), 1))], axis=1)


def apply_linear_baseline(w: np.ndarray, pose2d: np.ndarray) -> np.ndarray:
    return (_linear_features(pose2d) @ w).reshape(len(pose2d), -1, 3)

