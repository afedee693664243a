"""The training loop behind ``train.py``: data, steps, evaluation, checkpoints,
resumption, preemption, logs and plots.

Work directory layout::

    checkpoints/        Orbax checkpoints (latest K + best by validation MPJPE)
    train_log.jsonl     one line per training step: step, epoch, loss, lr
    history.json        one record per epoch: losses, validation P1/P2/MPJVE
    tb/                 TensorBoard event files
    training_curve.png  loss and validation MPJPE against steps
    config.json         the resolved config of the run
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np
from absl import logging

from rtpca_jax import checkpoints as ckpt_lib
from rtpca_jax import model as model_lib
from rtpca_jax import train_lib
from rtpca_jax.data import sources
from rtpca_jax.data.pipeline import ClipDataset
from rtpca_jax.data.skeleton import get_layout


class NonFiniteLossError(FloatingPointError):
    pass


def load_split(data_cfg, split: str) -> list:
    """Train or test sequences of a data config."""
    src = data_cfg.source
    opts = {"downsample": data_cfg.get("downsample", 1)}
    if src == "cmu":  # the split by default; named clips when the config lists them
        named = data_cfg.train_subjects if split == "train" else data_cfg.test_subjects
        return sources.load("cmu", data_cfg.get("root") or None, subjects=list(named) if named else split, **opts)
    subjects = data_cfg.train_subjects if split == "train" else data_cfg.test_subjects
    actions = data_cfg.get("actions")
    return sources.load(src, data_cfg.root, keypoints=data_cfg.get("keypoints", "gt"),
                        subjects=list(subjects) if subjects else None,
                        actions=list(actions) if actions else None, **opts)


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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


def _read_jsonl(path: str, max_step: int) -> list[dict]:
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
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
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       progress: Optional[Callable[..., object]] = None,
                       on_epoch: Optional[Callable[[dict], None]] = None) -> dict:
    """Train (resuming from ``workdir``), evaluating after every epoch.

    ``progress(total=n, initial=k, desc=...)`` may return a tqdm-like bar;
    ``on_epoch(record)`` is called on the main process after every evaluation.
    Returns ``{"status": "done" | "preempted", "history": [...], "final": {...}}``.
    Raises ``NonFiniteLossError`` naming the step on a NaN/inf loss (no
    checkpoint is written for it; the last good one stays).
    """
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    cfg = config
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
    ckpts = ckpt_lib.Checkpoints(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_checkpoints)
    start_epoch, start_step = 0, 0
    restored = ckpts.restore_latest(state)
    if restored is not None:
        state, start_epoch, start_step, step = restored
        state = jax.device_put(state, shardings)
        logging.info("resumed from step %d (epoch %d, step %d of the epoch)", step, start_epoch, start_step)
    global_step = int(jax.device_get(state.step))
    log_path = os.path.join(workdir, "train_log.jsonl")
    hist_path = os.path.join(workdir, "history.json")
    log = _read_jsonl(log_path, global_step)
    history = [h for h in (json.load(open(hist_path)) if os.path.exists(hist_path) else [])
               if h["step"] <= global_step]
    if is_main:
        _atomic_write(log_path, "".join(json.dumps(r) + "\n" for r in log))
        _atomic_write(os.path.join(workdir, "config.json"), cfg.to_json_best_effort(indent=2))
    train_step = train_lib.make_train_step(module, tx, cfg.train, mesh, shardings)
    predict = train_lib.make_predict_fn(module, mesh)
    writer = None
    if is_main:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(os.path.join(workdir, "tb"))

    def evaluate(params) -> dict:
        preds = train_lib.predict_sequences(predict, params, test_seqs, frames, cfg.eval.batch_size, mesh,
                                            flip_tta=cfg.eval.flip_tta)
        return train_lib.score_sequences(test_seqs, preds)

    status = "done"
    final: dict = {}
    with _Preemption() as preempt, open(log_path, "a") if is_main else open(os.devnull, "w") as log_file:
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
                state, m = train_step(state, p2, p3)
                global_step += 1
                if pending is not None:
                    _consume(pending, log_file, epoch_losses, writer, bar, t0)
                pending = (global_step, epoch, m, float(schedule(global_step - 1)), cfg.train.batch_size,
                           epoch_step + 1 - first)
                if preempt.requested:
                    _consume(pending, log_file, epoch_losses, writer, bar, t0)
                    ckpts.save(state, epoch=epoch, epoch_step=epoch_step + 1)
                    logging.warning("SIGTERM: saved step %d (epoch %d, step %d) and stopping", global_step,
                                    epoch, epoch_step + 1)
                    status = "preempted"
                    break
            if status == "preempted":
                break
            if pending is not None:
                _consume(pending, log_file, epoch_losses, writer, bar, t0)
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
            if (epoch + 1) % cfg.train.checkpoint_every_epochs == 0 or last:
                ckpts.save(state, epoch=epoch + 1, epoch_step=0, val_mpjpe_mm=scores["mpjpe_mm"])
            if is_main:
                _atomic_write(hist_path, json.dumps(history, indent=1))
                for k in ("val_mpjpe_mm", "val_p_mpjpe_mm", "val_mpjve_mm"):
                    writer.add_scalar(k, rec[k], global_step)
                writer.flush()
                log_file.flush()
                plot_curves(history, _read_jsonl(log_path, global_step), os.path.join(workdir, "training_curve.png"))
    ckpts.close()
    if writer is not None:
        writer.close()
    return {"status": status, "history": history, "final": final, "module": module, "state": state,
            "train": train_seqs, "test": test_seqs, "mesh": mesh}


def _consume(pending, log_file, epoch_losses, writer, bar, t0) -> None:
    step, epoch, m, lr, batch, done = pending
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    if not math.isfinite(m["loss"]):
        raise NonFiniteLossError(
            f"non-finite training loss ({m['loss']}) at step {step} (epoch {epoch + 1}); stopping. "
            f"The last good checkpoint is kept; lower train.lr or set train.grad_clip_norm.")
    epoch_losses.append(m["loss"])
    log_file.write(json.dumps({"step": step, "epoch": epoch + 1, "loss": m["loss"], "lr": lr}) + "\n")
    if writer is not None and step % 10 == 0:
        writer.add_scalar("train/loss", m["loss"], step)
        writer.add_scalar("train/lr", lr, step)
    if bar is not None:
        rate = done * batch / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{lr:.2e}", clips_s=f"{rate:.0f}", refresh=False)
        bar.update(1)
