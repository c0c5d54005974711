"""The Panda environments: API, seeding, bad input, the controller, both backends, experts."""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
import pytest

from serl_ctrl.data.demos import expert_episode
from serl_ctrl.envs import ENV_IDS, TASKS, make_env
from serl_ctrl.envs.controller import (
    ImpedanceGains,
    cartesian_coords,
    cartesian_velocity,
    impedance_wrench,
    joint_torques,
    orientation_error_coords,
    quat_to_mat,
)
from serl_ctrl.envs.panda import HOME_Q, HOME_TCP
from serl_ctrl.envs.scene import WORKSPACE_HIGH, WORKSPACE_LOW

BACKENDS = ("mujoco", "pybullet")


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.mark.parametrize("task", list(TASKS))
def test_registered_env_spaces_and_seeding(task, backend):
    env = gym.make(ENV_IDS[task], backend=backend)
    try:
        obs1, info = env.reset(seed=7)
        assert env.observation_space.contains(obs1), {k: (v.shape, v.dtype) for k, v in obs1.items()}
        assert info["success"] is False
        obs2, _ = env.reset(seed=7)
        for key in obs1:
            np.testing.assert_array_equal(obs1[key], obs2[key], err_msg=key)
        obs3, _ = env.reset(seed=8)
        assert any(not np.array_equal(obs1[k], obs3[k]) for k in obs1), "different seeds, same episode"
        action = env.action_space.sample()
        obs, reward, terminated, truncated, info = env.step(action)
        assert env.observation_space.contains(obs)
        assert reward in (0.0, 1.0)  # sparse by default
        assert 0.0 <= info["dense_reward"] <= 1.0
    finally:
        env.close()


def test_same_seed_same_episode_rollout():
    """The whole episode, not just the reset, reproduces from the seed."""
    paths = []
    for _ in range(2):
        env = make_env("push")
        env.reset(seed=3)
        rng = np.random.default_rng(0)
        path = [env.step(rng.uniform(-1, 1, 4))[0]["block_pos"] for _ in range(15)]
        paths.append(np.array(path))
        env.close()
    np.testing.assert_array_equal(paths[0], paths[1])


def test_time_limit_truncates():
    env = make_env("reach")
    env.reset(seed=0)
    steps, truncated = 0, False
    while not truncated:
        _, _, terminated, truncated, _ = env.step(np.array([0.0, 0.0, 1.0, -1.0]))  # away from targets
        assert not terminated
        steps += 1
    assert steps == TASKS["reach"].max_episode_steps
    env.close()


def test_bad_actions_and_names():
    env = make_env("pickcube")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"expected \(4,\)"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(np.array([0.0, np.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(np.array([0.0, 0.0, np.inf, 0.0]))
    env.close()
    with pytest.raises(ValueError, match="valid tasks: reach, pickcube, push, insert"):
        make_env("stack")
    with pytest.raises(ValueError, match="valid backends: mujoco, pybullet"):
        make_env("reach", backend="isaac")
    with pytest.raises(ValueError, match="valid: state, pixels, both"):
        make_env("reach", obs="depth")


def test_out_of_range_actions_are_clipped():
    """An action of 5 moves exactly like an action of 1."""
    finals = []
    for scale in (1.0, 5.0):
        env = make_env("reach")
        env.reset(seed=1)
        for _ in range(3):
            obs, *_ = env.step(np.array([scale, -scale, 0.0, scale]))
        finals.append(obs["tcp_pose"])
        env.close()
    np.testing.assert_array_equal(finals[0], finals[1])


def test_reference_stays_in_workspace(backend):
    """Pushing against every face of the box never takes the TCP out of it."""
    env = make_env("reach", backend=backend)
    env.reset(seed=0)
    for direction in ([1, 0, 1], [-1, -1, -1], [0, 1, 0]):
        for _ in range(25):
            obs, *_ = env.step(np.array([*direction, 0.0], dtype=np.float32))
        pos = obs["tcp_pose"][:3]
        assert np.all(pos >= WORKSPACE_LOW - 0.01) and np.all(pos <= WORKSPACE_HIGH + 0.01), pos
    env.close()


def test_home_pose(backend):
    env = make_env("reach", backend=backend)
    env.reset(seed=0)
    pos, quat = env.unwrapped.sim.tcp_pose()
    np.testing.assert_allclose(pos, HOME_TCP, atol=1e-3)
    np.testing.assert_allclose(orientation_error_coords(quat), 0.0, atol=1e-3)
    q, _ = env.unwrapped.sim.joint_state()
    np.testing.assert_allclose(q[:7], HOME_Q, atol=1e-9)
    env.close()


def test_mujoco_actuators_compute_the_controller_law():
    """MuJoCo's compiled actuators and the NumPy law give the same joint torques."""
    from serl_ctrl.envs.mujoco_backend import MujocoBackend
    from serl_ctrl.envs.tasks import make_task

    gains = ImpedanceGains()
    sim = MujocoBackend(make_task("reach").scene(), gains)
    m, d = sim.model, sim.data
    rng = np.random.default_rng(0)
    r_down = quat_to_mat(np.array([0.0, 1.0, 0.0, 0.0]))
    for trial in range(20):
        sim.reset(HOME_Q + rng.normal(0, 0.15, 7), 0.04, {})
        d.qvel[:7] = rng.normal(0, 0.5, 7)
        pos, quat = sim.tcp_pose()
        ref = cartesian_coords(pos, quat) + rng.normal(0, 0.05, 6)  # some errors beyond the clip
        sim.set_reference(ref, 0.04)
        mujoco.mj_forward(m, d)
        lin, ang = sim.tcp_velocity()
        jp, jr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        mujoco.mj_jacSite(m, d, jp, jr, sim._tcp)
        jac = np.vstack([jp[:, :7], r_down.T @ jr[:, :7]])
        q, dq = sim.joint_state()
        wrench = impedance_wrench(ref, cartesian_coords(*sim.tcp_pose()), cartesian_velocity(lin, ang), gains)
        gravity = d.qfrc_gravcomp[:7] if d.qfrc_gravcomp.any() else np.zeros(7)
        expected = joint_torques(jac, wrench, q[:7], dq[:7], HOME_Q, gravity, gains)
        np.testing.assert_allclose(d.qfrc_actuator[:7], expected, atol=2e-3, err_msg=f"trial {trial}")
    sim.close()


def test_backends_follow_the_same_path():
    """The same action sequence moves the TCP along the same path in MuJoCo and PyBullet."""
    rng = np.random.default_rng(42)
    actions = rng.uniform(-1, 1, (30, 4)).astype(np.float32)
    paths = {}
    for name in BACKENDS:
        env = make_env("reach", backend=name)
        env.reset(seed=5)
        paths[name] = np.array([env.step(a)[0]["tcp_pose"][:3] for a in actions])
        env.close()
    gap = np.linalg.norm(paths["mujoco"] - paths["pybullet"], axis=1)
    # Stated tolerance: 5 mm at every control step (measured: < 1 mm in free space).
    assert gap.max() < 0.005, gap


@pytest.mark.parametrize("task", ["pickcube", "push", "insert"])
def test_backends_agree_on_expert_outcomes(task):
    """The scripted expert gives the same outcome on both simulators, with similar object paths."""
    for seed in range(3):
        results = {}
        for name in BACKENDS:
            env = make_env(task, backend=name)
            success, steps = expert_episode(env, seed)
            results[name] = (success, steps, env.unwrapped.task_state())
            env.close()
        assert results["mujoco"][0] and results["pybullet"][0], (task, seed, results)
        lengths = [results[n][1] for n in BACKENDS]
        if task != "push":
            # Grasping and insertion take the same number of steps to within 20% + 2. Pushing with
            # a narrow finger contact is sensitive to each engine's contact model (the block turns
            # differently), so for push only the outcome is compared (measured: 18 vs 27 steps).
            assert max(lengths) <= 1.2 * min(lengths) + 2, (task, seed, lengths)


@pytest.mark.parametrize("task", list(TASKS))
def test_experts_succeed(task, backend):
    """The full >= 95% measurement over 100 seeds is bench/bench_experts.py; here 10 seeds."""
    env = make_env(task, backend=backend)
    successes = sum(expert_episode(env, seed)[0] for seed in range(100, 110))
    env.close()
    assert successes >= 9, f"{task}/{backend}: {successes}/10"


def test_expert_labels_segments():
    env = make_env("pickcube")
    base = env.unwrapped
    expert = base.task.expert()
    env.reset(seed=0)
    labels = []
    for _ in range(40):
        action, label = expert.act(base.task_state())
        labels.append(label)
        *_, terminated, truncated, _ = env.step(action)
        if terminated:
            break
    order = list(dict.fromkeys(labels))
    assert [x for x in order if x in ("move above the cube", "go down", "close the gripper", "lift")] == [
        "move above the cube", "go down", "close the gripper", "lift"]
    env.close()


def test_pixel_observations(backend):
    env = make_env("pickcube", backend=backend, obs="pixels", render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"tcp_pose", "tcp_vel", "gripper", "front", "wrist"}
    for cam in ("front", "wrist"):
        img = obs[cam]
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        assert img.std() > 10, f"{cam} image looks blank"
    assert not np.array_equal(obs["front"], obs["wrist"])
    # The red cube is visible in the wrist camera from the start pose (it looks down at the table).
    red = (obs["wrist"][..., 0] > 150) & (obs["wrist"][..., 1] < 80) & (obs["wrist"][..., 2] < 80)
    assert red.sum() > 20, "cube not visible in the wrist camera"
    frame = env.render()
    assert frame.shape == (256, 256, 3)
    env.close()


def test_both_observation_mode_has_state_and_pixels():
    env = make_env("insert", obs="both")
    obs, _ = env.reset(seed=0)
    assert {"peg_pos", "peg_quat", "hole_pos", "front", "wrist"} <= set(obs)
    env.close()


def test_intervention_wrapper_replaces_actions_and_marks_steps():
    from serl_ctrl.envs.wrappers import ExpertTeleop, InterventionWrapper

    env = make_env("pickcube")
    wrapped = InterventionWrapper(env, ExpertTeleop(env, should_intervene=lambda s: True, max_steps=1000))
    obs, info = wrapped.reset(seed=0)
    assert info["intervened"] is False
    success = False
    for _ in range(60):  # the policy proposes nonsense; the "human" (the expert) solves the task
        obs, reward, terminated, truncated, info = wrapped.step(np.array([0.0, 0.0, 1.0, -1.0], np.float32))
        assert info["intervened"] is True and info["executed_action"].shape == (4,)
        success = success or info["success"]
        if terminated or truncated:
            break
    assert success and wrapped.interventions > 0
    # A teleop that never offers an action leaves the policy in charge.
    quiet = InterventionWrapper(make_env("reach"), ExpertTeleop(env, should_intervene=lambda s: False))
    quiet.reset(seed=0)
    *_, info = quiet.step(np.zeros(4, np.float32))
    assert info["intervened"] is False and quiet.interventions == 0


def test_reward_model_wrapper_uses_the_classifier():
    from serl_ctrl.envs.wrappers import RewardModelWrapper

    # A "classifier" that believes the cube is lifted when it is above 6 cm: reward follows it.
    env = RewardModelWrapper(make_env("pickcube", terminate_on_success=False),
                             lambda obs: float(obs["cube_pos"][2] > 0.06), threshold=0.5)
    env.reset(seed=0)
    *_, reward, terminated, _, info = env.step(np.zeros(4, np.float32))
    assert reward == 0.0 and not terminated and info["success_prob"] == 0.0
    with pytest.raises(ValueError, match="threshold"):
        RewardModelWrapper(make_env("reach"), lambda obs: 0.0, threshold=1.5)
