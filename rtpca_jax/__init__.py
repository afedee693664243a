"""rtpca-jax: RTPCA / MixSTE video 3D human pose estimation in JAX and Flax."""

import os as _os

# Every path goes through rtpca_jax.storage (etils.epath).  For gs:// / s3://
# etils picks TensorFlow's gfile whenever TensorFlow is installed; we want its
# fsspec backend (gcsfs), which honours STORAGE_EMULATOR_HOST and the usual
# Google credentials.  Must be set before etils first resolves a URI.
_os.environ.setdefault("EPATH_USE_TF", "false")

__version__ = "0.1.0"
