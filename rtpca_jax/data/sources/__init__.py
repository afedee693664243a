"""Dataset readers.  One entry point: :func:`load`."""

from __future__ import annotations

from rtpca_jax.data.sources.bvh import load_bvh
from rtpca_jax.data.sources.cmu import load_cmu
from rtpca_jax.data.sources.mpi3dhp import load_mpi_inf_3dhp
from rtpca_jax.data.sources.records import Sequence
from rtpca_jax.data.sources.videopose3d import load_custom, load_h36m, load_humaneva15

_LOADERS = {
    "h36m": load_h36m,
    "humaneva15": load_humaneva15,
    "mpi_inf_3dhp": load_mpi_inf_3dhp,
    "custom": load_custom,
    "bvh": load_bvh,
    "cmu": load_cmu,
}

__all__ = ["Sequence", "load", "NAMES"]
NAMES = tuple(_LOADERS)


def load(name: str, root, keypoints: str = "gt", subjects=None, actions=None, **options) -> list[Sequence]:
    """Read a dataset into :class:`Sequence` records.

    name: ``h36m``, ``humaneva15``, ``mpi_inf_3dhp``, ``custom``, ``bvh`` or
    ``cmu`` (the shipped CMU mocap; ``root`` may be None).  ``options`` go to
    the reader (``downsample``, ``subset``, ...).
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset source {name!r}; known: {list(_LOADERS)}")
    if root is None and name != "cmu":
        raise ValueError(f"dataset source {name!r} needs a root folder")
    return _LOADERS[name](root, keypoints, subjects, actions, **options)
