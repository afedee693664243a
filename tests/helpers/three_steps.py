"""Run 3 training steps on a fixed global batch with a mesh over all devices
(of all processes) and save losses and parameters.

    python three_steps.py OUT.npz [cmu | tfds:DATA_DIR]
Multi-process: set RTPCA_COORDINATOR, RTPCA_NUM_PROCESSES, RTPCA_PROCESS_ID.
With a data source, the batches are the first three of the training pipeline
(epoch 0 of the shipped CMU clips, from the file or from a prepared TFDS
dataset), each process reading its own rows; without one, fixed random data.
"""

import sys

import jax
import numpy as np

from rtpca_jax import model, train_lib
from rtpca_jax.config_lib import base_config
from rtpca_jax.data import skeleton
from rtpca_jax.runtime import barrier, start


def _pipeline_batches(source, batch, frames):
    from rtpca_jax.data import sources
    from rtpca_jax.data.pipeline import ClipDataset

    if source == "cmu":
        seqs = sources.load("cmu", None, subjects="train", downsample=2)
    else:
        from rtpca_jax.data.tfds_source import load_tfds

        seqs = load_tfds("cmu_mocap", source.split(":", 1)[1], "train", downsample=2)
    ds = ClipDataset(seqs, frames, batch, seed=0, stride=9)
    return [(x.numpy(), y.numpy()) for x, y in ds.epoch(0).take(3)]


def main(out, source=None):
    start()
    cfg = base_config("rtpca")
    cfg.model.update(dict(num_frames=27, width=16, depth=2, num_heads=4, drop_path_rate=0.1))
    # the official learning rate (4e-5): Adam's normalised updates turn reduction-order
    # noise in near-zero gradients into parameter differences proportional to lr
    module = model.build(cfg.model)
    mesh = train_lib.make_mesh()
    tx = train_lib.make_optimizer(cfg.train, 10)
    state = train_lib.create_state(module, tx, 0, mesh)
    step = train_lib.make_train_step(module, tx, cfg.train, mesh, train_lib.state_sharding(state, mesh),
                                     skeleton.H36M17.joint_weights)
    init = jax.tree_util.tree_map(lambda a: np.asarray(jax.device_get(a)), state.params)
    rng = np.random.default_rng(0)
    batch = 8
    p, n = jax.process_index(), jax.process_count()
    rows = slice(p * batch // n, (p + 1) * batch // n)
    losses = []
    local = _pipeline_batches(source, batch, 27) if source else None
    batches = []
    for i in range(3):
        if local is not None:  # this process's rows already
            x, y = local[i]
        else:
            x = rng.normal(size=(batch, 27, 17, 2)).astype(np.float32)[rows]
            y = (rng.normal(size=(batch, 27, 17, 3)).astype(np.float32) * 0.2)[rows]
        batches.append((train_lib.global_batch(x, mesh), train_lib.global_batch(y, mesh)))
    # compiled before the processes meet, so that neither reaches the first
    # collective long after the other (gloo's 30 s set-up; runtime.barrier)
    step = step.lower(state, *batches[0]).compile()
    barrier("three_steps: compiled")
    for x, y in batches:
        state, m = step(state, x, y)
        losses.append(float(m["loss"]))
    params = jax.tree_util.tree_map(lambda a: np.asarray(jax.device_get(a)), state.params)
    if p == 0:
        flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
        moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree_util.tree_leaves(params),
                                                                 jax.tree_util.tree_leaves(init)))
        np.savez(out, losses=np.array(losses), devices=len(jax.devices()), processes=n, moved=moved, **flat)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
