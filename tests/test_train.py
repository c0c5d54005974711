"""serl-ctrl train: configuration, the training loop, resume, export (SAC)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serl_ctrl.agents.config import ConfigError
from serl_ctrl.agents.train_sac import RunConfig, train_sac
from serl_ctrl.data.demos import record_demonstrations

SMALL = ["sac.compile=false", "sac.hidden_dims=64,64", "sac.n_critics=2", "sac.utd=1", "sac.batch_size=64",
         "sac.learning_starts=50", "sac.random_steps=50"]


def test_bad_configs_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="run.obs='depth'"):
        RunConfig(obs="depth")
    with pytest.raises(ConfigError, match="run.steps"):
        RunConfig(steps=0)
    with pytest.raises(ConfigError, match="unknown field.*run.stepz"):
        RunConfig.from_dict({"stepz": 10})
    with pytest.raises(ConfigError, match="sac.utd"):
        RunConfig.load(overrides=["sac.utd=0"])
    with pytest.raises(ConfigError, match="sac"):
        RunConfig.load(overrides=["sac.no_such_field=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: reach\nsac:\n  gamma: 2.0\n")
    with pytest.raises(ConfigError, match="sac.gamma"):
        RunConfig.load(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        RunConfig.load(str(tmp_path / "missing.yaml"))


def test_yaml_flags_and_overrides_compose(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: push\nsteps: 500\nsac:\n  utd: 8\n  n_critics: 4\n")
    cfg = RunConfig.load(str(path), {"steps": 700, "obs": None}, ["sac.n_critics=6"])
    assert (cfg.task, cfg.steps, cfg.obs, cfg.sac.utd, cfg.sac.n_critics) == ("push", 700, "state", 8, 6)
    cfg = RunConfig.load(None, {"env_id": "Pendulum-v1"})
    assert cfg.task is None and cfg.env_id == "Pendulum-v1"


def test_demos_must_match_the_env(tmp_path):
    record_demonstrations("reach", tmp_path / "reach", n=1)
    cfg = RunConfig.load(None, {"task": "pickcube", "demos": str(tmp_path / "reach"), "steps": 10}, SMALL)
    with pytest.raises(ValueError, match="lacks observation 'cube_pos'"):
        train_sac(cfg, tmp_path / "run")


def test_train_resume_and_export(tmp_path):
    """A run stopped at 150 steps and resumed to 300 continues from its checkpoint and exports a
    policy whose ONNX actions match the run's own evaluation."""
    record_demonstrations("reach", tmp_path / "demos", n=3)
    values = {"task": "reach", "demos": str(tmp_path / "demos"), "eval_every": 150, "eval_episodes": 2,
              "checkpoint_every": 150}
    run = tmp_path / "run"
    first = train_sac(RunConfig.load(None, {**values, "steps": 150}, SMALL), run, export=False)
    assert first["env_steps"] == 150 and first["updates"] == 101  # one UTD step per env step after 50
    with pytest.raises(FileExistsError, match="--resume"):
        train_sac(RunConfig.load(None, {**values, "steps": 300}, SMALL), run)
    result = train_sac(RunConfig.load(None, {**values, "steps": 300}, SMALL), run, resume=True)
    assert result["env_steps"] == 300 and result["updates"] == 251
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["150", "300"]
    assert (run / "learning_curve.png").stat().st_size > 1000
    card = json.loads((run / "policy.json").read_text())
    assert card["algo"] == "sac" and card["task"] == "reach" and len(card["sha256"]) == 64
    assert card["success_rate"] == result["success_rate"]

    from serl_ctrl.runtime import load_policy
    from serl_ctrl.runtime.evaluate import evaluate, make_eval_env

    policy = load_policy(run / "policy.onnx")
    env = make_eval_env(policy)
    report = evaluate(policy, env, episodes=2, seed=10_000)
    env.close()
    assert report["success_rate"] == pytest.approx(result["success_rate"])  # same seeds, same policy
    assert np.isfinite(report["act_ms_p50"]) and report["infer_ms_p50"] < 5.0


def test_pixel_run_sizes_its_replay_buffer_to_the_run(tmp_path):
    """The default replay capacity (1M frames, ~96 GiB of 2x128 px images) would refuse a pixel run
    on this machine; the run only ever stores `steps` transitions and gets a buffer that size."""
    cfg = RunConfig.load(None, {"task": "pickcube", "obs": "pixels", "steps": 30, "eval_every": 30,
                                "eval_episodes": 1, "checkpoint_every": 30}, SMALL)
    assert cfg.sac.replay_capacity == 1_000_000
    result = train_sac(cfg, tmp_path / "run", export=False)
    assert result["env_steps"] == 30 and result["updates"] == 0  # learning starts at 50


def test_train_imitation_command_exports_an_onnx_chunk_policy(tmp_path):
    """serl-ctrl train --algo bc: trains on demos, evaluates, exports a chunked policy.onnx that
    serl-ctrl eval runs through the same runtime."""
    import subprocess
    import sys

    record_demonstrations("reach", tmp_path / "demos", n=5)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "serl_ctrl.cli", "train", "--algo", "bc", "--task", "reach", "--demos",
           str(tmp_path / "demos"), "--steps", "200", "--eval-episodes", "3", "--out", str(run), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["algo"] == "bc" and 0.0 <= result["success_rate"] <= 1.0
    card = json.loads((run / "policy.json").read_text())
    assert card["algo"] == "bc" and card["parity_max_abs_diff"] <= 1e-5
    from serl_ctrl.runtime import load_policy

    policy = load_policy(run / "policy.onnx")
    assert policy.spec.horizon > 1 and policy.spec.n_action_steps < policy.spec.horizon
    bad = subprocess.run([sys.executable, "-m", "serl_ctrl.cli", "train", "--algo", "diffusion", "--task", "reach",
                          "--out", str(tmp_path / "x"), "--json"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--demos" in bad.stdout.strip().splitlines()[-1]
    # --obs is SAC's: imitation learns from what the demos hold, so the flag is refused, not ignored
    obs = subprocess.run([*cmd[:cmd.index("--out")], "--obs", "pixels", "--out", str(tmp_path / "z"), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert obs.returncode == 2 and "--obs" in obs.stdout.strip().splitlines()[-1], obs.stdout + obs.stderr
    assert not (tmp_path / "z").exists()
    # a stochastic (DDPM) sampler cannot be exported: refused before any training, naming the field
    ddpm = subprocess.run([sys.executable, "-m", "serl_ctrl.cli", "train", "--algo", "diffusion", "--task", "reach",
                           "--demos", str(tmp_path / "demos"), "--set", "eta=1", "--out", str(tmp_path / "y"),
                           "--json"], capture_output=True, text=True, timeout=120)
    assert ddpm.returncode == 2 and "eta" in ddpm.stdout + ddpm.stderr, ddpm.stdout + ddpm.stderr
    assert not (tmp_path / "y" / "model.safetensors").exists()


def test_sac_learns_reach_within_two_minutes(tmp_path, one_torch_thread):
    """The CI-sized learning check: SAC with the default RLPD agent (10 critics, 256x256, UTD 4),
    10 scripted demos and dense rewards reaches a random target within 2 cm on >= 90% of 10 fixed
    evaluation seeds, within 1,500 env steps (~1-2 minutes on 2 cores; it stops at the first evaluation >= 90%). An untrained policy
    reaches < 30% of them, so the test measures learning, not an easy task."""
    import time

    from serl_ctrl.agents.sac import SACAgent
    from serl_ctrl.agents.train_sac import evaluate_agent, make_train_env

    demos = tmp_path / "demos"
    record_demonstrations("reach", demos, 10, reward="dense", seed=1)
    cfg = RunConfig.load(None, {"task": "reach", "reward": "dense", "steps": 1500, "demos": str(demos),
                                "eval_every": 200, "eval_episodes": 10, "seed": 0},
                         ["sac.learning_starts=100", "sac.random_steps=0"])
    env = make_train_env(cfg)
    untrained = evaluate_agent(SACAgent(env.observation_space, env.action_space, cfg.sac, seed=0), env, 10)
    assert untrained["success_rate"] < 0.3, untrained
    start = time.perf_counter()
    result = train_sac(cfg, tmp_path / "run", export=False, stop_at=0.9)
    print(f"reach: {result['success_rate']:.0%} after {result['env_steps']} env steps, "
          f"{time.perf_counter() - start:.0f} s")
    assert result["success_rate"] >= 0.9, result
