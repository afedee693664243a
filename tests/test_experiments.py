"""The experiment commands end to end on a tiny budget."""

import json
import os

import pytest

from conftest import REPO
from rtpca_jax import experiments

TINY = ["--config.model.width=8", "--config.model.depth=1", "--config.model.num_heads=2",
        "--config.train.batch_size=8", "--config.train.num_epochs=1", "--config.train.max_steps_per_epoch=3",
        "--config.eval.batch_size=256", "--config.data.split=subjects",
        "--config.data.train_subjects=('walking_train_1','running_train_1','jumping_train_1')",
        "--config.data.test_subjects", "('washwindow_test_1',)"]


@pytest.mark.slow
def test_ablation_robustness_stability(tmp_path):
    cfg = str(REPO / "configs" / "default.py")
    wd = tmp_path / "abl"
    args = ["ablation", "--config", cfg, "--workdir", str(wd), "--seeds", "0,1", "--runs", "ste", *TINY]
    assert experiments.main(args) == 0
    table = (wd / "ablation.md").read_text()
    assert "| ste |" in table and "±" in table
    data = json.load(open(wd / "ablation.json"))
    assert [r["seed"] for r in data["runs"]] == [0, 1]
    r = data["runs"][0]
    assert r["variant"] == "ste" and r["params"] > 0 and r["flops_per_clip"] > 0 and r["steps"] == 3
    assert (wd / "p1_vs_flops.png").stat().st_size > 1000
    # resumable: finished runs are not repeated
    stamp = os.path.getmtime(wd / "ste_seed0" / "result.json")
    assert experiments.main(args) == 0
    assert os.path.getmtime(wd / "ste_seed0" / "result.json") == stamp

    ck = str(wd / "ste_seed0")
    assert experiments.main(["robustness", "--config", cfg, "--checkpoint", ck, "--workdir", str(tmp_path / "rob"),
                             *TINY]) == 0
    rob = json.load(open(tmp_path / "rob" / "robustness.json"))
    assert set(rob) == {"noise", "dropout"} and len(rob["noise"]) == 5
    # no perturbation = the training run's own final evaluation of the same checkpoint
    clean = json.load(open(wd / "ste_seed0" / "result.json"))["p1_mm"]
    assert rob["noise"]["0"]["mpjpe_mm"] == pytest.approx(clean, rel=1e-4)
    assert rob["dropout"]["0.0"]["mpjpe_mm"] == pytest.approx(clean, rel=1e-4)
    # noisy 2D input makes the predicted motion jitter: velocity error grows with the noise
    vel = [rob["noise"][k]["mpjve_mm"] for k in ("0", "5", "20")]
    assert vel[0] < vel[1] < vel[2], vel
    assert (tmp_path / "rob" / "robustness_noise.png").exists()

    assert experiments.main(["stability", "--config", cfg, "--checkpoint", ck, "--workdir", str(tmp_path / "st"),
                             *TINY]) == 0
    st = json.load(open(tmp_path / "st" / "stability.json"))
    assert set(st) == {"27", "81", "243"}
    for f in st.values():
        assert set(f) == {"hard_cuts", "cross_fade"}


def test_ablation_runs_respect_the_frame_count():
    from rtpca_jax.config_lib import load_config_file

    runs = experiments.ablation_runs(load_config_file(str(REPO / "configs" / "default.py")).model)
    assert list(runs) == ["ste", "ste_tpca", "rtpca_r2_l3", "rtpca_r2_l2", "rtpca_r2_l1", "rtpca_r3_l2",
                          "rtpca_r4_l1"]
    with pytest.raises(ValueError, match="unknown ablation run"):
        experiments.run_ablation(load_config_file(str(REPO / "configs" / "default.py")), "/tmp/x", only=["nope"])


def test_seed_noise_verdicts_follow_the_pooled_two_standard_error_rule():
    # runs a: 10, 12 / b: 20, 22 / c: 11, 13; each variance 2, pooled s_p = sqrt((2+2+2)/3) = 1.414;
    # 2·SE = 2 * 1.414 * sqrt(1/2 + 1/2) = 2.83
    by_run = {n: [{"p1_mm": v} for v in vals] for n, vals in {"a": (10, 12), "b": (20, 22), "c": (11, 13)}.items()}
    lines = experiments.seed_noise_lines(by_run)
    assert "1.41 mm (3 degrees of freedom)" in lines[0]
    rows = {tuple(c.strip() for c in ln.split("|")[1:3]): ln for ln in lines if ln.startswith("| ") and "run A" not in ln}
    assert "-10.0 | 2.8 | outside seed noise" in rows[("a", "b")]
    assert "-1.0 | 2.8 | within seed noise" in rows[("a", "c")]
    # unequal spreads are pooled: d has variance 0, e has 8 -> s_p = 2, 2·SE = 4
    lines = experiments.seed_noise_lines({"d": [{"p1_mm": 5}, {"p1_mm": 5}], "e": [{"p1_mm": 7}, {"p1_mm": 11}]})
    assert "| d | e | -4.0 | 4.0 | within seed noise |" in lines
    assert experiments.seed_noise_lines({"a": [{"p1_mm": 1}]})[0].startswith("(seed noise")
