"""Official RTPCA on Human3.6M with CPN 2D detections (cpn_ft_h36m_dbb), paper settings.

Put data_3d_h36m.npz and data_2d_h36m_cpn_ft_h36m_dbb.npz in data.root."""

from rtpca_jax.config_lib import base_config


def get_config():
    c = base_config("rtpca")
    c.data.root = "data/h36m"
    c.data.keypoints = "cpn_ft_h36m_dbb"
    return c
