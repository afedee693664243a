"""Official RTPCA (TPCA + XLR) on Human3.6M, paper settings, GT 2D keypoints."""

from rtpca_jax.config_lib import base_config


def get_config():
    c = base_config("rtpca")
    c.data.root = "data/h36m"  # data_3d_h36m.npz, data_2d_h36m_gt.npz
    return c
