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


class Profile:
    """A ``jax.profiler`` trace of training steps ``first..last`` (global,
    1-based, inclusive) into ``<workdir>/profile``.  The profiler writes local
    files only, so for a remote work directory the trace is written to a
    staging folder and uploaded through :mod:`rtpca_jax.storage` when it stops."""

    def __init__(self, spec: str, workdir: str):
        self.first = self.last = None
        if spec:
            try:
                a, b = (int(v) for v in str(spec).split(":"))
            except ValueError:
                raise ValueError(f"train.profile_steps={spec!r}: expected 'first:last', e.g. '20:25'") from None
            if not 1 <= a <= b:
                raise ValueError(f"train.profile_steps={spec!r}: need 1 <= first <= last")
            self.first, self.last = a, b
        self.target = storage.join(workdir, "profile")
        self._stage = None
        self.active = False

    def before_step(self, step: int) -> None:
        """Call with the 1-based number of the step about to run."""
        if self.first is not None and step == self.first and not self.active:
            import jax

            self._stage = tempfile.mkdtemp(prefix="rtpca-prof-") if storage.is_remote(self.target) else self.target
            storage.makedirs(self._stage)
            jax.profiler.start_trace(self._stage)
            self.active = True

    def after_step(self, step: int, result) -> None:
        """Call after step ``step`` was dispatched, with something it returned."""
        if self.active and step >= self.last:
            self.stop(result)

    def stop(self, result=None) -> None:
        if not self.active:
            return
        import jax

        if result is not None:
            jax.block_until_ready(result)  # the traced steps' device work inside the trace
        jax.profiler.stop_trace()
        self.active = False
        if storage.is_remote(self.target):
            storage.copy_tree(self._stage, self.target)
            shutil.rmtree(self._stage, ignore_errors=True)

