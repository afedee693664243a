"""RTPCA on MPI-INF-3DHP (17 joints in 3DHP order, pelvis 14), paper model
settings; train S1-S8, test TS1-TS6 (valid frames only).

Put data_train_3dhp.npz and data_test_3dhp.npz (MixSTE / P-STMO layout) in data.root."""

from rtpca_jax.config_lib import base_config
from rtpca_jax.data.sources.mpi3dhp import TEST_SUBJECTS, TRAIN_SUBJECTS


def get_config():
    c = base_config("rtpca")
    c.data.source = "mpi_inf_3dhp"
    c.data.root = "data/3dhp"
    c.data.train_subjects = TRAIN_SUBJECTS
    c.data.test_subjects = TEST_SUBJECTS
    return c
