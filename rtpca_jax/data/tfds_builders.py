"""tensorflow-datasets builders: one example per sequence and camera.

The user's files are read from TFDS's manual directory (``--manual_dir``,
local or ``gs://``); the shipped CMU data needs none.  Build with our command
(TFDS's own ``tfds build`` imports Apache Beam at start-up, which these
builders do not need)::

    python -m rtpca_jax.data.tfds_build cmu_mocap --data_dir gs://bucket/tfds
    python -m rtpca_jax.data.tfds_build h36m/gt --data_dir gs://bucket/tfds --manual_dir gs://bucket/h36m

A remote ``--data_dir`` is built in a local temporary folder, then uploaded
through :mod:`rtpca_jax.storage` (TFDS writes its shards with TensorFlow's
file layer).  Every example carries ``index``, its position in the split as
the file source lists it, so :mod:`rtpca_jax.data.tfds_source` restores the
file source's order (TFDS shuffles examples when it writes them).  Thin entry
modules for ``tfds`` tools live in ``datasets/<name>/``.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from rtpca_jax.data import sources
from rtpca_jax.data.sources import cmu, mpi3dhp, videopose3d


def _features(joints: int) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "index": np.int64,
        "subject": tfds.features.Text(),
        "action": tfds.features.Text(),
        "camera": np.int32,
        "fps": np.float32,
        "layout": tfds.features.Text(),
        "pose2d": tfds.features.Tensor(shape=(None, joints, 2), dtype=np.float32),
        "pose3d": tfds.features.Tensor(shape=(None, joints, 3), dtype=np.float32),
        "trajectory": tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
        "intrinsics": tfds.features.Tensor(shape=(9,), dtype=np.float32),
        "valid": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
        "image_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
    })


def _example(index: int, s: sources.Sequence) -> tuple[str, dict]:
    t = s.num_frames
    return s.key, {
        "index": index, "subject": s.subject, "action": s.action, "camera": s.camera, "fps": s.fps, "layout": s.layout,
        "pose2d": s.pose2d.astype(np.float32), "pose3d": s.pose3d.astype(np.float32),
        "trajectory": s.trajectory.astype(np.float32),
        "intrinsics": np.zeros(9, np.float32) if s.intrinsics is None else s.intrinsics.astype(np.float32),
        "valid": np.ones(t, bool) if s.valid is None else s.valid,
        "image_size": np.zeros(2, np.int32) if s.image_size is None else np.asarray(s.image_size, np.int32),
    }


def _split(seqs, train_subjects, test_subjects):
    return {
        "train": [s for s in seqs if s.subject in train_subjects],
        "test": [s for s in seqs if s.subject in test_subjects],
    }


class _PoseBuilder(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "First release.",
                     "1.1.0": "index (the file source's order) and image_size features."}
    JOINTS = 17
    DESCRIPTION = ""

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(description=self.DESCRIPTION,
                                              features=_features(self.JOINTS))

    def _load(self, manual_dir) -> dict[str, list]:
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        splits = self._load(dl_manager.manual_dir if self.MANUAL_DOWNLOAD_INSTRUCTIONS else None)
        return {name: self._generate_examples(seqs) for name, seqs in splits.items()}

    def _generate_examples(self, seqs):
        for i, s in enumerate(seqs):
            yield _example(i, s)


class H36m(_PoseBuilder):
    """Human3.6M from the VideoPose3D files (one config per 2D keypoints file)."""

    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=k) for k in ("gt", "cpn_ft_h36m_dbb", "detectron_ft_h36m")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place data_3d_h36m.npz and data_2d_h36m_<keypoints>.npz (VideoPose3D layout) in the manual dir.")
    DESCRIPTION = "Human3.6M, 17 joints, 4 cameras; train S1,S5,S6,S7,S8, test S9,S11."

    def _load(self, manual_dir):
        seqs = sources.load("h36m", manual_dir, keypoints=self.builder_config.name)
        return _split(seqs, videopose3d.H36M_TRAIN_SUBJECTS, videopose3d.H36M_TEST_SUBJECTS)


class Humaneva15(_PoseBuilder):
    """HumanEva-I, 15 joints, from the VideoPose3D files."""

    JOINTS = 15
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place data_3d_humaneva15.npz and data_2d_humaneva15_gt.npz (VideoPose3D layout) in the manual dir.")
    DESCRIPTION = "HumanEva-I, 15 joints, 3 cameras; train Train/S1-S3, test Validate/S1-S3; Walk, Jog, Box."

    def _load(self, manual_dir):
        seqs = sources.load("humaneva15", manual_dir, actions=videopose3d.HUMANEVA_ACTIONS)
        return _split(seqs, videopose3d.HUMANEVA_TRAIN_SUBJECTS, videopose3d.HUMANEVA_TEST_SUBJECTS)


class MpiInf3dhp(_PoseBuilder):
    """MPI-INF-3DHP from the MixSTE / P-STMO preprocessed files."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "Place data_train_3dhp.npz and data_test_3dhp.npz in the manual dir."
    DESCRIPTION = "MPI-INF-3DHP, 17 joints (3DHP order, pelvis 14); train S1-S8, test TS1-TS6 with valid flags."

    def _load(self, manual_dir):
        seqs = sources.load("mpi_inf_3dhp", manual_dir)
        return _split(seqs, mpi3dhp.TRAIN_SUBJECTS, mpi3dhp.TEST_SUBJECTS)


class CmuMocap(_PoseBuilder):
    """The shipped CMU motion capture filmed by four virtual cameras."""

    DESCRIPTION = "CMU mocap clips, H36M 17 joints, 60 fps, 4 virtual cameras; split by clip."

    def _load(self, manual_dir):
        del manual_dir
        seqs = sources.load("cmu", None)
        train, test = cmu.train_test_subjects()
        return _split(seqs, train, test)


BUILDERS = {"h36m": H36m, "humaneva15": Humaneva15, "mpi_inf_3dhp": MpiInf3dhp, "cmu_mocap": CmuMocap}


def build(name: str, data_dir: str, manual_dir=None) -> str:
    """Prepare dataset ``name`` (``h36m/gt``, ``cmu_mocap``, ...) under
    ``data_dir`` (local or remote); returns the dataset's version folder."""
    import tempfile

    from rtpca_jax import storage

    base, _, config = name.partition("/")
    if base not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(BUILDERS)} (h36m takes a config: "
                         f"h36m/gt, h36m/cpn_ft_h36m_dbb, h36m/detectron_ft_h36m)")
    cls = BUILDERS[base]
    kw = {"config": config} if config else {}
    if cls.MANUAL_DOWNLOAD_INSTRUCTIONS:
        if manual_dir is None:
            raise ValueError(f"{name}: pass --manual_dir, the folder holding your files. "
                             f"{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        storage.check_reachable(manual_dir, what="manual_dir")
        if not storage.isdir(manual_dir):
            raise ValueError(f"{manual_dir}: manual_dir not found. {cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    dl = tfds.download.DownloadConfig(manual_dir=None if manual_dir is None else storage.normalize(manual_dir))
    if not storage.is_remote(data_dir):
        b = cls(data_dir=storage.normalize(data_dir), **kw)
        b.download_and_prepare(download_config=dl)
        return str(b.data_dir)
    storage.check_reachable(data_dir, what="data_dir")
    with tempfile.TemporaryDirectory(prefix="rtpca-tfds-") as stage:
        b = cls(data_dir=stage, **kw)
        b.download_and_prepare(download_config=dl)
        rel = str(b.data_dir)[len(stage) + 1:]
        target = storage.join(data_dir, rel)
        storage.rmtree(target)
        storage.copy_tree(str(b.data_dir), target)
    return target
