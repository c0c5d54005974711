"""Recording scripted demonstrations, reading them back, and rendering them."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from serl_ctrl.data.demos import record_demonstrations, replay_frames
from serl_ctrl.data.episodes import load_episode, load_episodes
from serl_ctrl.utils.video import write_video


def test_record_state_demos_round_trip(tmp_path):
    report = record_demonstrations("pickcube", tmp_path / "demos", n=3, seed=10)
    assert report.attempts == 3 and report.success_rate == 1.0
    episodes = load_episodes(tmp_path / "demos")
    assert len(episodes) == 3
    ep = episodes[0]
    assert ep.metadata["task"] == "pickcube" and ep.metadata["seed"] == 10
    assert ep.metadata["source"] == "scripted_expert"
    assert ep.is_success and ep.success[-1] and ep.terminated[-1]
    assert ep.actions.shape == (ep.length, 4) and ep.actions.dtype == np.float32
    assert ep.observations["cube_pos"].shape == (ep.length + 1, 3)
    labels = list(dict.fromkeys(ep.instructions))
    assert "close the gripper" in labels and labels[-1] == "lift"
    # Episode i is seeded seed + i: recording again gives the same actions.
    again = record_demonstrations("pickcube", tmp_path / "again", n=1, seed=10)
    np.testing.assert_array_equal(load_episode(again.written[0]).actions, ep.actions)


def test_record_pixel_demos(tmp_path):
    report = record_demonstrations("reach", tmp_path, n=1, obs="pixels", image_size=64)
    ep = load_episode(report.written[0])
    assert ep.observations["front"].shape == (ep.length + 1, 64, 64, 3)
    assert ep.observations["wrist"].dtype == np.uint8
    assert "target_pos" not in ep.observations  # pixels: proprioception + images only


def test_failures_are_counted_and_not_written(tmp_path):
    # A huge action noise makes the expert fail: the rate reports it, no episode is written.
    report = record_demonstrations("insert", tmp_path, n=2, noise=5.0, seed=0)
    assert report.success_rate < 1.0
    assert len(report.written) == report.successes


def test_replay_video_retraces_the_recording(tmp_path):
    report = record_demonstrations("push", tmp_path / "d", n=1, seed=4)
    ep = load_episode(report.written[0])
    divergence: list[float] = []
    path = write_video(tmp_path / "push.mp4", replay_frames(ep, size=128, divergence=divergence), fps=10)
    frames = iio.imread(path)
    assert frames.shape[0] == ep.length + 1
    assert divergence and divergence[0] < 1e-6, divergence  # deterministic replay


def test_record_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="n must be >= 1"):
        record_demonstrations("reach", tmp_path, n=0)
    with pytest.raises(ValueError, match="valid tasks"):
        record_demonstrations("fly", tmp_path, n=1)
