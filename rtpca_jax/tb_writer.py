"""TensorBoard scalars written by TensorFlow's own ``tf.summary``, to any path.

Local work directories get the event file directly.  For a remote one
(``gs://...``) the event file is written in a local staging folder and
uploaded whole through :mod:`rtpca_jax.storage` at every :meth:`flush`
(TensorFlow's GCS writer also re-uploads an event file on every flush: object
stores cannot append).  This keeps all remote traffic on the one path layer
that the tests run against a GCS emulator.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from rtpca_jax import storage


class EventWriter:
    def __init__(self, logdir: str):
        from rtpca_jax.data.pipeline import _tf

        self.logdir = storage.normalize(logdir)
        self._remote = storage.is_remote(self.logdir)
        self._stage = tempfile.mkdtemp(prefix="rtpca-tb-") if self._remote else self.logdir
        storage.makedirs(self._stage)
        self._tf = _tf()
        self._writer = self._tf.summary.create_file_writer(self._stage)

    def scalar(self, tag: str, value: float, step: int) -> None:
        with self._writer.as_default():
            self._tf.summary.scalar(tag, float(value), step=int(step))

    def flush(self) -> None:
        self._writer.flush()
        if self._remote:
            for name in sorted(os.listdir(self._stage)):
                with open(os.path.join(self._stage, name), "rb") as f:
                    storage.write_bytes(storage.join(self.logdir, name), f.read())

    def close(self) -> None:
        self.flush()
        self._writer.close()
        if self._remote:
            shutil.rmtree(self._stage, ignore_errors=True)
