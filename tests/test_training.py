"""Training loop: resume after SIGKILL, SIGTERM preemption, damaged
checkpoints, NaN losses, missing data; real processes where it matters."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, child_env
from rtpca_jax import checkpoints, evaluation, model, train_lib
from rtpca_jax.config_lib import base_config, load_config_file

TINY = [
    "--config.model.width=16", "--config.model.depth=1", "--config.model.num_heads=2",
    "--config.train.batch_size=4", "--config.train.cpu_devices=2", "--config.train.max_steps_per_epoch=6",
    "--config.train.num_epochs=3",
    "--config.eval.batch_size=128", "--config.train.report_baselines=False",
]


def _train_cmd(workdir, *extra):
    return [sys.executable, str(REPO / "train.py"), f"--workdir={workdir}", *TINY, *extra]


def _env():
    env = child_env()
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("XLA_FLAGS", None)
    return env


def _losses(workdir):
    with open(os.path.join(workdir, "train_log.jsonl")) as f:
        return [json.loads(line) for line in f]


def _wait_for(pred, proc, timeout=300):
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early:\n{proc.stdout.read().decode()[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.02)  # a fast host trains a whole tiny epoch in a fraction of a second


@pytest.mark.slow
def test_sigkill_and_sigterm_resume_reproduce_the_uninterrupted_run(tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(ref), env=_env(), check=True, capture_output=True, timeout=600)
    ref_losses = _losses(ref)
    assert [r["step"] for r in ref_losses] == list(range(1, 19))
    # each epoch's record says where its time went; the parts fit in the time elapsed
    ref_hist = json.load(open(ref / "history.json"))
    parts = np.cumsum([h["train_s"] + h["eval_s"] for h in ref_hist])
    elapsed = np.array([h["elapsed_s"] for h in ref_hist])
    assert all(h["train_s"] > 0 and h["eval_s"] > 0 for h in ref_hist)
    assert np.all(np.diff(elapsed) > 0) and np.all(elapsed >= parts), (elapsed, parts)

    run = tmp_path / "run"
    # 1) SIGKILL right after the first epoch's checkpoint (step 6) is complete.
    p = subprocess.Popen(_train_cmd(run), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckdir = run / "checkpoints"
    _wait_for(lambda: ckdir.is_dir() and any(d.name.isdigit() for d in ckdir.iterdir()), p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert checkpoints.Checkpoints(str(ckdir)).steps() == [6]
    # 2) restart; SIGTERM in the middle of the second epoch saves and exits cleanly. The killed run may have
    # logged steps past its checkpoint before it died (the checkpoint is written while the next epoch trains);
    # the restarted run replaces the log with the checkpoint's steps (a new file) and then appends its own, so
    # wait for the new file's seventh step, not for any seventh line.
    log = run / "train_log.jsonl"
    killed_log = log.stat().st_ino
    p = subprocess.Popen(_train_cmd(run), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _wait_for(lambda: log.stat().st_ino != killed_log and log.read_bytes().count(b"\n") >= 7, p)
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=300)[0].decode()
    assert p.returncode == 0 and "preempted" in out, out[-2000:]
    mid = checkpoints.Checkpoints(str(ckdir)).steps()[-1]
    assert 6 < mid < 18
    # 3) restart to the end.
    subprocess.run(_train_cmd(run), env=_env(), check=True, capture_output=True, timeout=600)
    got = _losses(run)
    assert [r["step"] for r in got] == [r["step"] for r in ref_losses]
    np.testing.assert_array_equal([r["loss"] for r in got], [r["loss"] for r in ref_losses])
    hist = json.load(open(run / "history.json"))
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert (run / "training_curve.png").stat().st_size > 1000
    assert any(f.startswith("events") for f in os.listdir(run / "tb"))
    # eval.py on the work directory scores the final model as the last epoch did
    r = subprocess.run([sys.executable, str(REPO / "eval.py"), f"--checkpoint={run}", f"--output={tmp_path / 'ev'}",
                        *[a for a in TINY if a.startswith(("--config.model", "--config.eval"))]],
                       env=_env(), capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    res = json.load(open(tmp_path / "ev" / "results.json"))
    assert abs(res["mpjpe_mm"] - hist[-1]["val_mpjpe_mm"]) < 1e-3
    # train.py wrote the same report on its final model
    trained = json.load(open(run / "results.json"))
    assert set(trained["per_action"]) == set(res["per_action"])
    for action, r in res["per_action"].items():
        assert abs(trained["per_action"][action]["mpjpe_mm"] - r["mpjpe_mm"]) < 1e-3, action
    assert (run / "per_joint_errors.png").stat().st_size > 1000
    assert set(res["per_action"]) == {"basketball", "jumping", "running", "soccer", "walking", "washwindow"}


def _tiny(ema_decay=0.0):
    """(module, optimiser, mesh, train config, state) of a width-8 depth-1 model."""
    cfg = base_config("rtpca")
    cfg.model.update(dict(num_frames=27, width=8, depth=1, num_heads=2))
    cfg.train.ema_decay = ema_decay
    m = model.build(cfg.model)
    mesh = train_lib.make_mesh()
    tx = train_lib.make_optimizer(cfg.train, 10)
    return m, tx, mesh, cfg.train, train_lib.create_state(m, tx, 0, mesh, ema=ema_decay > 0)


def _batch(mesh, seed=0):
    rng = np.random.default_rng(seed)
    x = train_lib.global_batch(rng.normal(size=(4, 27, 17, 2)).astype(np.float32), mesh)
    y = train_lib.global_batch(rng.normal(size=(4, 27, 17, 3)).astype(np.float32), mesh)
    return x, y


def _tiny_state(tmp_path):
    return _tiny()[-1]


def test_damaged_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    st = _tiny_state(tmp_path)
    ck = checkpoints.Checkpoints(str(tmp_path / "ck"), keep=3)
    ck.save(st, epoch=1, epoch_step=0, val_mpjpe_mm=10.0)
    st2 = st.replace(step=st.step + 7, params=jax.tree_util.tree_map(lambda a: a + 1, st.params))
    ck.save(st2, epoch=2, epoch_step=0, val_mpjpe_mm=9.0)
    # truncate every data file of the latest checkpoint
    latest = tmp_path / "ck" / "7"
    damaged = 0
    for root, _, files in os.walk(latest):
        for f in files:
            path = os.path.join(root, f)
            if os.path.getsize(path) > 0 and "metadata" not in f:
                with open(path, "r+b") as fh:
                    fh.truncate(os.path.getsize(path) // 3)
                damaged += 1
    assert damaged
    ck2 = checkpoints.Checkpoints(str(tmp_path / "ck"), keep=3)
    state, epoch, epoch_step, step = ck2.restore_latest(st)
    assert step == 0 and epoch == 1
    assert (tmp_path / "ck" / "7.damaged").is_dir()  # moved aside, not deleted
    np.testing.assert_array_equal(jax.tree_util.tree_leaves(state.params)[0],
                                  jax.tree_util.tree_leaves(st.params)[0])


def test_keeps_latest_and_best(tmp_path):
    st = _tiny_state(tmp_path)
    ck = checkpoints.Checkpoints(str(tmp_path / "ck"), keep=2)
    for i, v in enumerate([30.0, 10.0, 20.0, 40.0, 50.0]):
        ck.save(st.replace(step=st.step + i), epoch=i + 1, epoch_step=0, val_mpjpe_mm=v)
    assert ck.steps() == [1, 3, 4]  # best (10 mm) + the latest two


def test_checkpointer_set_up_logs_no_orbax_deprecation(tmp_path, caplog):
    """The checkpointer's options are set on an Orbax context, not passed as
    option objects (which Orbax 0.12.8 logs as deprecated at every start of
    ``train.py``); the option still reaches the context Orbax uses."""
    with caplog.at_level("WARNING"):
        ck = checkpoints.Checkpoints(str(tmp_path / "ck"), keep=2)
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]
    assert (ck._ckpt._context.array.saving.min_slice_bytes_for_replica_parallel
            == checkpoints.MIN_REPLICA_SLICE_BYTES)


def test_background_save_keeps_the_state_that_the_next_step_donates(tmp_path):
    """``save(wait=False)`` returns before the files are written, and the
    training step donates (reuses) the state's buffers: the checkpoint must
    hold the values saved, not the next step's."""
    m, tx, mesh, train_cfg, st = _tiny()
    step = train_lib.make_train_step(m, tx, train_cfg, mesh, train_lib.state_sharding(st, mesh), (1.0,) * 17)
    x, y = _batch(mesh)
    st, _ = step(st, x, y)
    saved = jax.tree_util.tree_map(lambda a: np.array(jax.device_get(a)), st.params)
    ck = checkpoints.Checkpoints(str(tmp_path / "ck"), keep=3)
    ck.save(st, epoch=1, epoch_step=0, val_mpjpe_mm=10.0, wait=False)
    for _ in range(3):
        st, _ = step(st, x, y)  # donates the buffers of the state just saved
    jax.block_until_ready(st)
    assert ck.steps() == [1]
    restored, epoch, _, at = checkpoints.Checkpoints(str(tmp_path / "ck")).restore_latest(st)
    assert (epoch, at) == (1, 1)
    moved = max(float(np.abs(np.asarray(a) - b).max()) for a, b in
                zip(jax.tree_util.tree_leaves(st.params), jax.tree_util.tree_leaves(saved)))
    assert moved > 1e-4  # the later steps changed the parameters
    for a, b in zip(jax.tree_util.tree_leaves(restored.params), jax.tree_util.tree_leaves(saved)):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_ema_update_closed_form():
    """``d = min(decay, (1 + t) / (10 + t))``; ``ema + (1 - d) (params - ema)``."""
    ema, p = {"w": np.zeros(2, np.float32)}, {"w": np.array([1.0, -2.0], np.float32)}
    out = train_lib.ema_update(ema, p, np.int32(1), 0.9)  # d = 2/11 < 0.9
    np.testing.assert_allclose(out["w"], np.array([1.0, -2.0]) * 9 / 11, rtol=1e-6)
    out = train_lib.ema_update({"w": np.ones(2, np.float32)}, p, np.int32(200), 0.9)  # 201/210 > 0.9: d = 0.9
    np.testing.assert_allclose(out["w"], [1.0, 1.0 + 0.1 * (-3.0)], rtol=1e-6)


def test_training_step_keeps_the_moving_average_and_it_is_what_is_evaluated_and_loaded(tmp_path):
    m, tx, mesh, train_cfg, st = _tiny(ema_decay=0.99)
    assert _tiny()[-1].ema_params is None  # off by default: the state holds no second copy
    p0 = jax.tree_util.tree_map(lambda a: np.array(jax.device_get(a)), st.params)
    for a, b in zip(jax.tree_util.tree_leaves(st.ema_params), jax.tree_util.tree_leaves(p0)):
        np.testing.assert_array_equal(np.asarray(a), b)  # starts at the initial weights
    step = train_lib.make_train_step(m, tx, train_cfg, mesh, train_lib.state_sharding(st, mesh), (1.0,) * 17)
    x, y = _batch(mesh)
    st, _ = step(st, x, y)
    p1 = jax.tree_util.tree_map(lambda a: np.array(jax.device_get(a)), st.params)
    # after step 1 the decay is min(0.99, 2/11): the average is p0 + 9/11 (p1 - p0)
    for e, a, b in zip(*(jax.tree_util.tree_leaves(t) for t in (st.ema_params, p0, p1))):
        np.testing.assert_allclose(np.asarray(e), a + 9 / 11 * (b - a), rtol=1e-5, atol=1e-7)
    st, _ = step(st, x, y)
    assert st.eval_params is st.ema_params
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(jax.tree_util.tree_leaves(st.ema_params), jax.tree_util.tree_leaves(st.params)))
    assert diff > 1e-5  # the average lags the weights
    ck = checkpoints.Checkpoints(str(tmp_path / "ck"))
    ck.save(st, epoch=1, epoch_step=0)
    ck.close()
    # eval.py, inference and convert load the average; resuming gets both back
    for a, b in zip(jax.tree_util.tree_leaves(checkpoints.load_params(str(tmp_path / "ck"))),
                    jax.tree_util.tree_leaves(st.ema_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    restored = checkpoints.Checkpoints(str(tmp_path / "ck")).restore_latest(st)[0]
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(st)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resuming_with_another_config_is_refused_and_keeps_the_checkpoint(tmp_path):
    """Not skipped as damaged: that would start training from scratch over the run."""
    st = _tiny_state(tmp_path)
    ck = checkpoints.Checkpoints(str(tmp_path / "ck"))
    ck.save(st.replace(step=st.step + 4), epoch=1, epoch_step=0)
    ck.close()
    with_ema = _tiny(ema_decay=0.99)[-1]
    with pytest.raises(checkpoints.IncompatibleCheckpointError,
                       match=r"ck/4 was written by another config: it has no ema_params, this config does "
                             r"\(train.ema_decay\)"):
        checkpoints.Checkpoints(str(tmp_path / "ck")).restore_latest(with_ema)
    cfg = base_config("rtpca")
    cfg.model.update(dict(num_frames=27, width=16, depth=1, num_heads=2))
    wider = train_lib.create_state(model.build(cfg.model), train_lib.make_optimizer(cfg.train, 10), 0,
                                   train_lib.make_mesh())
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match=r"params/embed/bias is \(8,\) there, \(16,\) in this config"):
        checkpoints.Checkpoints(str(tmp_path / "ck")).restore_latest(wider)
    cfg = base_config("rtpca")
    cfg.model.update(dict(num_frames=27, width=8, depth=1, num_heads=2))
    cfg.train.grad_clip_norm = 1.0  # optax.chain(clip, adamw): another optimiser state, the same weights
    clipped = train_lib.create_state(model.build(cfg.model), train_lib.make_optimizer(cfg.train, 10), 0,
                                     train_lib.make_mesh())
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match="optimiser state differs"):
        checkpoints.Checkpoints(str(tmp_path / "ck")).restore_latest(clipped)
    assert checkpoints.Checkpoints(str(tmp_path / "ck")).restore_latest(st)[3] == 4  # still there, still readable


_SAVE_ON_TWO_DEVICES = """
import sys, jax, numpy as np
from rtpca_jax.runtime import start
start(cpu_devices=2)
from rtpca_jax import checkpoints, model, train_lib
from rtpca_jax.config_lib import base_config
cfg = base_config("rtpca")
cfg.model.update(dict(num_frames=27, width=8, depth=1, num_heads=2))
mesh = train_lib.make_mesh()
assert mesh.devices.size == 2, mesh
st = train_lib.create_state(model.build(cfg.model), train_lib.make_optimizer(cfg.train, 10), 3, mesh)
st = st.replace(step=st.step + 5)
checkpoints.Checkpoints(sys.argv[1]).save(st, epoch=2, epoch_step=1, val_mpjpe_mm=9.0)
np.savez(sys.argv[2], *[np.asarray(a) for a in jax.tree_util.tree_leaves(st.params)])
"""


def test_a_checkpoint_saved_on_two_devices_loads_on_one(tmp_path):
    """train.cpu_devices=2 (or a pod slice) saves; eval.py and a resumed run on
    one device must read it (Orbax otherwise wants the saving devices back)."""
    subprocess.run([sys.executable, "-c", _SAVE_ON_TWO_DEVICES, str(tmp_path / "ck"), str(tmp_path / "p.npz")],
                   env=_env(), check=True, capture_output=True, timeout=300)
    saved = list(np.load(tmp_path / "p.npz").values())
    assert len(jax.devices()) == 1
    params = checkpoints.load_params(str(tmp_path / "ck"))
    for a, b in zip(jax.tree_util.tree_leaves(params), saved):
        np.testing.assert_array_equal(np.asarray(a), b)
    state, epoch, epoch_step, step = checkpoints.Checkpoints(str(tmp_path / "ck")).restore_latest(_tiny_state(tmp_path))
    assert (epoch, epoch_step, step) == (2, 1, 5)
    for a, b in zip(jax.tree_util.tree_leaves(state.params), saved):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_cpu_devices_cannot_change_once_jax_has_started(caplog):
    from rtpca_jax import runtime

    assert len(jax.devices("cpu")) == 1  # this process's backends are up
    assert runtime.split_cpu(1) is False  # nothing asked
    with caplog.at_level("WARNING"):
        assert runtime.split_cpu(2) is False
    assert "cpu_devices=2 ignored" in caplog.text
    assert len(jax.devices("cpu")) == 1


def test_a_batch_the_cpu_split_does_not_divide_names_cpu_devices(monkeypatch, tmp_path):
    """default.py splits the CPU into 8 devices; a batch of 4 must say which
    setting to change, not only that the devices do not divide it."""
    import types

    from rtpca_jax import train_loop

    cfg = load_config_file(str(REPO / "configs" / "default.py"))
    cfg.train.batch_size = 4
    cfg.train.cpu_devices = 3
    three = types.SimpleNamespace(devices=np.array([jax.devices("cpu")[0]] * 3))
    monkeypatch.setattr(train_lib, "make_mesh", lambda *a, **k: three)
    with pytest.raises(ValueError, match=r"batch_size=4 is not divisible by the 3 devices "
                                         r"\(train.cpu_devices=3 split the CPU; set it to a divisor"):
        train_loop._Run(cfg, str(tmp_path), None)
    # a count forced through XLA_FLAGS wins over train.cpu_devices: no hint naming it then
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    cfg.train.cpu_devices = 8
    with pytest.raises(ValueError, match=r"by the 3 devices$"):
        train_loop._Run(cfg, str(tmp_path), None)


def test_the_training_step_compiles_during_set_up_and_not_again_at_the_first_step(tmp_path, monkeypatch):
    """The run compiles its step in a background thread while the state is
    initialised; the epoch's first call then runs that executable: no
    compilation of the step happens in the epoch (JAX's compile events).  The
    curve is drawn in a worker thread; its failure still reaches the caller."""
    import threading

    from rtpca_jax import train_loop

    cfg = load_config_file(str(REPO / "configs" / "default.py"))
    cfg.model.update(dict(width=8, depth=1, num_heads=2))
    cfg.train.update(dict(batch_size=4, cpu_devices=1, max_steps_per_epoch=2, num_epochs=1))
    events = []

    def listener(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append((kw.get("fun_name"), threading.current_thread().name))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        run = train_loop._Run(cfg, str(tmp_path), None)
        ahead = run.compile_ahead
        ahead.wait()
        assert ahead.error is None
        assert [t for f, t in events if f == "jit(step)"] == ["rtpca-compile-ahead"], events
        events.clear()
        with train_loop._Preemption() as preempt:
            losses, _ = run.train_epoch(0, 0, preempt, None)
        assert [f for f, _ in events if f == "jit(step)"] == [], events
        assert run.compile_ahead is None
        run.end_epoch(0, 2, losses, 1.0)  # the curve is drawn in a worker thread
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert len(losses) == 2 and all(np.isfinite(losses))
    run._wait_plot()
    assert (tmp_path / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a plot that fails is reported, at the latest by close(), after the checkpoints and logs are closed
    def fail(*a):
        raise OSError("disk full")

    monkeypatch.setattr(train_loop, "plot_curves", fail)
    run.end_epoch(0, 2, losses, 1.0)
    with pytest.raises(OSError, match="disk full"):
        run.close()
    assert json.loads((tmp_path / "history.json").read_text())[-1]["epoch"] == 1
    assert checkpoints.Checkpoints(str(tmp_path / "checkpoints")).steps() == [2]


def test_start_tunes_the_host_allocator_only_for_one_cpu_device(monkeypatch):
    """One malloc arena serialises several CPU device threads (README,
    Benchmarks: 8 devices 1.24x slower with it), so a split CPU keeps glibc's
    default arenas; one device (the paper-size step) keeps the tuning."""
    from rtpca_jax import runtime

    calls = []
    monkeypatch.setattr(runtime, "configure_host_allocator", lambda: calls.append("alloc"))
    monkeypatch.setattr(runtime, "split_cpu", lambda n: calls.append(f"split {n}"))
    monkeypatch.setattr(runtime, "maybe_initialize", lambda: None)
    runtime.start(cpu_devices=8, compilation_cache=False)
    assert calls == ["split 8"]
    calls.clear()
    runtime.start(compilation_cache=False)
    assert calls == ["alloc", "split 0"]
    calls.clear()
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")  # a forced split counts too
    runtime.start(compilation_cache=False)
    assert calls == ["split 0"]


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path):
    wd = tmp_path / "nan"
    r = subprocess.run(_train_cmd(wd, "--config.train.lr=1e30", "--config.train.grad_clip_norm=0",
                                  "--config.train.num_epochs=2"),
                       env=_env(), capture_output=True, timeout=600)
    err = r.stderr.decode()
    assert r.returncode == 1
    assert "non-finite training loss" in err and "at step" in err, err[-2000:]
    assert not (wd / "checkpoints").exists() or all(
        not d.name.isdigit() or int(d.name) < 10 for d in (wd / "checkpoints").iterdir())


def test_missing_dataset_names_the_file(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "train.py"), f"--workdir={tmp_path / 'w'}",
                        f"--config={REPO / 'configs' / 'rtpca_h36m_243.py'}",
                        f"--config.data.root={tmp_path / 'nowhere'}"],
                       env=_env(), capture_output=True, timeout=600)
    assert r.returncode == 1
    assert f"{tmp_path / 'nowhere'}/data_3d_h36m.npz: file not found" in r.stderr.decode()


def test_presets_exist_for_every_dataset():
    from rtpca_jax import config_lib
    from rtpca_jax.data import skeleton

    for name, source, layout in [("rtpca_h36m_243", "h36m", skeleton.H36M17),
                                 ("rtpca_h36m_cpn_243", "h36m", skeleton.H36M17),
                                 ("rtpca_humaneva15_243", "humaneva15", skeleton.HUMANEVA15),
                                 ("rtpca_3dhp_243", "mpi_inf_3dhp", skeleton.MPI3DHP17)]:
        cfg = load_config_file(str(REPO / "configs" / f"{name}.py"))
        assert cfg.data.source == source and cfg.data.split == "subjects"
        config_lib.validate(cfg)
        assert layout.num_joints == cfg.model.num_joints
        # the loss weights come from the joint layout
        assert len(skeleton.loss_weights(layout, cfg.train.joint_weights)) == layout.num_joints
    # 3DHP carries the H36M limb weights over by joint name
    w = dict(zip(skeleton.MPI3DHP17.joints, skeleton.MPI3DHP17.joint_weights))
    h36m = dict(zip(skeleton.H36M17.joints, OFFICIAL_H36M_WEIGHTS))
    limbs = [f"{s}_{j}" for s in ("left", "right") for j in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle")]
    assert [w[j] for j in limbs] == [h36m[j] for j in limbs]


OFFICIAL_H36M_WEIGHTS = (1, 1, 2.5, 2.5, 1, 2.5, 2.5, 1, 1, 1, 1.5, 1.5, 4, 4, 1.5, 4, 4)  # OFFICIAL_MODEL.md


def test_h36m_layout_weights_are_the_official_ones():
    from rtpca_jax.data import skeleton

    assert skeleton.H36M17.joint_weights == OFFICIAL_H36M_WEIGHTS


def test_joint_weights_are_the_layouts_unless_the_config_names_them():
    from rtpca_jax.data import skeleton

    assert skeleton.loss_weights(skeleton.H36M17) == skeleton.H36M17.joint_weights
    assert skeleton.loss_weights(skeleton.H36M17, [2.0] * 17) == (2.0,) * 17
    with pytest.raises(ValueError, match="train.joint_weights=.*17 non-negative weights"):
        skeleton.loss_weights(skeleton.H36M17, [1.0] * 15)
    with pytest.raises(ValueError, match="no training loss weights"):
        skeleton.loss_weights(skeleton.COCO17)


def test_padded_evaluation_batches_equal_unpadded_and_compile_few_shapes():
    from conftest import random_params

    m = model.build({"variant": "rtpca", "num_frames": 9, "width": 8, "depth": 1, "num_heads": 2,
                     "pyramid_levels": 1})
    params = random_params(m)
    mesh = train_lib.make_mesh()
    predict = evaluation.make_predict_fn(m, mesh)
    clips = np.random.default_rng(0).uniform(-1, 1, (13, 9, 17, 2)).astype(np.float32)
    want = np.concatenate([np.asarray(m.apply({"params": params}, clips[i:i + 1], train=False)) for i in range(13)])
    for n in (13, 5, 1):  # 8 + 5 padded to 8; 5 -> 8; 1 -> 1
        got = evaluation.predict_clips(predict, params, clips[:n], 8, mesh)
        np.testing.assert_allclose(got, want[:n], atol=1e-5)
    assert predict._cache_size() == 2  # batch shapes 8 and 1 only
    assert [evaluation.pad_bucket(n, 64, 1) for n in (1, 2, 3, 5, 33, 64)] == [1, 2, 4, 8, 64, 64]
    assert [evaluation.pad_bucket(n, 48, 8) for n in (1, 9, 17, 40)] == [8, 16, 32, 48]


def test_device_prefetch_keeps_order_and_places_batches_on_the_mesh():
    mesh = train_lib.make_mesh()
    produced = []

    def source():
        for i in range(5):
            produced.append(i)
            yield np.full((2, 3), i, np.float32), np.full((2,), -i, np.float32)

    it = train_lib.device_prefetch(source(), mesh, size=2)
    a, b = next(it)
    assert produced == [0, 1, 2]  # two batches already transferred ahead of the one in use
    assert isinstance(a, jax.Array) and a.sharding.mesh.shape == mesh.shape
    rest = [(float(x[0, 0]), float(y[0])) for x, y in it]
    assert (float(a[0, 0]), float(b[0])) == (0.0, 0.0) and rest == [(i, -i) for i in range(1, 5)]


def test_profile_steps_are_validated(tmp_path):
    from rtpca_jax.tb_writer import Profile

    assert Profile("", str(tmp_path)).first is None
    assert (Profile("3:7", str(tmp_path)).first, Profile("3:7", str(tmp_path)).last) == (3, 7)
    for bad in ("7:3", "0:2", "5", "a:b"):
        with pytest.raises(ValueError, match="profile_steps"):
            Profile(bad, str(tmp_path))



@pytest.mark.parametrize("field,value,message", [
    ("train.batch_size", 0, "train.batch_size=0: expected a positive integer"),
    ("train.lr_decay", 1.5, r"train.lr_decay=1.5: expected a factor in \(0, 1\]"),
    ("data.source", "h36", "data.source='h36': expected one of"),
    ("train.joint_weights", (1.0, 2.0), "train.joint_weights=.*17 non-negative weights"),
    ("data.clip_stride", -3, "data.clip_stride=-3: expected a positive integer or None"),
    ("data.split", "official", "data.split='official': expected one of"),
    ("data.source", "bvh", "data.split='builtin': expected \"subjects\" with data.source='bvh'"),
    ("train.ema_decay", 1.0, r"train.ema_decay=1.0: expected 0 \(off\) or a decay in \(0, 1\)"),
])
def test_config_sections_are_validated_naming_the_field(tmp_path, field, value, message):
    from rtpca_jax import config_lib, train_loop

    cfg = config_lib.load_config_file(str(REPO / "configs" / "default.py"))
    section, key = field.split(".")
    cfg[section][key] = value
    with pytest.raises(ValueError, match=message):
        config_lib.validate(cfg)
    with pytest.raises(ValueError, match=message):  # before any data is read or anything written
        train_loop.train_and_evaluate(cfg, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_named_split_needs_names():
    from rtpca_jax import config_lib

    cfg = load_config_file(str(REPO / "configs" / "default.py"), ["data.split=subjects",
                                                                   "data.test_subjects=('washwindow_test_1',)"])
    with pytest.raises(ValueError, match='data.train_subjects=\\(\\): expected at least one name with data.split="subjects"'):
        config_lib.validate(cfg)
    cfg.data.train_subjects = ("walking_train_1",)
    config_lib.validate(cfg)
    from rtpca_jax.train_loop import load_split

    assert {s.subject for s in load_split(cfg.data, "train")} == {"walking_train_1"}  # one clip, 4 cameras
    assert {s.subject for s in load_split(cfg.data, "test")} == {"washwindow_test_1"}


def test_every_command_reads_configs_through_config_flags(tmp_path):
    """The argparse commands take --config FILE and --config.a.b=v as train.py does."""
    from rtpca_jax import bench, config_lib, experiments
    from rtpca_jax.model import summary

    files, overrides, rest = config_lib.split_config_args(
        ["--config", "a.py", "--case", "x", "--config.model.width=8", "--config.train.lr", "0.1", "--reps", "2"])
    assert (files, overrides, rest) == (["a.py"], ["model.width=8", "train.lr=0.1"], ["--case", "x", "--reps", "2"])
    import argparse

    with pytest.raises(ValueError, match="an override needs a --config FILE"):
        config_lib.parse_command_line(argparse.ArgumentParser(), ["--config.model.width=3"], min_configs=0)
    with pytest.raises(ValueError, match="expected 1 --config FILE, got 2"):
        config_lib.parse_command_line(argparse.ArgumentParser(), ["--config", "a.py", "--config", "b.py"])
    cfg = load_config_file(str(REPO / "configs" / "default.py"), ["model.width=8", "data.flip=false"])
    assert cfg.model.width == 8 and cfg.data.flip is False and cfg.is_locked
    default = str(REPO / "configs" / "default.py")
    for main, argv in ((summary.main, ["--config", default]),
                       (bench.main, ["--config", default, "--case", "inference", "--batch", "1", "--reps", "1"]),
                       (experiments.main, ["robustness", "--config", default, "--checkpoint", str(tmp_path),
                                           "--workdir", str(tmp_path / "w")])):
        with pytest.raises(ValueError, match="unknown field widht"):
            load_config_file(default, ["model.widht=8"])
        assert main(argv + ["--config.model.widht=8"]) == 2, main
        assert not (tmp_path / "w").exists()


def test_train_py_refuses_a_misspelt_config_field(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "--config.train.num_epoch=1",
                           f"--workdir={tmp_path / 'wd'}"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0
    assert "num_epoch" in proc.stderr
    assert not (tmp_path / "wd").exists()


@pytest.fixture
def no_cache_config():
    """Leave JAX's cache settings as found (no compilation happens meanwhile)."""
    saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size)
    jax.config.update("jax_compilation_cache_dir", None)
    yield
    jax.config.update("jax_compilation_cache_dir", saved[0])
    jax.config.update("jax_compilation_cache_max_size", saved[1])


def test_compilation_cache_location(tmp_path, monkeypatch, caplog, no_cache_config):
    from rtpca_jax import runtime

    monkeypatch.setenv("RTPCA_COMPILATION_CACHE", "off")
    assert runtime.enable_compilation_cache() is None and jax.config.jax_compilation_cache_dir is None
    # default: under $XDG_CACHE_HOME, bounded
    monkeypatch.setenv("RTPCA_COMPILATION_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    want = str(tmp_path / "xdg" / "rtpca-jax" / "xla")
    assert runtime.enable_compilation_cache() == want and os.path.isdir(want)
    assert jax.config.jax_compilation_cache_dir == want
    assert jax.config.jax_compilation_cache_max_size == 2 << 30
    # a directory JAX already has wins over the variable
    monkeypatch.setenv("RTPCA_COMPILATION_CACHE", str(tmp_path / "other"))
    assert runtime.enable_compilation_cache() == want and not (tmp_path / "other").exists()
    # a path that cannot be a directory: off, with a warning naming it
    jax.config.update("jax_compilation_cache_dir", None)
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("RTPCA_COMPILATION_CACHE", str(tmp_path / "a_file" / "xla"))
    with caplog.at_level("WARNING"):
        assert runtime.enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir is None
    assert "a_file" in caplog.text and "RTPCA_COMPILATION_CACHE" in caplog.text
    # a bucket path: host-local state only, off with a warning (nothing is contacted)
    caplog.clear()
    monkeypatch.setenv("RTPCA_COMPILATION_CACHE", "gs://some-bucket/xla")
    with caplog.at_level("WARNING"):
        assert runtime.enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir is None and "gs://some-bucket/xla" in caplog.text


_CACHED_PROGRAM = """
import json, sys
import jax, jax.numpy as jnp
from rtpca_jax.runtime import start
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
start()
x = jnp.arange(64.0).reshape(8, 8)
y = jax.jit(lambda a: jnp.tanh(a @ a.T / 100.0).sum(axis=0))(x)
print(json.dumps({"dir": jax.config.jax_compilation_cache_dir, "y": [float(v) for v in y],
                  "hits": events.count("/jax/compilation_cache/cache_hits")}))
"""


def test_a_second_command_loads_the_compiled_program_from_the_cache(tmp_path):
    """The real protocol, in two fresh processes: the first compiles and
    stores, the second finds the entry and computes the same numbers."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", RTPCA_COMPILATION_CACHE=str(tmp_path / "cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    runs = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", _CACHED_PROGRAM], env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    assert runs[0]["dir"] == str(tmp_path / "cache")
    assert any(f.endswith("-cache") for f in os.listdir(tmp_path / "cache"))
    assert runs[0]["hits"] == 0 and runs[1]["hits"] >= 1
    assert runs[1]["y"] == runs[0]["y"]
