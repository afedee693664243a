"""Evaluate a checkpoint as the official code does.

    python eval.py --config=configs/rtpca_h36m_243.py --checkpoint=runs/h36m
    python eval.py --config=configs/rtpca_h36m_243.py --checkpoint=checkpoint/best_epoch.bin

PATH: a training work directory, its ``checkpoints/`` folder, a
``convert to-jax`` output, or an official PyTorch ``.bin`` (converted on the
fly).  Non-overlapping clips of F frames (the last right-aligned, edge-padded
when short), flip test-time augmentation; prints a per-action table (P1, P2,
MPJVE) and writes ``results.json`` into ``--output`` (default: the checkpoint's
directory).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
config_flags.DEFINE_config_file("config", os.path.join(_HERE, "configs", "default.py"), "experiment config",
                                lock_config=True)
flags.DEFINE_string("checkpoint", None, "Orbax checkpoint directory or official PyTorch .bin", required=True)
flags.DEFINE_string("output", None, "where results.json goes (default: next to the checkpoint)")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from rtpca_jax import evaluation, storage, train_lib
    from rtpca_jax.convert import load_model
    from rtpca_jax.runtime import barrier, start
    from rtpca_jax.train_loop import data_location, load_split

    logging.set_verbosity(logging.WARNING)
    start()
    cfg = FLAGS.config
    try:
        storage.check_reachable(FLAGS.checkpoint, what="checkpoint")
        if data_location(cfg.data):
            storage.check_reachable(data_location(cfg.data), what="data")
        if FLAGS.output:
            storage.check_reachable(FLAGS.output, what="output")
        # the config's model section describes an official .bin; a directory carries its own
        module, params = load_model(FLAGS.checkpoint, model_config=cfg.model)
        test = load_split(cfg.data, "test")
    except (ValueError, ImportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    # every process loaded before the first prediction's collective (gloo's 30 s set-up: runtime.barrier)
    barrier("rtpca-jax eval: set up")
    mesh = train_lib.make_mesh()
    predict = evaluation.make_predict_fn(module, mesh)
    preds = evaluation.predict_sequences(predict, params, test, module.spec.num_frames, cfg.eval.batch_size, mesh,
                                        flip_tta=cfg.eval.flip_tta)
    results = evaluation.score_sequences(test, preds)
    print(evaluation.format_table(results))
    out_dir = FLAGS.output or (FLAGS.checkpoint if storage.isdir(FLAGS.checkpoint)
                               else storage.dirname(FLAGS.checkpoint))
    path = evaluation.write_results(results, out_dir, test[0].layout)
    print(f"wrote {path}, per_action_errors.png, per_joint_errors.png")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
