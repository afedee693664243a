"""Rebuild docs/bvh_export.png: the main command's model (runs/default) on a
held-out shipped clip, exported with ``--out .bvh``, read back by the
product's own BVH reader and forward kinematics, drawn as a filmstrip.

    python docs/make_bvh_figure.py [runs/default]
"""

import subprocess
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rtpca_jax import bvh_export  # noqa: E402
from rtpca_jax.data import camera, sources  # noqa: E402
from rtpca_jax.data.skeleton import H36M17  # noqa: E402

ckpt = sys.argv[1] if len(sys.argv) > 1 else "runs/default"
s = [x for x in sources.load("cmu", None, subjects=["jumping_test_1"], downsample=2) if x.camera == 1][0]
with tempfile.TemporaryDirectory() as d:
    np.save(f"{d}/kp.npy", camera.image_coordinates(s.pose2d, 1000, 1000))
    subprocess.run([sys.executable, "-m", "rtpca_jax.inference", "--checkpoint", ckpt, "--keypoints", f"{d}/kp.npy",
                    "--width", "1000", "--height", "1000", "--out", f"{d}/jump.bvh", "--fps", "30"], check=True)
    joints, fps = bvh_export.read_h36m(f"{d}/jump.bvh", frame="y_up")
frames = np.linspace(60, 230, 6).astype(int)
fig = plt.figure(figsize=(12, 3.6))
for k, t in enumerate(frames):
    ax = fig.add_subplot(1, len(frames), k + 1, projection="3d")
    j = joints[t]
    for a, b in H36M17.edges:
        left = a in H36M17.left or b in H36M17.left
        ax.plot(*[[j[a, i], j[b, i]] for i in (0, 2, 1)], color="tab:red" if left else "tab:blue", lw=2)
    ax.scatter(j[:, 0], j[:, 2], j[:, 1], s=6, color="k")
    ax.set_xlim(-0.55, 0.55), ax.set_ylim(-0.55, 0.55), ax.set_zlim(-0.95, 0.8)
    ax.set_box_aspect((1.1, 1.1, 1.75))
    ax.view_init(elev=10, azim=-60)
    ax.set_xticks([]), ax.set_yticks([]), ax.set_zticks([])
    ax.set_title(f"frame {t} ({t / fps:.1f} s)", fontsize=8)
fig.suptitle("jumping_test_1 (held out): predicted, exported as BVH, read back by rtpca_jax's BVH reader "
             "(Y up, metres; red = left)", fontsize=9)
fig.tight_layout()
fig.savefig("docs/bvh_export.png", dpi=90)
print("wrote docs/bvh_export.png")
