"""``tfds build datasets/h36m --manual_dir DIR``: Human3.6M (VideoPose3D files)."""
from rtpca_jax.data.tfds_builders import H36m as Builder  # noqa: F401
