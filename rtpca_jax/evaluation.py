"""Evaluation reports shared by ``eval.py`` and ``train.py``: the per-action
table and ``results.json`` with its per-action and per-joint charts.

(Scoring itself is ``train_lib.score_sequences``; clip cutting and stitching
live in ``data.pipeline``.)
"""

from __future__ import annotations

from rtpca_jax import storage


def format_table(results: dict) -> str:
    """The per-action table; MPI-INF-3DHP results add PCK and AUC columns and
    a row over all valid frames pooled."""
    pck = "pck_150mm" in results
    head = f"{'action':<18} {'P1 (mm)':>9} {'P2 (mm)':>9} {'MPJVE (mm)':>11}"
    lines = [head + (f" {'PCK (%)':>8} {'AUC (%)':>8}" if pck else "")]

    def row(name, r):
        line = f"{name:<18} {r['mpjpe_mm']:>9.1f} {r['p_mpjpe_mm']:>9.1f} {r['mpjve_mm']:>11.2f}"
        return line + (f" {r['pck_150mm']:>8.1f} {r['auc']:>8.1f}" if pck else "")

    for a, r in results["per_action"].items():
        lines.append(row(a, r))
    lines.append(row("average", results))
    if pck:
        lines.append(f"{'all frames':<18} {results['pooled_mpjpe_mm']:>9.1f} {'':>9} {'':>11} "
                     f"{results['pooled_pck_150mm']:>8.1f} {results['pooled_auc']:>8.1f}")
    return "\n".join(lines)


def write_results(results: dict, out_dir: str, layout_name: str) -> str:
    """``results.json``, ``per_action_errors.png`` and ``per_joint_errors.png``
    in ``out_dir`` (local or remote); returns the JSON's path."""
    from rtpca_jax import viz
    from rtpca_jax.data.skeleton import get_layout

    storage.makedirs(out_dir)
    path = storage.join(out_dir, "results.json")
    storage.write_json(path, results)
    pa = results["per_action"]
    viz.bar_chart({a: r["mpjpe_mm"] for a, r in pa.items()}, storage.join(out_dir, "per_action_errors.png"),
                  "error (mm)", "per-action error", secondary={a: r["p_mpjpe_mm"] for a, r in pa.items()})
    viz.bar_chart(dict(zip(get_layout(layout_name).joints, results["per_joint_mm"])),
                  storage.join(out_dir, "per_joint_errors.png"), "MPJPE (mm)", "per-joint error")
    return path
