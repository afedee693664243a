"""One code path for 1 device, 8 emulated devices and 2 processes."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import child_env

HELPER = os.path.join(os.path.dirname(__file__), "helpers", "three_steps.py")


def _env(devices, **extra):
    env = child_env()
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env.update(extra)
    return env


def _run(out, devices, source=None):
    subprocess.run([sys.executable, HELPER, str(out), *([source] if source else [])], env=_env(devices),
                   check=True, capture_output=True, timeout=600)
    return dict(np.load(out))


def _compare(a, b, tol=1e-5):
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=tol, atol=tol)
    keys = [k for k in a if k not in ("losses", "devices", "processes", "moved")]
    assert keys
    assert float(a["moved"]) > 10 * tol  # the steps really changed the parameters
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in keys)
    assert worst <= tol, worst
    return worst


def test_eight_devices_match_one(tmp_path):
    one = _run(tmp_path / "one.npz", 1)
    eight = _run(tmp_path / "eight.npz", 8)
    assert int(one["devices"]) == 1 and int(eight["devices"]) == 8
    worst = _compare(one, eight)
    print(f"8 devices vs 1: max |param diff| {worst:.2e}, losses {eight['losses']}")


def _two_processes(tmp_path, source=None):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen([sys.executable, HELPER, str(tmp_path / "two.npz"), *([source] if source else [])],
                         env=_env(2, RTPCA_COORDINATOR=f"127.0.0.1:{port}", RTPCA_NUM_PROCESSES="2",
                                  RTPCA_PROCESS_ID=str(i)),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    two = dict(np.load(tmp_path / "two.npz"))
    assert int(two["devices"]) == 4 and int(two["processes"]) == 2
    return two


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    one = _run(tmp_path / "one.npz", 1)
    worst = _compare(one, _two_processes(tmp_path))
    print(f"2 processes x 2 devices vs 1 device: max |param diff| {worst:.2e}")


@pytest.mark.slow
def test_two_processes_from_tfds_match_one_process_and_the_file_source(tmp_path):
    from rtpca_jax.data.tfds_builders import build

    build("cmu_mocap", str(tmp_path / "tfds"))
    source = f"tfds:{tmp_path / 'tfds'}"
    files = _run(tmp_path / "files.npz", 1, "cmu")
    one = _run(tmp_path / "one.npz", 1, source)
    # the same clips in the same order: bit-identical losses and parameters
    np.testing.assert_array_equal(one["losses"], files["losses"])
    assert all(np.array_equal(one[k], files[k]) for k in one if k not in ("devices", "processes"))
    worst = _compare(one, _two_processes(tmp_path, source))
    print(f"tfds source, 2 processes x 2 devices vs 1 device: max |param diff| {worst:.2e}; "
          f"tfds vs file source (1 device): identical, losses {one['losses']}")


_COLLECTIVES = """
import sys, jax, numpy as np
from rtpca_jax.runtime import start
start()
from rtpca_jax import model, train_lib
from rtpca_jax.config_lib import base_config
from rtpca_jax.data import skeleton
mesh = train_lib.make_mesh()
assert mesh.devices.size == 2, mesh
counts = []
for depth in (1, 2):
    cfg = base_config("rtpca")
    cfg.model.update(dict(num_frames=27, width=8, depth=depth, num_heads=2, pyramid_levels=2))
    module = model.build(cfg.model)
    tx = train_lib.make_optimizer(cfg.train, 10)
    state = train_lib.create_state(module, tx, 0, mesh)
    step = train_lib.make_train_step(module, tx, cfg.train, mesh, train_lib.state_sharding(state, mesh),
                                     skeleton.loss_weights(skeleton.get_layout("h36m17"), cfg.train.joint_weights))
    p2 = train_lib.global_batch(np.zeros((4, 27, 17, 2), np.float32), mesh)
    p3 = train_lib.global_batch(np.zeros((4, 27, 17, 3), np.float32), mesh)
    counts.append(step.lower(state, p2, p3).compile().as_text().count(" all-reduce("))
print(*counts)
"""


def test_data_parallel_step_communicates_once_whatever_the_depth():
    """The training step's only cross-device traffic is the gradients' (and
    the loss terms') sum: as many all-reduces for depth 2 as for depth 1.
    A reduction over a whole batch-sharded activation inside the layers
    (as the backward pass's recomputation gates once used) is one more
    all-reduce per layer, each a rendezvous of the devices."""
    r = subprocess.run([sys.executable, "-c", _COLLECTIVES], env=_env(2), capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    shallow, deep = map(int, r.stdout.decode().split())
    assert 1 <= shallow == deep, (shallow, deep)
