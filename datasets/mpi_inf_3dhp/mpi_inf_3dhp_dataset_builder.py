"""``tfds build datasets/mpi_inf_3dhp --manual_dir DIR``: MPI-INF-3DHP (MixSTE/P-STMO files)."""
from rtpca_jax.data.tfds_builders import MpiInf3dhp as Builder  # noqa: F401
