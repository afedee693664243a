#!/usr/bin/env bash
# Rebuild docs/demo.gif: the main command's model (python train.py -> runs/default)
# on 150 frames of a held-out shipped clip (soccer_test_1, virtual camera 2, 30 fps).
set -euo pipefail
python -c "
import numpy as np
from rtpca_jax.data import camera, sources
s = [x for x in sources.load('cmu', None, subjects=['soccer_test_1'], downsample=2) if x.camera == 2][0]
np.save('/tmp/soccer_test_1_cam2.npy', camera.image_coordinates(s.pose2d, 1000, 1000)[:150])
"
python -m rtpca_jax.inference --checkpoint runs/default --keypoints /tmp/soccer_test_1_cam2.npy \
    --width 1000 --height 1000 --out /tmp/soccer_test_1_cam2_3d.npz \
    --render docs/demo.gif --render-every 2 --render-size 560x280 --fps 30
