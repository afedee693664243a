"""tensorflow-datasets builders: one example per sequence and camera.

The user's files are read from TFDS's manual directory
(``~/tensorflow_datasets/downloads/manual`` or ``--manual_dir``); the shipped
CMU data needs none.  Thin entry modules for ``tfds build`` live in
``datasets/<name>/``.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from rtpca_jax.data import sources
from rtpca_jax.data.sources import cmu, mpi3dhp, videopose3d


def _features(joints: int) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
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
    })


def _example(s: sources.Sequence) -> tuple[str, dict]:
    t = s.num_frames
    return s.key, {
        "subject": s.subject, "action": s.action, "camera": s.camera, "fps": s.fps, "layout": s.layout,
        "pose2d": s.pose2d.astype(np.float32), "pose3d": s.pose3d.astype(np.float32),
        "trajectory": s.trajectory.astype(np.float32),
        "intrinsics": np.zeros(9, np.float32) if s.intrinsics is None else s.intrinsics.astype(np.float32),
        "valid": np.ones(t, bool) if s.valid is None else s.valid,
    }


def _split(seqs, train_subjects, test_subjects):
    return {
        "train": [s for s in seqs if s.subject in train_subjects],
        "test": [s for s in seqs if s.subject in test_subjects],
    }


class _PoseBuilder(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
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
        for s in seqs:
            yield _example(s)


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


