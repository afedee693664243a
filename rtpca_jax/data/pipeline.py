"""tf.data input pipeline: sequences -> training clips -> flip -> batches.

Training clips
    Every sequence is cut into clips of ``F`` frames starting at
    ``0, s, 2s, ...`` (stride ``s``, default ``F``: non-overlapping) plus one
    right-aligned clip ending on the last frame, so every frame is covered each
    epoch.  A sequence shorter than ``F`` gives one clip, edge-padded at the end.
Order
    Per epoch, a permutation of all clips drawn from ``(seed, epoch)``; the
    random horizontal flips (probability 0.5, 2D and 3D together: negate x,
    swap left/right joints) are drawn from the same generator.  Incomplete
    global batches are dropped.  Global batch ``k`` is clips
    ``perm[k*B:(k+1)*B]``; process ``p`` of ``P`` reads rows ``[p*B/P,
    (p+1)*B/P)`` of it and nothing else.
Resuming
    The position is ``(epoch, step)``: ``dataset.epoch(e, start_step=k)`` yields
    exactly the batches ``k, k+1, ...`` an uninterrupted epoch ``e`` would.
Evaluation clips
    are cut by :mod:`rtpca_jax.evaluation` from the same :func:`clip_starts`.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence as Seq

import numpy as np

from rtpca_jax.data.skeleton import flip_pose, get_layout
from rtpca_jax.data.sources.records import Sequence


def _tf():
    import tensorflow as tf

    # tf.data only; never let TensorFlow take an accelerator from JAX.
    try:
        tf.config.set_visible_devices([], "GPU")
        tf.config.set_visible_devices([], "TPU")
    except (RuntimeError, ValueError):
        pass
    return tf


MAP_THREADS = max(1, min(4, (os.cpu_count() or 2) // 2))  # parallel batch gathers per process


def clip_starts(length: int, frames: int, stride: Optional[int] = None) -> np.ndarray:
    """Clip starts covering every frame of a sequence of ``length`` frames."""
    stride = stride or frames
    if length <= frames:
        return np.zeros(1, np.int64)
    starts = list(range(0, length - frames + 1, stride))
    if starts[-1] != length - frames:
        starts.append(length - frames)
    return np.asarray(starts, np.int64)


class ClipDataset:
    """Training clips of a list of sequences (all with 3D) for one process.

    ``batch_size`` is global; each of ``process_count`` processes gets
    ``batch_size // process_count`` rows of every batch.
    """

    def __init__(self, sequences: Seq[Sequence], num_frames: int, batch_size: int, *, seed: int = 0,
                 flip: bool = True, stride: Optional[int] = None, process_index: Optional[int] = None,
                 process_count: Optional[int] = None):
        if not sequences:
            raise ValueError("no training sequences")
        layouts = {s.layout for s in sequences}
        if len(layouts) != 1:
            raise ValueError(f"sequences mix joint layouts {sorted(layouts)}")
        missing = [s.key for s in sequences if s.pose3d is None]
        if missing:
            raise ValueError(f"training needs 3D poses; these sequences have none: {missing[:5]}")
        if process_index is None or process_count is None:
            import jax

            process_index, process_count = jax.process_index(), jax.process_count()
        if batch_size % process_count:
            raise ValueError(f"global batch {batch_size} is not divisible by {process_count} processes")
        self.layout = get_layout(layouts.pop())
        self.num_frames = num_frames
        self.batch_size = batch_size
        self.local_batch = batch_size // process_count
        self.process_index = process_index
        self.process_count = process_count
        self.seed = seed
        self.flip = flip
        lengths = np.array([s.num_frames for s in sequences], np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self._lengths = lengths
        self._pose2d = np.concatenate([s.pose2d for s in sequences]).astype(np.float32)
        self._pose3d = np.concatenate([s.pose3d for s in sequences]).astype(np.float32)
        seq_idx, starts = [], []
        for i, n in enumerate(lengths):
            st = clip_starts(int(n), num_frames, stride)
            seq_idx.append(np.full(len(st), i, np.int64))
            starts.append(st)
        self._clip_seq = np.concatenate(seq_idx)
        self._clip_start = np.concatenate(starts)
        self.num_clips = len(self._clip_seq)
        self.steps_per_epoch = self.num_clips // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.num_clips} clips are fewer than one batch of {batch_size}")
        self._tensors = None

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Global clip order and flip flags of an epoch (deterministic)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.num_clips)
        flips = rng.random(self.num_clips) < 0.5 if self.flip else np.zeros(self.num_clips, bool)
        n = self.steps_per_epoch * self.batch_size
        return order[:n], flips[order[:n]]

    def local_indices(self, epoch: int, start_step: int = 0) -> tuple[np.ndarray, np.ndarray]:
        order, flips = self.epoch_plan(epoch)
        order = order.reshape(self.steps_per_epoch, self.batch_size)
        flips = flips.reshape(self.steps_per_epoch, self.batch_size)
        lo = self.process_index * self.local_batch
        sl = slice(lo, lo + self.local_batch)
        return order[start_step:, sl].reshape(-1), flips[start_step:, sl].reshape(-1)

    def gather_numpy(self, clips: np.ndarray, flips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The same clips as the tf.data path, in numpy (for checks and eval)."""
        idx = self._frame_index(clips)
        p2, p3 = self._pose2d[idx], self._pose3d[idx]
        m = flips[:, None, None, None]
        return (np.where(m, flip_pose(p2, self.layout), p2).astype(p2.dtype),
                np.where(m, flip_pose(p3, self.layout), p3).astype(p3.dtype))

    def _frame_index(self, clips):
        seq = self._clip_seq[clips]
        t = self._clip_start[clips][:, None] + np.arange(self.num_frames)[None]
        t = np.minimum(t, self._lengths[seq][:, None] - 1)
        return self._offsets[seq][:, None] + t

    def epoch(self, epoch: int, start_step: int = 0, prefetch: int = 2):
        """tf.data.Dataset of local batches ``(pose2d[b,F,J,2], pose3d[b,F,J,3])``
        for steps ``start_step ..`` of ``epoch``."""
        tf = _tf()
        if self._tensors is None:
            self._tensors = (
                tf.constant(self._pose2d), tf.constant(self._pose3d),
                tf.constant(self._clip_seq), tf.constant(self._clip_start),
                tf.constant(self._offsets), tf.constant(self._lengths),
                tf.constant(self.layout.flip_permutation.astype(np.int64)),
            )
        pose2d, pose3d, clip_seq, clip_start, offsets, lengths, perm = self._tensors
        frames = self.num_frames
        clips, flips = self.local_indices(epoch, start_step)

        def gather(c, f):
            seq = tf.gather(clip_seq, c)
            t = tf.gather(clip_start, c)[:, None] + tf.range(frames, dtype=tf.int64)[None]
            t = tf.minimum(t, tf.gather(lengths, seq)[:, None] - 1)
            idx = tf.gather(offsets, seq)[:, None] + t
            p2, p3 = tf.gather(pose2d, idx), tf.gather(pose3d, idx)
            fm = f[:, None, None, None]
            p2 = tf.where(fm, tf.gather(p2, perm, axis=2) * tf.constant([-1.0, 1.0]), p2)
            p3 = tf.where(fm, tf.gather(p3, perm, axis=2) * tf.constant([-1.0, 1.0, 1.0]), p3)
            return p2, p3

        ds = tf.data.Dataset.from_tensor_slices((clips, flips))
        ds = ds.batch(self.local_batch, drop_remainder=True)
        ds = ds.map(gather, num_parallel_calls=MAP_THREADS, deterministic=True)
        # No autotuning: its model thread made deleting an epoch's iterator
        # wait for the thread's next wake-up, 30-48 s at some epoch ends on a
        # 2-core host (README, "How long the main job took").  The gather is
        # a few ms per batch, so fixed parallelism loses nothing.
        opts = tf.data.Options()
        opts.autotune.enabled = False
        return ds.prefetch(prefetch).with_options(opts)
