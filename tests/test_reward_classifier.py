"""The learned reward (issue #3): a success classifier trained with BCE on labelled frames, saved and
loaded without pickle, `serl-ctrl reward-classifier`, and SAC's environment rewarded by it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from serl_ctrl import cli
from serl_ctrl.agents.config import ConfigError
from serl_ctrl.agents.reward_classifier import (META_NAME, WEIGHTS_NAME, RewardClassifierConfig,
                                                classification_metrics, frames_from_episodes,
                                                load_reward_classifier, train_reward_classifier)
from serl_ctrl.data.demos import expert_episode, record_demonstrations
from serl_ctrl.data.episodes import load_episode, load_episodes

# Small and fast: 32 px cameras, a narrow encoder, a few hundred steps.
SMALL = ["augment_pad=2", "encoder.channels=16", "hidden_dims=64,64"]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def pixel_episodes(tmp_path_factory):
    """PickCube at 32 px: clean expert episodes (successes) and noisy ones, failures kept.

    Recorded with dense rewards, which do not end an episode at its first success frame: a
    successful episode then shows the cube held up for its remaining steps (many positive frames),
    and also its approach (negatives)."""
    root = tmp_path_factory.mktemp("rc_pixels")
    clean, noisy = root / "clean", root / "noisy"
    common = dict(obs="pixels", image_size=32, reward="dense")
    record_demonstrations("pickcube", clean, 5, seed=0, **common)
    report = record_demonstrations("pickcube", noisy, 7, seed=100, noise=1.0, keep_failures=True, **common)
    assert 0 < report.successes < report.attempts, "the noisy recording should hold both outcomes"
    failed = root / "failed"
    failed.mkdir()
    for path in sorted(noisy.iterdir()):
        if not load_episode(path).is_success:
            shutil.copy(path, failed / path.name)
    return {"clean": clean, "noisy": noisy, "failed": failed}


@pytest.fixture(scope="module")
def state_episodes(tmp_path_factory):
    root = tmp_path_factory.mktemp("rc_state")
    record_demonstrations("pickcube", root / "clean", 4, seed=0, reward="dense")
    record_demonstrations("pickcube", root / "noisy", 6, seed=100, noise=1.0, keep_failures=True, reward="dense")
    return root


def _last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.strip()][-1])


# ----------------------------------------------------------------------------- labels and config


def test_frames_are_labelled_with_the_success_after_each_step(pixel_episodes):
    episodes = load_episodes(pixel_episodes["clean"])[:2]
    obs, labels, index = frames_from_episodes(episodes)
    assert sorted(obs) == ["front", "wrist"]  # default: the cameras
    assert len(labels) == sum(ep.length + 1 for ep in episodes) == len(obs["front"])
    start = 0
    for i, ep in enumerate(episodes):
        assert not labels[start]  # the reset frame is a negative
        np.testing.assert_array_equal(labels[start + 1:start + ep.length + 1], ep.success)
        np.testing.assert_array_equal(obs["wrist"][start:start + ep.length + 1], ep.observations["wrist"])
        assert (index[start:start + ep.length + 1] == i).all()
        start += ep.length + 1
    state, _, _ = frames_from_episodes(episodes, keys=["tcp_pose", "gripper"])
    assert sorted(state) == ["gripper", "tcp_pose"]
    with pytest.raises(ValueError, match="no observation key 'cube_pos'"):
        frames_from_episodes(episodes, keys=["cube_pos"])


def test_config_errors_name_the_field():
    cfg = RewardClassifierConfig.from_overrides(["lr=1e-3", "encoder.channels=8", "hidden_dims=32,32",
                                                 "keys=front,wrist"])
    assert (cfg.lr, cfg.encoder.channels, cfg.hidden_dims, cfg.keys) == (1e-3, 8, (32, 32), ("front", "wrist"))
    assert RewardClassifierConfig.from_dict(cfg.to_dict()) == cfg
    for override, field in [("lr=0", "classifier.lr"), ("steps=0", "classifier.steps"),
                            ("val_fraction=0.95", "classifier.val_fraction"), ("lrr=1", "classifier.lrr"),
                            ("encoder.pooling=max", "classifier.encoder.pooling"),
                            ("hidden_dims=0", "classifier.hidden_dims"), ("batch_size=true", "classifier.batch_size")]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            RewardClassifierConfig.from_overrides([override])
    with pytest.raises(ConfigError, match="classifier.keys"):
        RewardClassifierConfig(keys=("front", "front"))


def test_metrics_at_threshold():
    m = classification_metrics(np.array([0.9, 0.2, 0.6, 0.1, 0.4]), np.array([1, 0, 0, 0, 1], bool))
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 1, 1, 2)
    assert m["accuracy"] == pytest.approx(0.6) and m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5) and m["false_positive_rate"] == pytest.approx(1 / 3)
    assert m["majority_accuracy"] == pytest.approx(0.6)
    assert classification_metrics(np.array([0.1]), np.array([False]))["precision"] is None


# ----------------------------------------------------------------------------- learning from images


def test_image_classifier_beats_the_majority_class_on_held_out_episodes(pixel_episodes, tmp_path):
    cfg = RewardClassifierConfig.from_overrides([*SMALL, "steps=300", "val_fraction=0.3"])
    out = tmp_path / "rc"
    report = train_reward_classifier(cfg, [pixel_episodes["clean"], pixel_episodes["noisy"]], out)
    print("image classifier:", {k: report[k] for k in report if k.startswith(("val", "train", "wall"))})
    assert report["keys"] == ["front", "wrist"] and report["episodes"] == 12
    assert 0 < report["positives"] < report["frames"]
    meta = json.loads((out / META_NAME).read_text())
    val_names = meta["data"]["val_episodes"]
    # Held out by episode, with both outcomes among them.
    assert len(val_names) == report["val_episodes"] >= 2
    outcomes = {load_episode(n).is_success for n in val_names}
    assert outcomes == {True, False}
    # Honest margins: the val frames hold both classes in similar numbers (majority ~0.55-0.7).
    assert report["val_accuracy"] >= 0.8
    assert report["val_accuracy"] >= report["val_majority_accuracy"] + 0.1
    assert report["val_recall"] >= 0.7 and report["val_false_positive_rate"] <= 0.2
    assert report["val_precision"] >= 0.7

    # Round trip: the loaded files give the same predictions on the held-out frames.
    classifier = load_reward_classifier(out)
    obs, labels, _ = frames_from_episodes([load_episode(n) for n in val_names])
    probs = classifier.probabilities(obs)
    again = classification_metrics(probs, labels)
    saved = meta["metrics"]["val"]
    assert {k: again[k] for k in ("tp", "fp", "fn", "tn")} == {k: saved[k] for k in ("tp", "fp", "fn", "tn")}
    one = [classifier({k: v[i] for k, v in obs.items()}) for i in (0, len(labels) // 2, len(labels) - 1)]
    np.testing.assert_allclose(one, probs[[0, len(labels) // 2, len(labels) - 1]], atol=1e-6)
    assert load_reward_classifier(out / WEIGHTS_NAME).probabilities(obs).tolist() == probs.tolist()


def test_load_errors_name_the_file_or_key(pixel_episodes, tmp_path):
    cfg = RewardClassifierConfig.from_overrides([*SMALL, "steps=2", "keys=front"])
    out = tmp_path / "rc"
    train_reward_classifier(cfg, [pixel_episodes["clean"]], out)
    classifier = load_reward_classifier(out / META_NAME)
    with pytest.raises(KeyError, match="no key 'front'"):
        classifier({"wrist": np.zeros((32, 32, 3), np.uint8)})
    with pytest.raises(ValueError, match="'front' has shape"):
        classifier({"front": np.zeros((64, 64, 3), np.uint8)})
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_reward_classifier(tmp_path / "nowhere")
    other = tmp_path / "other"
    train_reward_classifier(cfg, [pixel_episodes["clean"]], other)
    shutil.copy(other / WEIGHTS_NAME, out / WEIGHTS_NAME)  # a weights file of another classifier
    with pytest.raises(ValueError, match="belongs to another"):
        load_reward_classifier(out)
    (out / META_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=f"{META_NAME}: not JSON"):
        load_reward_classifier(out)


# ----------------------------------------------------------------------------- the command line


def test_cli_trains_writes_the_files_and_prints_json(pixel_episodes, tmp_path, capsys):
    out = tmp_path / "rc"
    code = cli.main(["reward-classifier", "--episodes", str(pixel_episodes["clean"]), "--episodes",
                     str(pixel_episodes["noisy"]), "--out", str(out), "--keys", "front", "--steps", "20",
                     *[a for s in SMALL for a in ("--set", s)], "--json"])
    result = _last_json(capsys.readouterr().out)
    assert code == 0, result
    for key in ("out", "frames", "positives", "val_accuracy", "val_precision", "val_recall",
                "val_false_positive_rate", "wall_s"):
        assert key in result
    assert result["keys"] == ["front"] and result["frames"] > result["positives"] > 0
    assert (out / WEIGHTS_NAME).is_file() and (out / META_NAME).is_file()
    meta = json.loads((out / META_NAME).read_text())
    assert meta["config"]["steps"] == 20 and meta["shapes"] == {"front": [32, 32, 3]}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_cli_bad_input_exits_2_naming_it(pixel_episodes, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--episodes", str(empty)], "no episodes"),
        (["--episodes", str(tmp_path / "missing")], "missing"),
        (["--episodes", str(pixel_episodes["failed"])], "no positive"),
        (["--episodes", str(pixel_episodes["clean"]), "--keys", "front,elbow"], "'elbow'"),
        (["--episodes", str(pixel_episodes["clean"]), "--set", "lr=-1"], "classifier.lr"),
        (["--episodes", str(pixel_episodes["clean"]), "--steps", "0"], "classifier.steps"),
    ]
    for args, named in cases:
        code = cli.main(["reward-classifier", *args, "--out", str(tmp_path / "rc"), "--json"])
        captured = capsys.readouterr()
        assert code == 2, (args, captured.err)
        assert named in _last_json(captured.out)["error"], (args, captured.out)
        assert named in captured.err
    assert not (tmp_path / "rc").exists()


# ----------------------------------------------------------------------------- SAC's reward


def test_run_config_rewards_with_the_classifier(state_episodes, tmp_path):
    """The training env's reward and termination come from the classifier (a state one here:
    cube and TCP position), evaluation's env keeps the task's own success."""
    from serl_ctrl.agents.train_sac import RunConfig, make_train_env
    from serl_ctrl.envs.wrappers import RewardModelWrapper

    cfg = RewardClassifierConfig.from_overrides(["steps=300", "keys=cube_pos,tcp_pose", "hidden_dims=64,64",
                                                 "val_fraction=0.3", "lr=1e-3"])
    out = tmp_path / "rc"
    report = train_reward_classifier(cfg, [state_episodes / "clean", state_episodes / "noisy"], out)
    print("state classifier:", {k: report[k] for k in report if k.startswith(("val", "wall"))})
    assert report["val_accuracy"] >= 0.8

    run = RunConfig(task="pickcube", obs="state", reward_classifier=str(out))
    env = make_train_env(run)
    assert isinstance(env, RewardModelWrapper)
    rewards, infos = [], []
    original = env.step  # record what the wrapper returns, step by step

    def step(action):
        result = original(action)
        rewards.append(result[1])
        infos.append(result[4])
        return result

    env.step = step
    expert_episode(env, seed=7)  # the scripted expert picks the cube up
    env.close()
    probs = [i["success_prob"] for i in infos]
    assert all(0.0 <= p <= 1.0 for p in probs)
    assert rewards == [float(p >= 0.5) for p in probs]
    assert rewards[-1] == 1.0 and sum(rewards) == 1.0  # ended at the first predicted success
    assert len(infos) < 100  # ... not by the time limit (the task itself no longer terminates it)
    assert probs[0] < 0.5
    true_first = next(t for t, i in enumerate(infos + [{"success": True}]) if i["success"])
    assert abs(true_first - (len(infos) - 1)) <= 3  # predicted success is within 3 steps of the true one

    eval_env = make_train_env(run, learned_reward=False)
    assert not isinstance(eval_env, RewardModelWrapper)
    eval_env.close()


def test_run_config_checks_the_classifier(pixel_episodes, tmp_path):
    from serl_ctrl.agents.train_sac import RunConfig, make_train_env

    out = tmp_path / "rc"
    train_reward_classifier(RewardClassifierConfig.from_overrides([*SMALL, "steps=1", "keys=front"]),
                            [pixel_episodes["clean"]], out)
    with pytest.raises(ValueError, match="needs observation key 'front'"):
        make_train_env(RunConfig(task="pickcube", obs="state", reward_classifier=str(out)))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        make_train_env(RunConfig(task="pickcube", obs="state", reward_classifier=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match="run.reward_classifier"):
        RunConfig(task="pickcube", reward="dense", reward_classifier=str(out))


def test_train_cli_takes_the_reward_classifier(state_episodes, tmp_path, capsys):
    out = tmp_path / "rc"
    train_reward_classifier(RewardClassifierConfig.from_overrides(["steps=5", "keys=cube_pos,tcp_pose"]),
                            [state_episodes / "clean", state_episodes / "noisy"], out)
    run = tmp_path / "run"
    code = cli.main(["train", "--task", "pickcube", "--steps", "20", "--eval-every", "20", "--eval-episodes", "1",
                     "--reward-classifier", str(out), "--out", str(run), "--no-export", "--json",
                     "--set", "sac.compile=false", "--set", "sac.hidden_dims=32,32", "--set", "sac.n_critics=2", "--set", "sac.batch_size=16",
                     "--set", "sac.learning_starts=10", "--set", "sac.random_steps=10"])
    result = _last_json(capsys.readouterr().out)
    assert code == 0, result
    assert result["env_steps"] == 20
    assert json.loads((run / "config.json").read_text())["reward_classifier"] == str(out)
    code = cli.main(["train", "--task", "pickcube", "--steps", "20", "--reward-classifier", str(tmp_path / "nope"),
                     "--out", str(tmp_path / "run2"), "--json"])
    assert code == 2 and "nope" in _last_json(capsys.readouterr().out)["error"]
