"""``tfds build datasets/cmu_mocap``: the CMU mocap clips shipped inside the package."""
from rtpca_jax.data.tfds_builders import CmuMocap as Builder  # noqa: F401
