"""Building blocks of the experiment configs in ``configs/``.

An experiment config is a ``ConfigDict`` with sections ``model`` (see
``rtpca_jax.model.default_config``), ``data``, ``train`` and ``eval``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import ml_collections

from rtpca_jax.model.spec import default_config as default_model_config

def base_config(variant: str = "rtpca") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = default_model_config()  # the paper's model size (C 512, depth 8, 243 frames)
    c.model.variant = variant

    c.data = ml_collections.ConfigDict()
    c.data.source = "h36m"  # h36m | humaneva15 | mpi_inf_3dhp | cmu | bvh | tfds
    c.data.root = "data"  # where the user keeps the dataset files (local or gs://)
    c.data.tfds_name = ""  # source "tfds": a prepared dataset, e.g. "h36m/gt", "cmu_mocap"
    c.data.tfds_data_dir = ""  # source "tfds": its data_dir (local or gs://)
    c.data.keypoints = "gt"  # 2D keypoints file suffix (h36m / humaneva)
    # "subjects": train on data.train_subjects, test on data.test_subjects (both named);
    # "builtin": the split the data carries (source "cmu": the shipped clip split;
    # "tfds": the dataset's own train and test splits, whole)
    c.data.split = "subjects"
    c.data.train_subjects = ("S1", "S5", "S6", "S7", "S8")  # subjects (clip names for "cmu")
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
    # > 0: keep a moving average of the weights (train_lib.ema_update), evaluated, kept as the
    # best checkpoint's metric and exported instead of the last step's weights; 0: off (official)
    c.train.ema_decay = 0.0
    # one loss weight per joint; None: the data's joint layout's (rtpca_jax/data/skeleton.py)
    c.train.joint_weights = ml_collections.FieldReference(None, field_type=tuple)
    c.train.w_mpjpe = 1.0
    c.train.w_temporal = 0.5
    c.train.w_velocity = 2.0
    c.train.checkpoint_every_epochs = 1
    c.train.keep_checkpoints = 3
    c.train.log_every_steps = 50  # TensorBoard loss/lr scalars and train_log.jsonl flushes every n steps
    # "first:last" (global steps, 1-based, inclusive): write a jax.profiler trace of those
    # steps to <workdir>/profile (TensorBoard's profile plugin or Perfetto); "" = off
    c.train.profile_steps = ""
    c.train.max_steps_per_epoch = ml_collections.FieldReference(None, field_type=int)
    c.train.report_baselines = False  # print P1/P2 beside closed-form baselines at the end
    # train.py and experiments on a host without an accelerator: split the CPU into this many JAX devices and train
    # data-parallel over them (runtime.split_cpu; 0 = JAX's one CPU device; no effect on GPUs/TPUs)
    c.train.cpu_devices = 0

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 8
    c.eval.flip_tta = True
    return c


def load_config_file(path: str, overrides: Sequence[str] = (), *, lock: bool = True) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file with dotted overrides
    (``"train.num_epochs=2"``), through ``ml_collections.config_flags``
    exactly as ``train.py --config=FILE --config.train.num_epochs=2`` reads
    it; locked (a misspelt field is an error) unless ``lock=False``.

    Raises:
      ValueError: the file is missing or defines no ``get_config()``, or an
        override names an unknown field or a value of the wrong type.
    """
    import os

    from absl import flags
    from ml_collections import config_flags

    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    argv = ["rtpca", f"--config={path}"] + [f"--config.{o}" for o in overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "experiment config", flag_values=fv, lock_config=lock,
                                    sys_argv=argv)
    try:
        fv(argv)
        cfg = fv.config
    except (AttributeError, KeyError, TypeError, OSError, flags.Error) as e:
        where = f" ({' '.join(argv[2:])})" if overrides else ""
        msg = e
        while isinstance(msg, BaseException):  # ml_collections wraps a KeyError in an AttributeError
            msg = msg.args[0] if msg.args else str(msg)
        msg = str(msg).strip()
        if isinstance(e, (AttributeError, KeyError)):
            msg = f"unknown field {msg.strip(chr(39))}"
        raise ValueError(f"config {path}{where}: {msg}".replace("'\n", "; ")) from None
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ValueError(f"config file {path!r}: get_config() returned {type(cfg).__name__}, not a ConfigDict")
    return cfg


def split_config_args(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """``(files, overrides, rest)`` of a command line: ``--config FILE`` /
    ``--config=FILE`` (repeatable), ``--config.section.key=VALUE`` (or with the
    value as the next word), and everything else in order.  The commands
    with argparse options of their own (bench, experiments, convert, summary)
    take their config this way, so every command reads configs through
    :func:`load_config_file` with the same dotted overrides as ``train.py``."""
    files: list[str] = []
    overrides: list[str] = []
    rest: list[str] = []
    it = iter(argv)
    for a in it:
        name, eq, value = a.partition("=")
        if name == "--config" or name.startswith("--config."):
            if not eq:
                value = next(it, None)
                if value is None or value.startswith("--"):
                    raise ValueError(f"{a}: expected a value ({a}=VALUE)")
            if name == "--config":
                files.append(value)
            else:
                overrides.append(f"{name[len('--config.'):]}={value}")
        else:
            rest.append(a)
    return files, overrides, rest


class CommandLine(NamedTuple):
    args: Any  # the argparse namespace of the command's own options
    files: list[str]  # the --config files, in order
    overrides: list[str]  # "section.key=value", applied to every file
    configs: list[ml_collections.ConfigDict]  # each file loaded with the overrides


def parse_command_line(parser, argv: Optional[Sequence[str]] = None, *, min_configs: int = 1,
                       max_configs: int = 1) -> CommandLine:
    """An argparse command's line with ``--config`` words in it: the config
    files are loaded (checked) here, as ``train.py`` loads its one.

    Raises:
      ValueError: too few or too many ``--config`` files, overrides without a
        file, or a file or override :func:`load_config_file` refuses.
    """
    import sys

    files, overrides, rest = split_config_args(sys.argv[1:] if argv is None else argv)
    if not min_configs <= len(files) <= max_configs:
        want = f"{min_configs}" if min_configs == max_configs else f"{min_configs} to {max_configs}"
        raise ValueError(f"expected {want} --config FILE, got {len(files)}")
    if overrides and not files:
        raise ValueError(f"--config.{overrides[0]}: an override needs a --config FILE")
    args = parser.parse_args(rest)
    return CommandLine(args, files, overrides, [load_config_file(f, overrides) for f in files])


SOURCES = ("h36m", "humaneva15", "mpi_inf_3dhp", "cmu", "bvh", "custom", "tfds")
SPLITS = ("subjects", "builtin")
BUILTIN_SPLIT_SOURCES = ("cmu", "tfds")


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
    need(d.split in SPLITS, "data.split", f"one of {SPLITS}")
    need(d.split != "builtin" or d.source in BUILTIN_SPLIT_SOURCES, "data.split",
         f'"subjects" with data.source={d.source!r} (only {BUILTIN_SPLIT_SOURCES} carry a built-in split)')
    for key in ("train_subjects", "test_subjects"):
        need(isinstance(d[key], (tuple, list)) and all(isinstance(x, str) for x in d[key]),
             f"data.{key}", "a tuple of names")
        need(d.split != "subjects" or len(d[key]) > 0, f"data.{key}",
             'at least one name with data.split="subjects"')
    for key in ("batch_size", "num_epochs", "checkpoint_every_epochs", "keep_checkpoints", "log_every_steps"):
        positive_int(f"train.{key}")
    positive_int("train.max_steps_per_epoch", optional=True)
    need(isinstance(t.cpu_devices, int) and t.cpu_devices >= 0, "train.cpu_devices",
         "0 (one CPU device) or a number of CPU devices")
    need(t.lr > 0, "train.lr", "a positive learning rate")
    need(0 < t.lr_decay <= 1, "train.lr_decay", "a factor in (0, 1]")
    need(t.weight_decay >= 0, "train.weight_decay", "a non-negative number")
    need(0 <= t.ema_decay < 1, "train.ema_decay", "0 (off) or a decay in (0, 1)")
    need(t.grad_clip_norm is None or t.grad_clip_norm >= 0, "train.grad_clip_norm", "None, 0 (off) or a positive norm")
    for key in ("w_mpjpe", "w_temporal", "w_velocity"):
        need(t[key] >= 0, f"train.{key}", "a non-negative loss weight")
    need(t.joint_weights is None or (len(t.joint_weights) == spec.num_joints and all(w >= 0 for w in t.joint_weights)),
         "train.joint_weights", f"None (the joint layout's) or {spec.num_joints} non-negative weights, one per joint")
    positive_int("eval.batch_size")
