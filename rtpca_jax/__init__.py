"""rtpca-jax: RTPCA / MixSTE video 3D human pose estimation in JAX and Flax."""

__version__ = "0.1.0"
