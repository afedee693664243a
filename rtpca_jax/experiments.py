"""The paper's open questions, answered with the product.

    python -m rtpca_jax.experiments ablation   --config configs/default.py --workdir runs/ablation
    python -m rtpca_jax.experiments robustness --config configs/default.py --checkpoint runs/default --workdir runs/robust
    python -m rtpca_jax.experiments stability  --config configs/default.py --checkpoint runs/default --workdir runs/stable

ablation
    Trains and evaluates ``ste``, ``ste_tpca``, ``rtpca`` and ``rtpca`` at
    pyramid ratios 2, 3, 4 (and, at ratio 2, 1-3 levels) with the same data,
    seeds and budget; writes ``ablation.md``, ``ablation.json`` and
    ``p1_vs_flops.png``.  Each run lives in ``<workdir>/<run>_seed<k>`` and
    resumes there; finished runs (``result.json`` present) are not repeated.
robustness
    Evaluates a checkpoint with the 2D inputs perturbed by Gaussian noise
    (sigma in pixels of the camera image) and by random joint dropout (the
    dropped joints filled by temporal interpolation, as inference does).
stability
    On test sequences of at least 600 frames: MPJVE and acceleration error for
    clip lengths 27, 81 and 243 (the checkpoint's frame-tied parameters
    resampled, as ``convert --frames`` does) and for both stitching strategies:
    the official hard cuts (non-overlapping clips) and the inference
    command's cross-fade.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import numpy as np

from rtpca_jax import evaluation, metrics, storage


def _plot(xs, series: dict, path: str, xlabel: str, ylabel: str, title: str, logx=False, annotate=None,
          yerr=None) -> None:
    from rtpca_jax.viz import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in series.items():
        x = xs[name] if isinstance(xs, dict) else xs
        if yerr and yerr.get(name) is not None:
            ax.errorbar(x, ys, yerr=yerr[name], fmt="o", capsize=3, label=name)
        else:
            ax.plot(x, ys, "o-" if not isinstance(xs, dict) else "o", label=name)
        if annotate:
            for xi, yi in zip(np.atleast_1d(x), np.atleast_1d(ys)):
                ax.annotate(name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if logx:
        ax.set_xscale("log")
        ticks = sorted({float(v) for v in (np.concatenate([np.atleast_1d(v) for v in xs.values()])
                                           if isinstance(xs, dict) else xs)})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if not annotate:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    storage.save_figure(fig, path)
    plt.close(fig)


# ----------------------------------------------------------------------------
# Ablation


def ablation_runs(model_cfg) -> dict[str, dict]:
    """Run name -> model overrides; pyramid settings the frame count cannot
    honour are left out (ratio r uses the most levels F allows, up to 3)."""
    from rtpca_jax.model.spec import pyramid_lengths

    f = model_cfg.num_frames
    runs = {"ste": dict(variant="ste"), "ste_tpca": dict(variant="ste_tpca", pyramid_ratio=2, pyramid_levels=3)}
    for levels in (3, 2, 1):
        if pyramid_lengths(f, 2, levels)[-1] >= 2:
            runs[f"rtpca_r2_l{levels}"] = dict(variant="rtpca", pyramid_ratio=2, pyramid_levels=levels)
    for r in (3, 4):
        levels = max((lv for lv in (1, 2, 3) if pyramid_lengths(f, r, lv)[-1] >= 2), default=0)
        if levels:
            runs[f"rtpca_r{r}_l{levels}"] = dict(variant="rtpca", pyramid_ratio=r, pyramid_levels=levels)
    if "ste_tpca" in runs and pyramid_lengths(f, 2, 3)[-1] < 2:
        del runs["ste_tpca"]
    return runs


def run_ablation(config, workdir: str, seeds=(0, 1), only=None, progress=None) -> list[dict]:
    import jax

    from rtpca_jax import model as model_lib
    from rtpca_jax import train_loop
    from rtpca_jax.model.summary import flops_per_clip

    storage.makedirs(workdir)
    runs = ablation_runs(config.model)
    if only:
        unknown = [o for o in only if o not in runs]
        if unknown:
            raise ValueError(f"unknown ablation run(s) {unknown}; available: {list(runs)}")
        runs = {k: v for k, v in runs.items() if k in only}
    records = []
    for name, overrides in runs.items():
        for seed in seeds:
            run_dir = storage.join(workdir, f"{name}_seed{seed}")
            result_path = storage.join(run_dir, "result.json")
            if storage.exists(result_path):
                records.append(storage.read_json(result_path))
                continue
            cfg = copy.deepcopy(config)
            for k, v in overrides.items():
                cfg.model[k] = v
            cfg.train.seed = seed
            cfg.train.report_baselines = False
            t0 = time.perf_counter()
            out = train_loop.train_and_evaluate(cfg, run_dir, progress=progress)
            if out.status != "done":
                raise SystemExit(f"{name} seed {seed} was preempted; run the command again to continue")
            module = out.module
            params = out.state.eval_params
            rec = {
                "run": name, "seed": seed, **overrides,
                "p1_mm": out.final["mpjpe_mm"], "p2_mm": out.final["p_mpjpe_mm"],
                "mpjve_mm": out.final["mpjve_mm"],
                "params": model_lib.count_params(params),
                "flops_per_clip": flops_per_clip(module, jax.device_get(params)),
                "train_s": float(sum(h["train_s"] for h in out.history)),
                # the quickest epoch: the figure least disturbed by other work on the machine
                "fastest_epoch_s": float(min((h["train_s"] for h in out.history), default=float("nan"))),
                "wall_s": time.perf_counter() - t0,
                "epochs": config.train.num_epochs,
                "steps": int(out.history[-1]["step"]) if out.history else 0,
            }
            storage.write_text(result_path, json.dumps(rec, indent=1))
            records.append(rec)
    _ablation_report(records, workdir, config)
    return records


def _ablation_report(records: list[dict], workdir: str, config) -> None:
    by_run: dict[str, list[dict]] = {}
    for r in records:
        by_run.setdefault(r["run"], []).append(r)
    lines = [f"Ablation on `{config.data.source}` data, F={config.model.num_frames}, C={config.model.width}, "
             f"depth {config.model.depth}, {config.train.num_epochs} epochs, seeds "
             f"{sorted({r['seed'] for r in records})}; mean ± std over seeds.", "",
             "| run | P1 (mm) | P2 (mm) | MPJVE (mm) | params | GFLOP/clip | train time (s) | fastest epoch (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def ms(vals):
        vals = np.asarray(vals, float)
        return f"{vals.mean():.1f} ± {vals.std(ddof=1):.1f}" if len(vals) > 1 else f"{vals.mean():.1f}"

    summary = {}
    for name, rs in by_run.items():
        summary[name] = {k: float(np.mean([r[k] for r in rs])) for k in ("p1_mm", "p2_mm", "mpjve_mm",
                                                                          "flops_per_clip", "train_s")}
        summary[name]["p1_std_mm"] = float(np.std([r["p1_mm"] for r in rs], ddof=1)) if len(rs) > 1 else None
        lines.append(f"| {name} | {ms([r['p1_mm'] for r in rs])} | {ms([r['p2_mm'] for r in rs])} | "
                     f"{ms([r['mpjve_mm'] for r in rs])} | {rs[0]['params']:,} | "
                     f"{rs[0]['flops_per_clip'] / 1e9:.3f} | {ms([r['train_s'] for r in rs])} | "
                     f"{min((r.get('fastest_epoch_s', np.nan) for r in rs)):.1f} |")
    lines += ["", *seed_noise_lines(by_run)]
    storage.write_text(storage.join(workdir, "ablation.md"), "\n".join(lines) + "\n")
    storage.write_text(storage.join(workdir, "ablation.json"),
                       json.dumps({"runs": records, "summary": summary}, indent=1))
    _plot({n: [s["flops_per_clip"] / 1e9] for n, s in summary.items()},
          {n: [s["p1_mm"]] for n, s in summary.items()}, storage.join(workdir, "p1_vs_flops.png"),
          "GFLOP per clip (XLA)", "P1 MPJPE (mm), mean ± std over seeds", "accuracy against cost", annotate=True,
          yerr={n: s["p1_std_mm"] for n, s in summary.items()})


def seed_noise_lines(by_run: dict[str, list[dict]], metric: str = "p1_mm") -> list[str]:
    """Which P1 differences stand out from seed noise.

    The seed noise is one standard deviation pooled over every run with 2+
    seeds (their variances weighted by degrees of freedom): with two seeds a
    run's own spread is a one-degree-of-freedom estimate and says little, while
    the variants share the data, budget and optimiser, so one pooled figure is
    the sounder estimate.  A difference of means counts as outside the noise
    when it exceeds twice its standard error, ``2 * s_p * sqrt(1/n_a + 1/n_b)``
    (a rough 95% rule, stated as such)."""
    names = [n for n, rs in by_run.items() if len(rs) >= 2]
    if len(names) < 2:
        return ["(seed noise: needs at least 2 seeds for 2 runs or more)"]
    vals = {n: np.asarray([r[metric] for r in by_run[n]], float) for n in names}
    dof = sum(len(v) - 1 for v in vals.values())
    sp = float(np.sqrt(sum(((v - v.mean()) ** 2).sum() for v in vals.values()) / dof))
    out = [f"Seed noise: pooled standard deviation of P1 over seeds {sp:.2f} mm ({dof} degrees of freedom). "
           "A difference counts as outside seed noise when |Δ| > 2·SE, SE = s_p·sqrt(1/n_A + 1/n_B):", "",
           "| run A | run B | P1 A − B (mm) | 2·SE (mm) | verdict |", "|---|---|---:|---:|---|"]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d = float(vals[a].mean() - vals[b].mean())
            se2 = 2 * sp * float(np.sqrt(1 / len(vals[a]) + 1 / len(vals[b])))
            out.append(f"| {a} | {b} | {d:+.1f} | {se2:.1f} | "
                       f"{'outside seed noise' if abs(d) > se2 else 'within seed noise'} |")
    return out


# ----------------------------------------------------------------------------
# Robustness and stability (evaluation only)


def _load(config, checkpoint):
    from rtpca_jax.convert import load_model
    from rtpca_jax.train_loop import load_split

    module, params = load_model(checkpoint, model_config=config.model)
    return module, params, load_split(config.data, "test")


def run_robustness(config, checkpoint: str, workdir: str, noise_px=(0, 2, 5, 10, 20),
                   dropout=(0.0, 0.1, 0.2, 0.4), seed: int = 0) -> dict:
    from rtpca_jax import train_lib
    from rtpca_jax.inference import fill_missing

    storage.makedirs(workdir)
    module, params, test = _load(config, checkpoint)
    mesh = train_lib.make_mesh()
    predict = evaluation.make_predict_fn(module, mesh)
    f = module.spec.num_frames
    rng = np.random.default_rng(seed)

    def score(perturbed):
        preds = evaluation.predict_sequences(predict, params, perturbed, f, config.eval.batch_size, mesh,
                                            flip_tta=config.eval.flip_tta)
        r = evaluation.score_sequences(test, preds)
        return {k: r[k] for k in ("mpjpe_mm", "p_mpjpe_mm", "mpjve_mm")}

    out = {"noise": {}, "dropout": {}}
    for sigma in noise_px:
        seqs = []
        for s in test:
            w = (s.image_size or (1000, 1000))[0]
            s2 = copy.copy(s)
            s2.pose2d = (s.pose2d + rng.normal(0, sigma / w * 2, s.pose2d.shape)).astype(np.float32)
            seqs.append(s2)
        out["noise"][sigma] = score(seqs)
    for p in dropout:
        seqs = []
        for s in test:
            kp = np.concatenate([s.pose2d, np.ones(s.pose2d.shape[:-1] + (1,))], -1)
            kp[..., 2] = (rng.random(s.pose2d.shape[:-1]) >= p).astype(float)
            kp[0, :, 2] = kp[-1, :, 2] = 1.0  # keep the ends so interpolation is defined
            xy, _ = fill_missing(kp, 0.5)
            s2 = copy.copy(s)
            s2.pose2d = xy.astype(np.float32)
            seqs.append(s2)
        out["dropout"][p] = score(seqs)
    lines = ["| 2D noise sigma (px) | P1 (mm) | P2 (mm) | MPJVE (mm) |", "|---:|---:|---:|---:|"]
    lines += [f"| {k} | {v['mpjpe_mm']:.1f} | {v['p_mpjpe_mm']:.1f} | {v['mpjve_mm']:.2f} |"
              for k, v in out["noise"].items()]
    lines += ["", "| joint dropout (fraction, interpolated) | P1 (mm) | P2 (mm) | MPJVE (mm) |",
              "|---:|---:|---:|---:|"]
    lines += [f"| {k} | {v['mpjpe_mm']:.1f} | {v['p_mpjpe_mm']:.1f} | {v['mpjve_mm']:.2f} |"
              for k, v in out["dropout"].items()]
    storage.write_text(storage.join(workdir, "robustness.md"), "\n".join(lines) + "\n")
    storage.write_text(storage.join(workdir, "robustness.json"), json.dumps(out, indent=1))
    _plot(list(noise_px), {"P1": [out["noise"][s]["mpjpe_mm"] for s in noise_px],
                           "P2": [out["noise"][s]["p_mpjpe_mm"] for s in noise_px]},
          storage.join(workdir, "robustness_noise.png"), "2D noise sigma (pixels)", "error (mm)",
          "P1/P2 against Gaussian 2D noise")
    _plot(list(dropout), {"P1": [out["dropout"][p]["mpjpe_mm"] for p in dropout],
                          "P2": [out["dropout"][p]["p_mpjpe_mm"] for p in dropout]},
          storage.join(workdir, "robustness_dropout.png"), "fraction of joints dropped", "error (mm)",
          "P1/P2 against joint dropout (interpolated)")
    return out


def run_stability(config, checkpoint: str, workdir: str, clip_lengths=(27, 81, 243), min_frames: int = 600) -> dict:
    import ml_collections

    from rtpca_jax import convert, train_lib
    from rtpca_jax import model as model_lib
    from rtpca_jax.data.skeleton import get_layout
    from rtpca_jax.model.spec import as_dict

    storage.makedirs(workdir)
    module, params, test = _load(config, checkpoint)
    long = [s for s in test if s.num_frames >= min_frames]
    if not long:
        raise ValueError(f"no test sequence has {min_frames} frames or more "
                         f"(longest: {max(s.num_frames for s in test)}); lower data.downsample")
    mesh = train_lib.make_mesh()
    layout = get_layout(long[0].layout)
    base_cfg = ml_collections.ConfigDict(as_dict(module.spec))
    if base_cfg.xlr:
        base_cfg.xlr_len = None  # each clip length pools to its own coarsest pyramid length
    out: dict = {}
    for f in clip_lengths:
        try:
            p_f, cfg_f = convert.resample_frames(params, base_cfg, f)
        except ValueError as e:
            out[str(f)] = {"error": str(e)}
            continue
        m_f = model_lib.build(cfg_f)
        predict = evaluation.make_predict_fn(m_f, mesh)
        rows = {"hard_cuts": [], "cross_fade": []}
        for s in long:
            clips, idx = evaluation.eval_clips(s.pose2d, f)
            hard = evaluation.stitch(evaluation.predict_clips_tta(predict, p_f, clips.astype(np.float32), config.eval.batch_size,
                                                      mesh, layout, config.eval.flip_tta), idx, s.num_frames)
            soft = evaluation.predict_any_length(m_f, p_f, s.pose2d, flip=config.eval.flip_tta, layout=layout)
            for name, pred in (("hard_cuts", hard), ("cross_fade", soft)):
                rows[name].append((metrics.mpjve(pred, s.pose3d) * 1000, metrics.accel_error(pred, s.pose3d) * 1000,
                                   metrics.mpjpe(pred, s.pose3d) * 1000, s.num_frames))
        out[str(f)] = {k: {"mpjve_mm": float(np.average([r[0] for r in v], weights=[r[3] for r in v])),
                           "accel_mm": float(np.average([r[1] for r in v], weights=[r[3] for r in v])),
                           "mpjpe_mm": float(np.average([r[2] for r in v], weights=[r[3] for r in v]))}
                       for k, v in rows.items()}
    lines = [f"{len(long)} test sequences of {min_frames}+ frames ({sum(s.num_frames for s in long)} frames); "
             f"model frame-tied parameters resampled to each clip length.", "",
             "| clip length | stitching | P1 (mm) | MPJVE (mm) | accel. error (mm/frame²) |", "|---:|---|---:|---:|---:|"]
    for f, v in out.items():
        if "error" in v:
            lines.append(f"| {f} | - | {v['error']} | | |")
            continue
        for k, r in v.items():
            lines.append(f"| {f} | {k.replace('_', ' ')} | {r['mpjpe_mm']:.1f} | {r['mpjve_mm']:.2f} | "
                         f"{r['accel_mm']:.2f} |")
    storage.write_text(storage.join(workdir, "stability.md"), "\n".join(lines) + "\n")
    storage.write_text(storage.join(workdir, "stability.json"), json.dumps(out, indent=1))
    ok = [f for f in out if "error" not in out[f]]
    _plot([int(f) for f in ok], {f"{k} {m}": [out[f][k][m] for f in ok]
                                 for k in ("hard_cuts", "cross_fade") for m in ("mpjve_mm", "accel_mm")},
          storage.join(workdir, "stability.png"), "clip length (frames)", "error (mm)",
          "temporal errors on long sequences", logx=True)
    return out


def main(argv=None) -> int:
    from rtpca_jax.config_lib import parse_command_line
    from rtpca_jax.runtime import start

    ap = argparse.ArgumentParser(prog="python -m rtpca_jax.experiments", description=__doc__.split("\n\n")[0],
                                 epilog="every command takes --config FILE and --config.SECTION.KEY=VALUE overrides, "
                                        "read as train.py reads them")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("ablation", "robustness", "stability"):
        p = sub.add_parser(name, epilog="--config FILE (required) and --config.SECTION.KEY=VALUE overrides")
        p.add_argument("--workdir", required=True)
        if name == "ablation":
            p.add_argument("--seeds", default="0,1")
            p.add_argument("--runs", help="comma-separated subset of the runs")
        else:
            p.add_argument("--checkpoint", required=True)
    try:
        line = parse_command_line(ap, argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    a, cfg = line.args, line.configs[0]
    start(cpu_devices=cfg.train.cpu_devices)  # after the config (it may split the CPU), before any JAX work
    try:
        storage.check_reachable(a.workdir, what="work directory")
        if getattr(a, "checkpoint", None):
            storage.check_reachable(a.checkpoint, what="checkpoint")
        if a.cmd == "ablation":
            from tqdm import tqdm

            run_ablation(cfg, a.workdir, seeds=[int(s) for s in a.seeds.split(",")],
                         only=a.runs.split(",") if a.runs else None,
                         progress=lambda **kw: tqdm(unit="step", leave=False, **kw))
            print(storage.read_text(storage.join(a.workdir, "ablation.md")))
        elif a.cmd == "robustness":
            run_robustness(cfg, a.checkpoint, a.workdir)
            print(storage.read_text(storage.join(a.workdir, "robustness.md")))
        else:
            run_stability(cfg, a.checkpoint, a.workdir)
            print(storage.read_text(storage.join(a.workdir, "stability.md")))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
