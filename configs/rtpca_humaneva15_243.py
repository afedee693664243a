"""RTPCA on HumanEva-I (15 joints), paper model settings; the customary split:
train Train/S1-S3, test Validate/S1-S3, actions Walk, Jog, Box.

Put data_3d_humaneva15.npz and data_2d_humaneva15_gt.npz in data.root."""

from rtpca_jax.config_lib import base_config
from rtpca_jax.data.sources.videopose3d import (HUMANEVA_ACTIONS, HUMANEVA_TEST_SUBJECTS,
                                                HUMANEVA_TRAIN_SUBJECTS)


def get_config():
    c = base_config("rtpca")
    c.model.num_joints = 15
    c.data.source = "humaneva15"
    c.data.root = "data/humaneva"
    c.data.train_subjects = HUMANEVA_TRAIN_SUBJECTS
    c.data.test_subjects = HUMANEVA_TEST_SUBJECTS
    c.data.actions = HUMANEVA_ACTIONS
    return c
