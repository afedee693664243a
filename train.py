"""Train (and evaluate) a model.

    python train.py                      # RTPCA on the shipped CMU mocap, CPU-sized
    python train.py --config=configs/rtpca_h36m_243.py --config.data.root=/data/h36m --workdir=runs/h36m
    python train.py --config=configs/default.py --config.train.num_epochs=3

Resumes automatically from ``--workdir``; SIGTERM saves a checkpoint and exits.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
config_flags.DEFINE_config_file("config", os.path.join(_HERE, "configs", "default.py"),
                                "experiment config file", lock_config=True)
flags.DEFINE_string("workdir", os.path.join("runs", "default"), "work directory (checkpoints, logs, plots)")
FLAGS = flags.FLAGS


def baseline_report(result, workdir: str) -> str:
    """P1/P2 of the trained model beside two closed-form baselines on the same clips."""
    import numpy as np

    from rtpca_jax import evaluation, storage

    train, test = result.train, result.test
    mean_pose = evaluation.mean_pose_baseline(train)
    w = evaluation.linear_baseline(train)
    variant = result.module.spec.variant
    rows = [("RTPCA-jax (this run)" if variant == "rtpca" else f"{variant} (this run)", result.final)]
    rows.append(("mean training pose", evaluation.score_sequences(
        test, [np.broadcast_to(mean_pose, s.pose3d.shape) for s in test])))
    rows.append(("per-frame linear least squares 2D->3D", evaluation.score_sequences(
        test, [evaluation.apply_linear_baseline(w, s.pose2d) for s in test])))
    lines = ["| method | P1 MPJPE (mm) | P2 P-MPJPE (mm) | MPJVE (mm) |", "|---|---:|---:|---:|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['mpjpe_mm']:.1f} | {r['p_mpjpe_mm']:.1f} | {r['mpjve_mm']:.2f} |")
    table = "\n".join(lines)
    storage.write_json(storage.join(workdir, "baselines.json"),
                       {name: {k: v for k, v in r.items() if k != "per_action"} for name, r in rows})
    return table


def main(argv):
    del argv
    import jax
    from tqdm import tqdm

    from rtpca_jax import storage, train_loop
    from rtpca_jax.runtime import start

    cfg = FLAGS.config
    start(cpu_devices=cfg.train.cpu_devices)
    # Orbax logs every save at INFO; progress and epoch lines come from tqdm here.
    logging.set_verbosity(logging.WARNING)

    def on_epoch(rec):
        tqdm.write(f"epoch {rec['epoch']}: loss {rec['loss']:.4f}  val P1 {rec['val_mpjpe_mm']:.1f} mm  "
                   f"P2 {rec['val_p_mpjpe_mm']:.1f} mm  MPJVE {rec['val_mpjve_mm']:.2f} mm  "
                   f"({rec['clips_per_s']:.0f} clips/s)")

    try:
        result = train_loop.train_and_evaluate(
            cfg, FLAGS.workdir, progress=lambda **kw: tqdm(unit="step", dynamic_ncols=True, **kw),
            on_epoch=on_epoch, announce=tqdm.write)
    except (train_loop.NonFiniteLossError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result.status == "preempted":
        print("preempted: checkpoint saved; run the same command again to continue")
        return 0
    if jax.process_index() == 0 and result.final:
        # the same report as eval.py on the final model, in the work directory
        from rtpca_jax import evaluation

        evaluation.write_results(result.final, FLAGS.workdir, result.test[0].layout)
    if jax.process_index() == 0 and cfg.train.get("report_baselines", False) and result.final:
        table = baseline_report(result, FLAGS.workdir)
        print(f"\nheld-out clips ({len(result.test)} sequences), flip test-time augmentation:\n{table}")
        storage.write_text(storage.join(FLAGS.workdir, "report.md"), table + "\n")
    print(f"work directory: {storage.normalize(FLAGS.workdir)} (results.json, training_curve.png, history.json, tb/)")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
