"""Official RTPCA (TPCA + XLR) on Human3.6M, paper settings, GT 2D keypoints."""

from rtpca_jax.config_lib import base_config


def get_config():
    return base_config("rtpca")
