"""TensorBoard scalars (TensorFlow's own ``tf.summary``) and jax.profiler
traces, to any path.

Both writers take local folders only, so each writes into a
:class:`rtpca_jax.storage.StagedDir`: the target itself when local; for a
remote one (``gs://...``) a local folder uploaded whole at every flush
(TensorFlow's GCS writer also re-uploads an event file on every flush: object
stores cannot append).  This keeps all remote traffic on the one path layer
that the tests run against a GCS emulator.
"""

from __future__ import annotations

from rtpca_jax import storage


class EventWriter:
    def __init__(self, logdir: str):
        from rtpca_jax.data.pipeline import _tf

        self._dir = storage.StagedDir(logdir, prefix="rtpca-tb-")
        self._tf = _tf()
        self._writer = self._tf.summary.create_file_writer(self._dir.path)

    def scalar(self, tag: str, value: float, step: int) -> None:
        with self._writer.as_default():
            self._tf.summary.scalar(tag, float(value), step=int(step))

    def flush(self) -> None:
        self._writer.flush()
        self._dir.sync()

    def close(self) -> None:
        self._writer.close()
        self._dir.close()


class Profile:
    """A ``jax.profiler`` trace of training steps ``first..last`` (global,
    1-based, inclusive) into ``<workdir>/profile``."""

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
        self._dir = None

    def before_step(self, step: int) -> None:
        """Call with the 1-based number of the step about to run."""
        if self.first is not None and step == self.first and self._dir is None:
            import jax

            self._dir = storage.StagedDir(self.target, prefix="rtpca-prof-")
            jax.profiler.start_trace(self._dir.path)

    def after_step(self, step: int, result) -> None:
        """Call after step ``step`` was dispatched, with something it returned."""
        if self._dir is not None and step >= self.last:
            self.stop(result)

    def stop(self, result=None) -> None:
        if self._dir is None:
            return
        import jax

        if result is not None:
            jax.block_until_ready(result)  # the traced steps' device work inside the trace
        jax.profiler.stop_trace()
        self._dir.close()
        self._dir = None
        self.first = None  # once per run
