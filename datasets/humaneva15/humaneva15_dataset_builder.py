"""``tfds build datasets/humaneva15 --manual_dir DIR``: HumanEva-I (VideoPose3D files)."""
from rtpca_jax.data.tfds_builders import Humaneva15 as Builder  # noqa: F401
