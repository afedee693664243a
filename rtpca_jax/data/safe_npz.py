"""Reading ``.npz`` files whose arrays hold pickled objects, without running
code from them.

The standard preprocessed pose files (VideoPose3D, MixSTE / P-STMO) store
nested dicts as pickled object arrays; ``np.load(allow_pickle=True)`` would
execute whatever a hostile file asks for.  Here pickles go through an
unpickler that admits only numpy arrays, dtypes and scalars and the builtin
containers; anything else is refused with ``ValueError``.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np

from rtpca_jax import storage

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.dtypes", None),  # any numpy.dtypes.*DType class
    ("_codecs", "encode"),  # bytes written by protocol-2 pickles
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytes"),
    ("builtins", "bytearray"),
    ("builtins", "str"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "complex"),
    ("builtins", "bool"),
    ("collections", "OrderedDict"),
}


class UnsafePickleError(ValueError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, origin: str):
        super().__init__(file, encoding="latin1")
        self._origin = origin

    def find_class(self, module, name):
        if (module, name) in _ALLOWED or (module, None) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._origin}: refusing to load {module}.{name} from a pickle; only numpy arrays, "
            f"dtypes, dicts, lists, tuples, strings and numbers are allowed in pose files"
        )


def _read_member(zf: zipfile.ZipFile, member: str, origin: str) -> np.ndarray:
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if dtype.hasobject:
            try:
                return _RestrictedUnpickler(f, origin).load()
            except UnsafePickleError:
                raise
            except Exception as e:  # truncated or malformed pickle
                raise ValueError(f"{origin}: cannot read pickled array: {e}") from e
    with zf.open(member) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def load_npz(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file; object arrays are unpickled safely.

    Raises ``ValueError`` naming the file when it is missing, not an npz, lacks
    a key of ``required``, or holds a pickle that references anything beyond
    numpy arrays and builtin containers.
    """
    path = os.fspath(path)
    if not storage.isfile(path):
        raise ValueError(f"{path}: file not found")
    out = {}
    with storage.open_binary(path) as fh:
        try:
            zf = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"{path}: not an .npz archive ({e})") from e
        with zf:
            for member in zf.namelist():
                if not member.endswith(".npy"):
                    continue
                out[member[:-4]] = _read_member(zf, member, f"{path}[{member[:-4]}]")
    missing = [k for k in required if k not in out]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; found {sorted(out)}")
    return out


def item(arr: np.ndarray, origin: str):
    """The Python object inside a 0-d object array (``arr.item()``), checked."""
    if isinstance(arr, np.ndarray) and arr.dtype == object and arr.shape == ():
        return arr.item()
    if isinstance(arr, (dict, list, tuple)):
        return arr
    raise ValueError(f"{origin}: expected a pickled dict (0-d object array), got {type(arr).__name__} "
                     f"{getattr(arr, 'dtype', '')} {getattr(arr, 'shape', '')}")


def save_npz_deterministic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write an ``.npz`` (deflate) whose bytes depend on the arrays alone: fixed
    member order and timestamps, no pickles.  Written to a temporary file and
    renamed, so an existing file is never left half-written."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name], order="C"), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)
    storage.write_bytes(path, out.getvalue())
