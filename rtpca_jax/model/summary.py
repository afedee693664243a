"""Parameters per module and FLOPs per clip of a model config.

    python -m rtpca_jax.model.summary --config configs/rtpca_h36m_243.py
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict

import jax
import jax.numpy as jnp

from rtpca_jax import model as model_lib
from rtpca_jax.config_lib import parse_command_line


def params_per_module(params, depth: int = 1) -> "OrderedDict[str, int]":
    """Parameter counts grouped by the first ``depth`` levels of the tree."""
    out: OrderedDict[str, int] = OrderedDict()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        key = "/".join(str(getattr(p, "key", p)) for p in path[:depth])
        out[key] = out.get(key, 0) + int(leaf.size)
    return out


def flops_per_clip(module, params, batch: int = 1, train: bool = False) -> float:
    """XLA's cost-analysis FLOPs (of the lowered program) of one forward pass (or, with ``train``, one
    loss-gradient evaluation) divided by the batch size."""
    s = module.spec
    x = jnp.zeros((batch, s.num_frames, s.num_joints, s.in_dim), jnp.float32)
    if train:
        def fn(p, x):
            return jax.grad(lambda p: jnp.mean(module.apply({"params": p}, x) ** 2))(p)
    else:
        def fn(p, x):
            return module.apply({"params": p}, x)
    # the lowered (not yet optimised) program: the same count on every backend;
    # XLA:GPU's compiled program hides matmuls in cuBLAS/cuDNN calls it does not count
    cost = jax.jit(fn).trace(params, x).lower(lowering_platforms=("cpu",)).cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    if not cost or "flops" not in cost:  # some JAX builds give no count for a CPU lowering off-CPU
        return float("nan")
    return float(cost["flops"]) / batch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="--config FILE (required) and --config.SECTION.KEY=VALUE overrides, read as "
                                        "train.py reads them")
    ap.add_argument("--depth", type=int, default=1, help="tree levels to group parameters by")
    try:
        args, _, _, (cfg,) = parse_command_line(ap, argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    module = model_lib.build(cfg.model)
    s = module.spec
    params = jax.eval_shape(lambda: model_lib.init_params(module, jax.random.PRNGKey(0)))
    params = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), params)
    print(f"model {s.variant}: F={s.num_frames} J={s.num_joints} C={s.width} depth={s.depth} "
          f"heads={s.num_heads} mlp={s.mlp_ratio} tpca={s.tpca} xlr={s.xlr} "
          f"pyramid={list(s.pyramid_lengths) if s.tpca else '-'}")
    groups = params_per_module(params, args.depth)
    width = max(len(k) for k in groups)
    for k, n in groups.items():
        print(f"  {k:<{width}}  {n:>12,}")
    print(f"  {'total':<{width}}  {model_lib.count_params(params):>12,}")
    fwd = flops_per_clip(module, params)
    print(f"FLOPs per {s.num_frames}-frame clip (XLA cost analysis): forward {fwd / 1e9:.2f} GFLOP")
    return 0


if __name__ == "__main__":
    sys.exit(main())
