"""The training loop behind ``train.py``: data, steps, evaluation, checkpoints,
resumption, preemption, logs and plots.

Work directory layout::

    checkpoints/        Orbax checkpoints (latest K + best by validation MPJPE)
    train_log.jsonl     one line per training step: step, epoch, loss, lr
    history.json        one record per epoch: losses, validation P1/P2/MPJVE
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

import json
import math
import signal
import time
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np
from absl import logging

from rtpca_jax import checkpoints as ckpt_lib
from rtpca_jax import config_lib
from rtpca_jax import evaluation
from rtpca_jax import model as model_lib
from rtpca_jax import storage
from rtpca_jax import train_lib
from rtpca_jax.data import sources
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
    """Train or test sequences of a data config."""
    src = data_cfg.source
    if src == "tfds":
        from rtpca_jax.data.tfds_source import load_tfds

        if not data_cfg.get("tfds_name") or not data_cfg.get("tfds_data_dir"):
            raise ValueError("data.source='tfds' needs data.tfds_name (e.g. 'h36m/gt', 'cmu_mocap') and "
                             "data.tfds_data_dir (where the dataset was built, local or gs://)")
        named = data_cfg.train_subjects if split == "train" else data_cfg.test_subjects
        actions = data_cfg.get("actions")
        return load_tfds(data_cfg.tfds_name, data_cfg.tfds_data_dir, split,
                         subjects=list(named) if named else None, actions=list(actions) if actions else None,
                         downsample=data_cfg.get("downsample", 1))
    opts = {"downsample": data_cfg.get("downsample", 1)}
    if src == "cmu":  # the split by default; named clips when the config lists them
        named = data_cfg.train_subjects if split == "train" else data_cfg.test_subjects
        return sources.load("cmu", data_cfg.get("root") or None, subjects=list(named) if named else split, **opts)
    subjects = data_cfg.train_subjects if split == "train" else data_cfg.test_subjects
    actions = data_cfg.get("actions")
    return sources.load(src, data_cfg.root, keypoints=data_cfg.get("keypoints", "gt"),
                        subjects=list(subjects) if subjects else None,
                        actions=list(actions) if actions else None, **opts)


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(7, 4))
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
    fig.tight_layout()
    storage.save_figure(fig, path)
    plt.close(fig)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       progress: Optional[Callable[..., object]] = None,
                       on_epoch: Optional[Callable[[dict], None]] = None,
                       announce: Optional[Callable[[str], None]] = None) -> dict:
    """Train (resuming from ``workdir``), evaluating after every epoch.

    ``progress(total=n, initial=k, desc=...)`` may return a tqdm-like bar;
    ``on_epoch(record)`` is called on the main process after every evaluation.
    Returns ``{"status": "done" | "preempted", "history": [...], "final": {...}}``.
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
    is_main = jax.process_index() == 0
    train_seqs = load_split(cfg.data, "train")
    test_seqs = load_split(cfg.data, "test")
    layout = get_layout(train_seqs[0].layout)
    if layout.num_joints != cfg.model.num_joints:
        raise ValueError(f"model.num_joints={cfg.model.num_joints} but the data ({cfg.data.source}) has "
                         f"{layout.num_joints} joints ({layout.name})")
    if len(cfg.train.joint_weights) != layout.num_joints:
        raise ValueError(f"train.joint_weights has {len(cfg.train.joint_weights)} entries for "
                         f"{layout.num_joints} joints")
    module = model_lib.build(cfg.model)
    frames = module.spec.num_frames
    data = ClipDataset(train_seqs, frames, cfg.train.batch_size, seed=cfg.train.seed, flip=cfg.data.flip,
                       stride=cfg.data.get("clip_stride"))
    steps_per_epoch = data.steps_per_epoch
    if cfg.train.get("max_steps_per_epoch"):
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)

    mesh = train_lib.make_mesh()
    if cfg.train.batch_size % mesh.devices.size:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} is not divisible by the "
                         f"{mesh.devices.size} devices")
    tx = train_lib.make_optimizer(cfg.train, steps_per_epoch)
    schedule = train_lib.learning_rate_schedule(cfg.train, steps_per_epoch)
    state = train_lib.create_state(module, tx, cfg.train.seed, mesh)
    shardings = train_lib.state_sharding(state, mesh)
    ckpts = ckpt_lib.Checkpoints(storage.join(workdir, "checkpoints"), keep=cfg.train.keep_checkpoints)
    start_epoch, start_step = 0, 0
    restored = ckpts.restore_latest(state)
    if restored is not None:
        state, start_epoch, start_step, step = restored
        state = jax.device_put(state, shardings)
        msg = f"resumed from step {step} (epoch {start_epoch + 1}, step {start_step} of the epoch) in {workdir}"
        logging.warning(msg)
        if announce is not None and is_main:
            announce(msg)
    global_step = int(jax.device_get(state.step))
    log_path = storage.join(workdir, "train_log.jsonl")
    hist_path = storage.join(workdir, "history.json")
    log = _read_jsonl(log_path, global_step)
    history = [h for h in (storage.read_json(hist_path) if storage.exists(hist_path) else [])
               if h["step"] <= global_step]
    log_every = max(1, int(cfg.train.get("log_every_steps", 10) or 10))
    step_log = StepLog(log_path, log, enabled=is_main, flush_every=log_every)
    if is_main:
        storage.write_text(storage.join(workdir, "config.json"), cfg.to_json_best_effort(indent=2))
    train_step = train_lib.make_train_step(module, tx, cfg.train, mesh, shardings)
    predict = evaluation.make_predict_fn(module, mesh)
    writer = None
    if is_main:
        from rtpca_jax.tb_writer import EventWriter

        writer = EventWriter(storage.join(workdir, "tb"))
    from rtpca_jax.tb_writer import Profile

    profile = Profile(cfg.train.get("profile_steps", "") if is_main else "", workdir)

    def evaluate(params) -> dict:
        preds = evaluation.predict_sequences(predict, params, test_seqs, frames, cfg.eval.batch_size, mesh,
                                            flip_tta=cfg.eval.flip_tta)
        return evaluation.score_sequences(test_seqs, preds)

    status = "done"
    final: dict = {}
    with _Preemption() as preempt:
        for epoch in range(start_epoch, cfg.train.num_epochs):
            first = start_step if epoch == start_epoch else 0
            bar = progress(total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{cfg.train.num_epochs}") \
                if progress and is_main else None
            ds = data.epoch(epoch, start_step=first)
            t0 = time.perf_counter()
            pending = None  # metrics of the previous step, read one step late
            epoch_losses = []
            it = train_lib.device_prefetch(ds, mesh, size=2)
            for epoch_step in range(first, steps_per_epoch):
                p2, p3 = next(it)
                profile.before_step(global_step + 1)
                state, m = train_step(state, p2, p3)
                global_step += 1
                profile.after_step(global_step, m)
                if pending is not None:
                    _consume(pending, step_log, epoch_losses, writer, bar, t0, log_every)
                pending = (global_step, epoch, m, float(schedule(global_step - 1)), cfg.train.batch_size,
                           epoch_step + 1 - first)
                if preempt.requested:
                    _consume(pending, step_log, epoch_losses, writer, bar, t0, log_every)
                    step_log.save()  # before the checkpoint: the log may run ahead of it, never behind
                    ckpts.save(state, epoch=epoch, epoch_step=epoch_step + 1)
                    logging.warning("SIGTERM: saved step %d (epoch %d, step %d) and stopping", global_step,
                                    epoch, epoch_step + 1)
                    status = "preempted"
                    break
            if status == "preempted":
                break
            if pending is not None:
                _consume(pending, step_log, epoch_losses, writer, bar, t0, log_every)
            if bar is not None:
                bar.close()
            train_time = time.perf_counter() - t0
            scores = evaluate(state.params)
            rec = {
                "epoch": epoch + 1, "step": global_step,
                "loss": float(np.mean(epoch_losses)) if epoch_losses else None,
                "lr": float(schedule(global_step)), "train_s": train_time,
                "clips_per_s": (steps_per_epoch - first) * cfg.train.batch_size / max(train_time, 1e-9),
                "val_mpjpe_mm": scores["mpjpe_mm"], "val_p_mpjpe_mm": scores["p_mpjpe_mm"],
                "val_mpjve_mm": scores["mpjve_mm"],
            }
            history.append(rec)
            final = scores
            logging.info("epoch %d/%d step %d: loss %.4f  val P1 %.1f mm  P2 %.1f mm  MPJVE %.2f mm  "
                         "(%.0f clips/s)", epoch + 1, cfg.train.num_epochs, global_step, rec["loss"] or math.nan,
                         rec["val_mpjpe_mm"], rec["val_p_mpjpe_mm"], rec["val_mpjve_mm"], rec["clips_per_s"])
            if on_epoch is not None and is_main:
                on_epoch(rec)
            last = epoch + 1 == cfg.train.num_epochs
            step_log.save()
            if (epoch + 1) % cfg.train.checkpoint_every_epochs == 0 or last:
                ckpts.save(state, epoch=epoch + 1, epoch_step=0, val_mpjpe_mm=scores["mpjpe_mm"])
            if is_main:
                storage.write_text(hist_path, json.dumps(history, indent=1))
                for k in ("val_mpjpe_mm", "val_p_mpjpe_mm", "val_mpjve_mm"):
                    writer.scalar(k, rec[k], global_step)
                writer.flush()
                plot_curves(history, step_log.records(),
                            storage.join(workdir, "training_curve.png"))
    profile.stop()
    ckpts.close()
    step_log.close()
    if writer is not None:
        writer.close()
    return {"status": status, "history": history, "final": final, "module": module, "state": state,
            "train": train_seqs, "test": test_seqs, "mesh": mesh}


def _consume(pending, step_log, epoch_losses, writer, bar, t0, log_every) -> None:
    step, epoch, m, lr, batch, done = pending
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    if not math.isfinite(m["loss"]):
        raise NonFiniteLossError(
            f"non-finite training loss ({m['loss']}) at step {step} (epoch {epoch + 1}); stopping. "
            f"The last good checkpoint is kept; lower train.lr or set train.grad_clip_norm.")
    epoch_losses.append(m["loss"])
    step_log.add({"step": step, "epoch": epoch + 1, "loss": m["loss"], "lr": lr})
    if writer is not None and step % log_every == 0:
        writer.scalar("train/loss", m["loss"], step)
        writer.scalar("train/lr", lr, step)
    if bar is not None:
        rate = done * batch / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{lr:.2e}", clips_s=f"{rate:.0f}", refresh=False)
        bar.update(1)
