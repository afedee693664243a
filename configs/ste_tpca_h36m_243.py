"""STE + TPCA (pyramid key/value refinement, no cross-layer refinement) on
Human3.6M, paper settings, GT 2D keypoints."""

from rtpca_jax.config_lib import base_config


def get_config():
    c = base_config("ste_tpca")
    c.data.root = "data/h36m"
    return c
