"""TrainState, mesh and shardings, the optimiser and the jit-compiled training step.

One code path for 1 CPU, 8 GPUs or a TPU pod: a ``Mesh`` over all devices
with one ``data`` axis; parameters and optimiser state replicated, batches
sharded along ``data``; ``jax.jit`` with explicit shardings and the state
donated.  Each process feeds its own rows; the global batch is assembled with
``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import collections
import itertools
from typing import Any, Callable, Iterator, Optional, Sequence as Seq

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rtpca_jax import losses, runtime
from rtpca_jax.model import ops


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # base key; the dropout key of step s is fold_in(rng, s)
    ema_params: Any = None  # moving average of params (train.ema_decay > 0), else None

    @property
    def eval_params(self):
        """The weights to evaluate and export: the moving average when there is one."""
        return self.params if self.ema_params is None else self.ema_params


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


def create_state(module, tx: optax.GradientTransformation, seed: int, mesh: Mesh,
                 ema: bool = False, on_shapes: Optional[Callable[[Any], None]] = None) -> TrainState:
    """Initial state, replicated over the mesh; with ``ema``, a moving average
    of the parameters starting from the initial ones.

    ``on_shapes(abstract_state)`` (``jax.ShapeDtypeStruct`` leaves with their
    shardings) is called once the initialisation is traced and before it is
    compiled, so that a caller can start compiling what takes the state."""
    from rtpca_jax.model import init_params

    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))

    def init():
        params = init_params(module, init_key)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=dropout_key, ema_params=jax.tree_util.tree_map(jnp.copy, params) if ema else None)

    traced = jax.jit(init, out_shardings=replicated(mesh)).trace()
    if on_shapes is not None:
        on_shapes(traced.out_info)
    return traced.lower().compile()()


class CompileAhead:
    """Compiles the jitted ``fn`` for arguments of the shapes and shardings in
    ``args`` (``jax.ShapeDtypeStruct``) in a background thread: JAX keeps the
    executable, so a later call with arrays of those shapes runs it without
    compiling.  XLA's compilation releases the interpreter lock, so it
    overlaps with what the caller does meanwhile (the state's initialisation,
    TensorFlow's import).  Call :meth:`wait` before the first call: a call
    made while this compiles would compile the same program a second time.
    A failure here is dropped; the first call compiles again and raises it."""

    def __init__(self, fn, *args):
        import threading

        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._compile, args=(fn, args), name="rtpca-compile-ahead",
                                        daemon=True)
        self._thread.start()

    def _compile(self, fn, args) -> None:
        try:
            fn.lower(*args).compile()
        except Exception as e:  # noqa: BLE001 - reported by the real call
            self.error = e

    def wait(self) -> None:
        self._thread.join()


def state_sharding(state: TrainState, mesh: Mesh):
    return jax.tree_util.tree_map(lambda _: replicated(mesh), state)


def ema_update(ema, params, step: jax.Array, decay: float):
    """``ema + (1 - d) (params - ema)`` after optimiser step ``step`` (1-based),
    with ``d = min(decay, (1 + step) / (10 + step))``: early on, while the
    weights move fast, the average spans about the last ninth of the steps
    taken, later at most ``1 / (1 - decay)`` steps."""
    t = step.astype(jnp.float32)
    d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    return jax.tree_util.tree_map(lambda e, p: e + (1.0 - d) * (p - e), ema, params)


def make_train_step(module, tx: optax.GradientTransformation, train_cfg, mesh: Mesh, state_shardings,
                    joint_weights) -> Callable:
    """``step(state, pose2d[B,F,J,2], pose3d[B,F,J,3]) -> (state, metrics)``;
    ``joint_weights``: the loss's per-joint weights (``skeleton.loss_weights``)."""
    weights = tuple(joint_weights)
    lw = dict(w_mpjpe=train_cfg.w_mpjpe, w_temporal=train_cfg.w_temporal, w_velocity=train_cfg.w_velocity)

    def step(state: TrainState, pose2d, pose3d):
        rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            pred = module.apply({"params": params}, pose2d, train=True, rngs={"dropout": rng})
            return losses.total_loss(pred, pose3d, weights, **lw)

        with ops.weight_gradients_tied(mesh.devices.size == 1):
            (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        out = {"loss": loss, "grad_norm": optax.global_norm(grads), **parts}
        ema = state.ema_params
        if ema is not None:
            ema = ema_update(ema, params, state.step + 1, train_cfg.ema_decay)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng,
                          ema_params=ema), out

    data = batch_sharding(mesh)
    s = module.spec
    per_device = -(-int(train_cfg.batch_size) // mesh.devices.size)
    activation_elements = per_device * s.num_frames * s.num_joints * s.width
    return jax.jit(step, in_shardings=(state_shardings, data, data),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=(0,),
                   compiler_options=runtime.compiler_options(mesh.devices.flat, activation_elements))


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
