"""Building blocks of the experiment configs in ``configs/``.

An experiment config is a ``ConfigDict`` with sections ``model`` (see
``rtpca_jax.model.default_config``), ``data``, ``train`` and ``eval``.
"""

from __future__ import annotations

import ml_collections

from rtpca_jax.model.spec import default_config as default_model_config

H36M_JOINT_WEIGHTS = (1, 1, 2.5, 2.5, 1, 2.5, 2.5, 1, 1, 1, 1.5, 1.5, 4, 4, 1.5, 4, 4)
HUMANEVA_JOINT_WEIGHTS = (1, 1, 2.5, 2.5, 1, 2.5, 2.5, 1, 1.5, 1.5, 4, 4, 1.5, 4, 4)


def paper_model(variant: str) -> ml_collections.ConfigDict:
    """The paper's model settings: C=512, depth 8, 8 heads, MLP ratio 2,
    stochastic depth 0.1, 243 frames."""
    m = default_model_config()
    m.variant = variant
    m.num_frames = 243
    m.width = 512
    m.depth = 8
    m.num_heads = 8
    m.mlp_ratio = 2.0
    m.drop_path_rate = 0.1
    return m


def base_config(variant: str = "rtpca") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = paper_model(variant)

    c.data = ml_collections.ConfigDict()
    c.data.source = "h36m"  # h36m | humaneva15 | mpi_inf_3dhp | cmu | bvh | tfds
    c.data.root = "data"  # where the user keeps the dataset files (local or gs://)
    c.data.tfds_name = ""  # source "tfds": a prepared dataset, e.g. "h36m/gt", "cmu_mocap"
    c.data.tfds_data_dir = ""  # source "tfds": its data_dir (local or gs://)
    c.data.keypoints = "gt"  # 2D keypoints file suffix (h36m / humaneva)
    c.data.train_subjects = ("S1", "S5", "S6", "S7", "S8")
    c.data.test_subjects = ("S9", "S11")
    c.data.actions = ml_collections.FieldReference(None, field_type=tuple)
    c.data.downsample = 1  # keep every n-th frame
    c.data.flip = True  # random horizontal flip during training
    c.data.clip_stride = ml_collections.FieldReference(None, field_type=int)  # None: num_frames

    c.train = ml_collections.ConfigDict()
    c.train.seed = 0
    c.train.batch_size = 4  # global clips per step (official: 4)
    c.train.num_epochs = 120
    c.train.lr = 4e-5
    c.train.lr_decay = 0.99  # multiplied after every epoch
    c.train.weight_decay = 0.1
    c.train.grad_clip_norm = ml_collections.FieldReference(None, field_type=float)  # None or 0: off
    c.train.joint_weights = H36M_JOINT_WEIGHTS
    c.train.w_mpjpe = 1.0
    c.train.w_temporal = 0.5
    c.train.w_velocity = 2.0
    c.train.checkpoint_every_epochs = 1
    c.train.keep_checkpoints = 3
    c.train.log_every_steps = 50  # TensorBoard scalars and train_log.jsonl flushes every n steps
    # "first:last" (global steps, 1-based, inclusive): write a jax.profiler trace of those
    # steps to <workdir>/profile (TensorBoard's profile plugin or Perfetto); "" = off
    c.train.profile_steps = ""
    c.train.max_steps_per_epoch = ml_collections.FieldReference(None, field_type=int)
    c.train.report_baselines = False  # print P1/P2 beside closed-form baselines at the end

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 8
    c.eval.flip_tta = True
    return c


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file (as ``config_flags`` would load it)."""
    import importlib.util
    import os

    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location("_rtpca_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} defines no get_config()")
    return module.get_config()
