"""A prepared TFDS dataset as :class:`Sequence` records (``data.source = "tfds"``).

``load_tfds("cmu_mocap", "gs://bucket/tfds", "train")`` reads the dataset's
metadata with TFDS (``builder_from_directory``, through etils.epath), then
every TFRecord shard of the split through :mod:`rtpca_jax.storage`, checking
each record's CRC32C, and decodes examples with the dataset's own feature
spec (``deserialize_example_np``, no tf.data graph).  Sequences come back in
the file source's order (the builders' ``index`` feature), so training from
``tfds`` and from the files gives the same clips, flips and batches.

Each process reads the whole split it uses (every process draws training
clips from every sequence); host memory is what the split's arrays take,
see the README's dataset table.
"""

from __future__ import annotations

import struct
from typing import Iterator, Optional

import numpy as np

from rtpca_jax import storage
from rtpca_jax.data.sources.records import Sequence

_HEADER = struct.Struct("<QI")


def _masked_crc(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecords(path: str) -> Iterator[bytes]:
    """The records of one TFRecord file (any storage path), CRCs checked."""
    data = storage.read_bytes(path)
    pos, n = 0, len(data)
    while pos < n:
        if pos + 12 > n:
            raise ValueError(f"{path}: truncated record header at byte {pos}")
        length, len_crc = _HEADER.unpack_from(data, pos)
        if _masked_crc(data[pos:pos + 8]) != len_crc:
            raise ValueError(f"{path}: corrupt record length at byte {pos}")
        start = pos + 12
        end = start + length
        if end + 4 > n:
            raise ValueError(f"{path}: truncated record at byte {pos} ({length} bytes announced)")
        (data_crc,) = struct.unpack_from("<I", data, end)
        record = data[start:end]
        if _masked_crc(record) != data_crc:
            raise ValueError(f"{path}: corrupt record at byte {pos} (CRC mismatch)")
        yield record
        pos = end + 4


def dataset_dir(name: str, data_dir: str, version: Optional[str] = None) -> str:
    """``<data_dir>/<name>[/<config>]/<version>`` (the newest version when not given)."""
    base = storage.join(data_dir, *name.split("/"))
    if not storage.isdir(base):
        raise ValueError(f"{base}: TFDS dataset {name!r} not found in {data_dir}; build it with "
                         f"python -m rtpca_jax.data.tfds_build {name} --data_dir {data_dir}")
    if version is None:
        versions = [v for v in storage.listdir(base) if v.count(".") == 2 and v.replace(".", "").isdigit()]
        if not versions:
            raise ValueError(f"{base}: no prepared version of {name!r} (expected a folder like 1.1.0)")
        version = max(versions, key=lambda v: tuple(int(x) for x in v.split(".")))
    return storage.join(base, version)


def load_tfds(name: str, data_dir: str, split: str, *, subjects=None, actions=None, downsample: int = 1,
              version: Optional[str] = None) -> list[Sequence]:
    """Sequences of ``split`` of a prepared dataset, in the file source's order."""
    import tensorflow_datasets as tfds

    root = dataset_dir(name, data_dir, version)
    builder = tfds.builder_from_directory(root)
    info = builder.info
    if split not in info.splits:
        raise ValueError(f"{root}: no split {split!r}; splits: {sorted(info.splits)}")
    features = info.features
    if "index" not in features:
        raise ValueError(f"{root}: built by an older version of the builders (no 'index' feature); rebuild "
                         f"with python -m rtpca_jax.data.tfds_build {name} --data_dir {data_dir}")
    examples = []
    for f in info.splits[split].filepaths:
        shard = storage.join(root, f.name)
        for rec in read_tfrecords(shard):
            examples.append(features.deserialize_example_np(rec))
    examples.sort(key=lambda e: int(e["index"]))
    out = []
    for e in examples:
        subject, action = _text(e["subject"]), _text(e["action"])
        if subjects and subject not in subjects:
            continue
        if actions and action not in actions:
            continue
        ds = max(1, int(downsample))
        size = tuple(int(v) for v in e["image_size"])
        intr = np.asarray(e["intrinsics"], np.float32)
        out.append(Sequence(
            subject=subject, action=action, camera=int(e["camera"]),
            pose2d=np.asarray(e["pose2d"], np.float32)[::ds], pose3d=np.asarray(e["pose3d"], np.float32)[::ds],
            trajectory=np.asarray(e["trajectory"], np.float32)[::ds],
            intrinsics=None if not intr.any() else intr, fps=float(e["fps"]) / ds, layout=_text(e["layout"]),
            valid=None if bool(np.all(e["valid"])) else np.asarray(e["valid"], bool)[::ds],
            image_size=None if size == (0, 0) else size,
        ))
    if not out:
        raise ValueError(f"{root}: split {split!r} has no sequences"
                         + (f" for subjects {list(subjects)}" if subjects else "")
                         + (f" and actions {list(actions)}" if actions else ""))
    return out


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)
