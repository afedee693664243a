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


SOURCES = ("h36m", "humaneva15", "mpi_inf_3dhp", "cmu", "bvh", "custom", "tfds")


def validate(config: ml_collections.ConfigDict) -> None:
    """Check the ``data``, ``train`` and ``eval`` sections of an experiment
    config (the ``model`` section is checked by ``model.spec.resolve``).

    Raises:
      ValueError: naming the field, its value and what was expected.
    """
    from rtpca_jax.model.spec import resolve

    spec = resolve(config.model)

    def need(cond: bool, field: str, expected: str) -> None:
        if not cond:
            section, key = field.split(".")
            raise ValueError(f"{field}={config[section][key]!r}: expected {expected}")

    def positive_int(field: str, optional: bool = False) -> None:
        section, key = field.split(".")
        v = config[section][key]
        ok = (optional and v is None) or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)
        need(ok, field, "a positive integer" + (" or None" if optional else ""))

    d, t = config.data, config.train
    need(d.source in SOURCES, "data.source", f"one of {SOURCES}")
    need(d.source != "tfds" or bool(d.tfds_name), "data.tfds_name", 'a dataset name with data.source="tfds"')
    positive_int("data.downsample")
    positive_int("data.clip_stride", optional=True)
    for key in ("train_subjects", "test_subjects"):
        need(isinstance(d[key], (tuple, list)) and all(isinstance(x, str) for x in d[key]),
             f"data.{key}", "a tuple of names (empty: the source's own split)")
    for key in ("batch_size", "num_epochs", "checkpoint_every_epochs", "keep_checkpoints", "log_every_steps"):
        positive_int(f"train.{key}")
    positive_int("train.max_steps_per_epoch", optional=True)
    need(t.lr > 0, "train.lr", "a positive learning rate")
    need(0 < t.lr_decay <= 1, "train.lr_decay", "a factor in (0, 1]")
    need(t.weight_decay >= 0, "train.weight_decay", "a non-negative number")
    need(t.grad_clip_norm is None or t.grad_clip_norm >= 0, "train.grad_clip_norm", "None, 0 (off) or a positive norm")
    for key in ("w_mpjpe", "w_temporal", "w_velocity"):
        need(t[key] >= 0, f"train.{key}", "a non-negative loss weight")
    need(len(t.joint_weights) == spec.num_joints and all(w >= 0 for w in t.joint_weights),
         "train.joint_weights", f"{spec.num_joints} non-negative weights, one per joint of the model")
    positive_int("eval.batch_size")
