"""Build ``rtpca_jax/assets/cmu_mocap.npz`` from the CMU BVH clips.

    python datasets/build_cmu_mocap.py --bvh-dir ../shared/data/cmu_bvh

Each clip: forward kinematics, the 17 Human3.6M joints (CMU map), metres,
Z up, every second frame (120 -> 60 fps), float32.  The output's bytes depend
only on the inputs (fixed member order and zip timestamps): running the script
again reproduces the committed file bit for bit (``--check`` verifies that).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys

import numpy as np

from rtpca_jax.data.safe_npz import save_npz_deterministic
from rtpca_jax.data.sources.bvh import load_bvh_world
from rtpca_jax.data.sources.cmu import asset_path

DOWNSAMPLE = 2  # 120 fps -> 60 fps
# cmu_01_01_playground.bvh opens with a synthetic rest frame (see the BVH README).
SKIP_FRAMES = {"cmu_01_01_playground": 1}


def clip_info(stem: str) -> tuple[str, str]:
    m = re.fullmatch(r"cmu_(.+)_(train|test)_\d+", stem)
    if m:
        return m.group(1), m.group(2)
    if stem == "cmu_01_01_playground":
        return "playground", "train"
    raise ValueError(f"unexpected clip name {stem!r}")


def build(bvh_dir: str) -> dict[str, np.ndarray]:
    files = sorted(f for f in os.listdir(bvh_dir) if f.endswith(".bvh"))
    if not files:
        raise SystemExit(f"no .bvh files in {bvh_dir}")
    names, actions, splits, worlds, offsets = [], [], [], [], [0]
    for f in files:
        stem = f[:-4]
        world, fps = load_bvh_world(os.path.join(bvh_dir, f), skip_frames=SKIP_FRAMES.get(stem, 0))
        if abs(fps - 120.0) > 1e-3:
            raise SystemExit(f"{f}: expected 120 fps, got {fps}")
        world = world[::DOWNSAMPLE].astype(np.float32)
        action, split = clip_info(stem)
        names.append(stem.removeprefix("cmu_"))
        actions.append(action)
        splits.append(split)
        worlds.append(world)
        offsets.append(offsets[-1] + len(world))
        print(f"  {stem:<36} {action:<18} {split:<5} {len(world):>5} frames", file=sys.stderr)
    return dict(
        names=np.array(names), actions=np.array(actions), splits=np.array(splits),
        offsets=np.array(offsets, np.int64), world=np.concatenate(worlds), fps=np.array(120.0 / DOWNSAMPLE),
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bvh-dir", required=True)
    ap.add_argument("--out", default=asset_path())
    ap.add_argument("--check", action="store_true", help="build to a temp file and compare bytes with --out")
    args = ap.parse_args(argv)
    arrays = build(args.bvh_dir)
    target = args.out + ".check" if args.check else args.out
    save_npz_deterministic(target, arrays)
    digest = hashlib.sha256(open(target, "rb").read()).hexdigest()
    print(f"wrote {target}: {os.path.getsize(target) / 1e6:.2f} MB, sha256 {digest}")
    if args.check:
        same = open(target, "rb").read() == open(args.out, "rb").read()
        os.remove(target)
        print("identical to" if same else "DIFFERS from", args.out)
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
