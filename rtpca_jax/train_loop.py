"""The training loop behind ``train.py``: data, steps, evaluation, checkpoints,
resumption, preemption, logs and plots.

Work directory layout::

    checkpoints/        Orbax checkpoints (latest K + best by validation MPJPE)
    train_log.jsonl     one line per training step: step, epoch, loss, lr
    history.json        one record per epoch: losses, validation P1/P2/MPJVE, and
                        where the time went (train_s: the epoch's steps; eval_s:
                        its evaluation; elapsed_s: seconds since this process
                        began the run, data loading and set-up included)
    tb/                 TensorBoard event files
    training_curve.png  loss and validation MPJPE against steps
    config.json         the resolved config of the run

The work directory may be local or remote (``gs://bucket/run``): every file
goes through :mod:`rtpca_jax.storage`.  ``train_log.jsonl`` is appended on
local disks; object stores cannot append, so there it is rewritten whole at
every epoch end and checkpoint (a kill loses at most the lines since; resuming
re-runs those steps and writes them again).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import signal
import time
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np
from absl import logging

from rtpca_jax import checkpoints as ckpt_lib
from rtpca_jax import config_lib
from rtpca_jax import evaluation
from rtpca_jax import model as model_lib
from rtpca_jax import runtime
from rtpca_jax import storage
from rtpca_jax import train_lib
from rtpca_jax.data import sources
from rtpca_jax.data import skeleton
from rtpca_jax.data.pipeline import ClipDataset
from rtpca_jax.data.skeleton import get_layout


class NonFiniteLossError(FloatingPointError):
    pass


def data_location(data_cfg) -> str | None:
    """The folder or file a data config reads (None: the shipped data)."""
    if data_cfg.source == "tfds":
        return data_cfg.get("tfds_data_dir") or None
    return data_cfg.get("root") or None


def load_split(data_cfg, split: str) -> list:
    """Train or test sequences of a data config: with ``data.split =
    "subjects"`` those named by ``data.train_subjects`` / ``test_subjects``,
    with ``"builtin"`` the split the data carries."""
    src = data_cfg.source
    names = None
    if data_cfg.split == "subjects":
        key = "train_subjects" if split == "train" else "test_subjects"
        names = list(data_cfg[key])
        if not names:
            raise ValueError(f'data.{key} is empty: data.split="subjects" needs the {split} subjects named')
    elif src not in config_lib.BUILTIN_SPLIT_SOURCES:
        raise ValueError(f"data.split={data_cfg.split!r}: data.source={src!r} carries no built-in split; "
                         f'use data.split="subjects" and name data.train_subjects / data.test_subjects')
    actions = list(data_cfg.actions) if data_cfg.get("actions") else None
    downsample = data_cfg.get("downsample", 1)
    if src == "tfds":
        from rtpca_jax.data.tfds_source import load_tfds

        if not data_cfg.get("tfds_name") or not data_cfg.get("tfds_data_dir"):
            raise ValueError("data.source='tfds' needs data.tfds_name (e.g. 'h36m/gt', 'cmu_mocap') and "
                             "data.tfds_data_dir (where the dataset was built, local or gs://)")
        return load_tfds(data_cfg.tfds_name, data_cfg.tfds_data_dir, split, subjects=names, actions=actions,
                         downsample=downsample)
    if src == "cmu":  # clip names, or the shipped file's own split
        return sources.load("cmu", data_cfg.get("root") or None, subjects=names or split, downsample=downsample)
    return sources.load(src, data_cfg.root, keypoints=data_cfg.get("keypoints", "gt"), subjects=names,
                        actions=actions, downsample=downsample)


class _Preemption:
    """SIGTERM sets a flag; the loop saves at the next step boundary and exits."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


class StepLog:
    """``train_log.jsonl``, one JSON line per training step."""

    def __init__(self, path: str, records: list[dict], enabled: bool, flush_every: int):
        self.path = path
        self.lines = [json.dumps(r) + "\n" for r in records]
        self.enabled = enabled
        self.flush_every = flush_every
        self._fh = None
        if enabled:
            storage.write_text(path, "".join(self.lines))
            if not storage.is_remote(path):
                self._fh = open(storage.normalize(path), "a")

    def add(self, rec: dict) -> None:
        line = json.dumps(rec) + "\n"
        self.lines.append(line)
        if self._fh is not None:
            self._fh.write(line)
            if rec["step"] % self.flush_every == 0:
                self._fh.flush()

    def save(self) -> None:
        """Make everything logged so far durable."""
        if self._fh is not None:
            self._fh.flush()
        elif self.enabled:
            storage.write_text(self.path, "".join(self.lines))

    def records(self) -> list[dict]:
        return [json.loads(x) for x in self.lines]

    def close(self) -> None:
        self.save()
        if self._fh is not None:
            self._fh.close()


def _read_jsonl(path: str, max_step: int) -> list[dict]:
    if not storage.exists(path):
        return []
    out = []
    for line in storage.read_text(path).splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut by a kill
        if rec["step"] <= max_step:
            out.append(rec)
    return out


def plot_curves(history: list[dict], log: list[dict], path: str) -> None:
    """The training loss and the validation P1 over the steps, as a PNG.  A
    bare ``Figure`` (no pyplot state), so it can be drawn in a worker thread."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax1 = fig.subplots()
    if log:
        steps = np.array([r["step"] for r in log])
        loss = np.array([r["loss"] for r in log])
        k = max(1, len(loss) // 200)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax1.plot(steps[k - 1:], smooth, color="tab:blue", lw=1, label="training loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss", color="tab:blue")
    ax1.set_yscale("log")
    vals = [(h["step"], h["val_mpjpe_mm"]) for h in history if h.get("val_mpjpe_mm") is not None]
    if vals:
        ax2 = ax1.twinx()
        ax2.plot(*zip(*vals), "o-", color="tab:red", label="validation MPJPE")
        ax2.set_ylabel("validation MPJPE (mm)", color="tab:red")
    ax1.set_title("training curve")
    # fixed margins, not tight_layout: that draws the figure an extra time to measure the labels
    fig.subplots_adjust(left=0.15, right=0.89, bottom=0.13, top=0.91)
    storage.save_figure(fig, path)


@dataclasses.dataclass
class TrainResult:
    """What :func:`train_and_evaluate` hands back."""

    status: str  # "done", or "preempted" (SIGTERM: checkpoint saved, run again to continue)
    history: list[dict]  # one record per epoch (history.json)
    final: dict  # scores of the last evaluation (evaluation.score_sequences); {} if none ran
    module: Any  # the flax module
    state: train_lib.TrainState
    train: list  # the training sequences
    test: list  # the held-out sequences the scores are on
    mesh: Any


def make_clip_dataset(cfg, train_seqs: list, frames: int) -> ClipDataset:
    """The training clips of a config (shared with ``bench --pipeline``)."""
    return ClipDataset(train_seqs, frames, cfg.train.batch_size, seed=cfg.train.seed, flip=cfg.data.flip,
                       stride=cfg.data.get("clip_stride"))


@dataclasses.dataclass
class _Pending:
    """One step's metrics, read a step late (so the host never waits on the device)."""

    step: int
    epoch: int
    metrics: Any
    lr: float
    done: int  # steps run in this epoch by this process since it (re)started the epoch


class _Run:
    """One training run's parts: data, model, mesh, optimiser, state, checkpoints, logs."""

    def __init__(self, cfg, workdir: str, announce: Optional[Callable[[str], None]]):
        self.cfg, self.workdir = cfg, workdir
        self.started = time.perf_counter()
        self.is_main = jax.process_index() == 0
        self.train_seqs = load_split(cfg.data, "train")
        self.test_seqs = load_split(cfg.data, "test")
        layout = get_layout(self.train_seqs[0].layout)
        if layout.num_joints != cfg.model.num_joints:
            raise ValueError(f"model.num_joints={cfg.model.num_joints} but the data ({cfg.data.source}) has "
                             f"{layout.num_joints} joints ({layout.name})")
        weights = skeleton.loss_weights(layout, cfg.train.joint_weights)
        self.module = model_lib.build(cfg.model)
        self.frames = self.module.spec.num_frames
        self.data = make_clip_dataset(cfg, self.train_seqs, self.frames)
        self.steps_per_epoch = self.data.steps_per_epoch
        if cfg.train.get("max_steps_per_epoch"):
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.train.max_steps_per_epoch)
        self.mesh = mesh = train_lib.make_mesh()
        if cfg.train.batch_size % mesh.devices.size:
            split = (f" (train.cpu_devices={cfg.train.cpu_devices} split the CPU; set it to a divisor of the batch)"
                     if mesh.devices.flat[0].platform == "cpu" and cfg.train.cpu_devices > 1
                     and runtime.cpu_device_count(cfg.train.cpu_devices) == cfg.train.cpu_devices else "")
            raise ValueError(f"train.batch_size={cfg.train.batch_size} is not divisible by the "
                             f"{mesh.devices.size} devices{split}")
        tx = train_lib.make_optimizer(cfg.train, self.steps_per_epoch)
        self.schedule = train_lib.learning_rate_schedule(cfg.train, self.steps_per_epoch)
        self.compile_ahead: Optional[train_lib.CompileAhead] = None

        def start_compiling(abstract_state):
            # the step compiles in the background while the state is initialised and TensorFlow loads
            self.train_step = train_lib.make_train_step(self.module, tx, cfg.train, mesh,
                                                        train_lib.state_sharding(abstract_state, mesh), weights)
            batch = train_lib.batch_sharding(mesh)
            shape = (cfg.train.batch_size, self.frames, layout.num_joints)
            self.compile_ahead = train_lib.CompileAhead(
                self.train_step, abstract_state,
                jax.ShapeDtypeStruct(shape + (self.module.spec.in_dim,), np.float32, sharding=batch),
                jax.ShapeDtypeStruct(shape + (3,), np.float32, sharding=batch))

        state = train_lib.create_state(self.module, tx, cfg.train.seed, mesh, ema=cfg.train.ema_decay > 0,
                                       on_shapes=start_compiling)
        shardings = train_lib.state_sharding(state, mesh)
        self.ckpts = ckpt_lib.Checkpoints(storage.join(workdir, "checkpoints"), keep=cfg.train.keep_checkpoints)
        self.start_epoch, self.start_step = 0, 0
        restored = self.ckpts.restore_latest(state)
        if restored is not None:
            state, self.start_epoch, self.start_step, step = restored
            state = jax.device_put(state, shardings)
            msg = (f"resumed from step {step} (epoch {self.start_epoch + 1}, step {self.start_step} of the epoch) "
                   f"in {workdir}")
            logging.warning(msg)
            if announce is not None and self.is_main:
                announce(msg)
        self.state = state
        self.global_step = int(jax.device_get(state.step))
        self.hist_path = storage.join(workdir, "history.json")
        log_path = storage.join(workdir, "train_log.jsonl")
        self.history = [h for h in (storage.read_json(self.hist_path) if storage.exists(self.hist_path) else [])
                        if h["step"] <= self.global_step]
        self.log_every = int(cfg.train.log_every_steps)
        self.step_log = StepLog(log_path, _read_jsonl(log_path, self.global_step), enabled=self.is_main,
                                flush_every=self.log_every)
        if self.is_main:
            storage.write_text(storage.join(workdir, "config.json"), cfg.to_json_best_effort(indent=2))
        self.predict = evaluation.make_predict_fn(self.module, mesh)
        self.writer = None
        if self.is_main:
            from rtpca_jax.tb_writer import EventWriter

            self.writer = EventWriter(storage.join(workdir, "tb"))
        from rtpca_jax.tb_writer import Profile

        self._plotter = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtpca-plot")
        self._plot: Optional[concurrent.futures.Future] = None

        self.profile = Profile(cfg.train.get("profile_steps", "") if self.is_main else "", workdir)

    def evaluate(self) -> dict:
        preds = evaluation.predict_sequences(self.predict, self.state.eval_params, self.test_seqs, self.frames,
                                            self.cfg.eval.batch_size, self.mesh, flip_tta=self.cfg.eval.flip_tta)
        return evaluation.score_sequences(self.test_seqs, preds)

    def train_epoch(self, epoch: int, first: int, preempt: "_Preemption", bar) -> Optional[tuple[list, float]]:
        """Steps ``first..steps_per_epoch`` of ``epoch``: ``(losses, seconds)``,
        or None when SIGTERM stopped it (a checkpoint of the step is saved)."""
        t0 = time.perf_counter()
        losses: list[float] = []
        pending: Optional[_Pending] = None
        batches = train_lib.device_prefetch(self.data.epoch(epoch, start_step=first), self.mesh, size=2)
        if self.compile_ahead is not None:
            self.compile_ahead.wait()
            self.compile_ahead = None
        # the epoch's learning rates in one call, not a small computation per step
        lrs = np.asarray(self.schedule(np.arange(self.global_step, self.global_step + self.steps_per_epoch - first)))
        for epoch_step in range(first, self.steps_per_epoch):
            p2, p3 = next(batches)
            self.profile.before_step(self.global_step + 1)
            self.state, m = self.train_step(self.state, p2, p3)
            self.global_step += 1
            self.profile.after_step(self.global_step, m)
            if pending is not None:
                self._log_step(pending, losses, bar, t0)
            pending = _Pending(self.global_step, epoch, m, float(lrs[epoch_step - first]), epoch_step + 1 - first)
            if preempt.requested:
                self._log_step(pending, losses, bar, t0)
                self.step_log.save()  # before the checkpoint: the log may run ahead of it, never behind
                self.ckpts.save(self.state, epoch=epoch, epoch_step=epoch_step + 1)
                logging.warning("SIGTERM: saved step %d (epoch %d, step %d) and stopping", self.global_step,
                                epoch, epoch_step + 1)
                return None
        if pending is not None:
            self._log_step(pending, losses, bar, t0)
        return losses, time.perf_counter() - t0

    def _log_step(self, p: _Pending, losses: list, bar, t0: float) -> None:
        m = {k: float(v) for k, v in jax.device_get(p.metrics).items()}
        if not math.isfinite(m["loss"]):
            raise NonFiniteLossError(
                f"non-finite training loss ({m['loss']}) at step {p.step} (epoch {p.epoch + 1}); stopping. "
                f"The last good checkpoint is kept; lower train.lr or set train.grad_clip_norm.")
        losses.append(m["loss"])
        self.step_log.add({"step": p.step, "epoch": p.epoch + 1, "loss": m["loss"], "lr": p.lr})
        if self.writer is not None and p.step % self.log_every == 0:
            self.writer.scalar("train/loss", m["loss"], p.step)
            self.writer.scalar("train/lr", p.lr, p.step)
        if bar is not None:
            rate = p.done * self.cfg.train.batch_size / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{p.lr:.2e}", clips_s=f"{rate:.0f}", refresh=False)
            bar.update(1)

    def end_epoch(self, epoch: int, steps: int, losses: list, train_s: float) -> tuple[dict, dict]:
        """Evaluate, record, checkpoint and plot after an epoch: ``(record, scores)``."""
        cfg = self.cfg
        t0 = time.perf_counter()
        scores = self.evaluate()
        eval_s = time.perf_counter() - t0
        rec = {
            "epoch": epoch + 1, "step": self.global_step,
            "loss": float(np.mean(losses)) if losses else None,
            "lr": float(self.schedule(self.global_step)), "train_s": train_s,
            "clips_per_s": steps * cfg.train.batch_size / max(train_s, 1e-9),
            "val_mpjpe_mm": scores["mpjpe_mm"], "val_p_mpjpe_mm": scores["p_mpjpe_mm"],
            "val_mpjve_mm": scores["mpjve_mm"],
            "eval_s": eval_s, "elapsed_s": time.perf_counter() - self.started,
        }
        self.history.append(rec)
        logging.info("epoch %d/%d step %d: loss %.4f  val P1 %.1f mm  P2 %.1f mm  MPJVE %.2f mm  (%.0f clips/s)",
                     epoch + 1, cfg.train.num_epochs, self.global_step, rec["loss"] or math.nan,
                     rec["val_mpjpe_mm"], rec["val_p_mpjpe_mm"], rec["val_mpjve_mm"], rec["clips_per_s"])
        last = epoch + 1 == cfg.train.num_epochs
        self.step_log.save()
        if (epoch + 1) % cfg.train.checkpoint_every_epochs == 0 or last:
            # written while the next epoch trains; close() waits for the last one
            self.ckpts.save(self.state, epoch=epoch + 1, epoch_step=0, val_mpjpe_mm=scores["mpjpe_mm"], wait=False)
        if self.is_main:
            storage.write_text(self.hist_path, json.dumps(self.history, indent=1))
            for k in ("val_mpjpe_mm", "val_p_mpjpe_mm", "val_mpjve_mm"):
                self.writer.scalar(k, rec[k], self.global_step)
            self.writer.flush()
            # drawn in a worker thread while the next epoch trains (1.5 s per epoch here when drawn in line)
            self._wait_plot()
            self._plot = self._plotter.submit(plot_curves, list(self.history), self.step_log.records(),
                                              storage.join(self.workdir, "training_curve.png"))
        return rec, scores

    def _wait_plot(self) -> None:
        """Waits for the last epoch's plot; raises its error, if any."""
        plot, self._plot = self._plot, None
        if plot is not None:
            plot.result()

    def close(self) -> None:
        """Waits for the background work (compilation, checkpoint, plot) and
        closes the logs; a failed plot is raised last, after the rest is closed."""
        if self.compile_ahead is not None:
            self.compile_ahead.wait()
        try:
            self.profile.stop()
            self.ckpts.close()
            self.step_log.close()
            if self.writer is not None:
                self.writer.close()
        finally:
            try:
                self._wait_plot()
            finally:
                self._plotter.shutdown()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       progress: Optional[Callable[..., object]] = None,
                       on_epoch: Optional[Callable[[dict], None]] = None,
                       announce: Optional[Callable[[str], None]] = None) -> TrainResult:
    """Train (resuming from ``workdir``), evaluating after every epoch.

    ``progress(total=n, initial=k, desc=...)`` may return a tqdm-like bar;
    ``on_epoch(record)`` is called on the main process after every evaluation;
    ``announce(message)`` tells the user that training resumed.
    Raises ``NonFiniteLossError`` naming the step on a NaN/inf loss (no
    checkpoint is written for it; the last good one stays).
    """
    workdir = storage.normalize(workdir)
    cfg = config
    config_lib.validate(cfg)
    # fail in seconds, naming the path, rather than after minutes of client retries
    storage.check_reachable(workdir, what="work directory")
    if data_location(cfg.data):
        storage.check_reachable(data_location(cfg.data), what="data")
    storage.makedirs(workdir)
    run = _Run(cfg, workdir, announce)
    runtime.barrier("rtpca-jax: set up")  # every process set up before the first step's collective
    status, final = "done", {}
    with _Preemption() as preempt:
        for epoch in range(run.start_epoch, cfg.train.num_epochs):
            first = run.start_step if epoch == run.start_epoch else 0
            bar = (progress(total=run.steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{cfg.train.num_epochs}")
                   if progress and run.is_main else None)
            done = run.train_epoch(epoch, first, preempt, bar)
            if done is None:
                status = "preempted"
                break
            if bar is not None:
                bar.close()
            rec, final = run.end_epoch(epoch, run.steps_per_epoch - first, *done)
            if on_epoch is not None and run.is_main:
                on_epoch(rec)
    run.close()
    return TrainResult(status=status, history=run.history, final=final, module=run.module, state=run.state,
                       train=run.train_seqs, test=run.test_seqs, mesh=run.mesh)
