"""The command path below the ROS nodes, without ROS: the safety layer, the shared action mapping
(envs/actions.py, identical to PandaEnv.step) and the simulated arm's command handling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serl_ctrl.envs.controller import orientation_error_coords, yaw_to_quat
from serl_ctrl.envs.panda import HOME_Q, HOME_TCP
from serl_ctrl.envs.scene import WORKSPACE_HIGH, WORKSPACE_LOW
from serl_ctrl.envs.actions import action_to_target, gripper_width, width_to_gripper_action
from serl_ctrl.runtime.safety import (
    PANDA_Q_MAX,
    PANDA_Q_MIN,
    CommandWatchdog,
    SafetyError,
    SafetyFilter,
    SafetyLimits,
    stale_inputs,
)

DOWN = yaw_to_quat(0.0)
ARM = [f"panda_joint{i}" for i in range(1, 8)]


@pytest.fixture
def safety():
    return SafetyFilter(SafetyLimits(command_timeout_s=0.5, max_step_m=0.08, max_joint_step_rad=0.3))


# --- Cartesian targets ------------------------------------------------------------------------------


def test_accepts_a_reasonable_target(safety):
    v = safety.check_cartesian(HOME_TCP + [0.02, 0, 0], DOWN, tcp_pos=HOME_TCP, tcp_quat=DOWN, stamp=9.9, now=10.0)
    assert v and v.reason == ""
    np.testing.assert_allclose(v.value, HOME_TCP + [0.02, 0, 0])
    np.testing.assert_allclose(v.extra["quat"], DOWN)


@pytest.mark.parametrize(
    "pos, quat, reason",
    [
        ([np.nan, 0.0, 0.2], None, "NaN or inf"),
        ([0.5, np.inf, 0.2], None, "NaN or inf"),
        ([0.5, 0.0], None, "has 2 values, expected 3"),
        ([0.5, 0.0, 0.2, 0.1], None, "has 4 values, expected 3"),
        ([0.9, 0.0, 0.2], None, "outside the workspace box"),
        ([0.5, 0.0, -0.01], None, "outside the workspace box"),
        ([0.5, 0.0, 0.25], [0.0, 0.0, 0.0, 0.0], "not a unit quaternion"),
        ([0.5, 0.0, 0.25], [1.0, 0.0, 0.0], "has 3 values, expected 4"),
        ([0.5, 0.0, 0.25], [1.0, 0.0, 0.0, 0.0], "rad from the TCP's"),  # gripper pointing up
        ([0.6, 0.0, 0.25], None, "per-command limit"),
        ("abc", None, "not a list of numbers"),
    ],
)
def test_rejects_bad_cartesian_targets(safety, pos, quat, reason):
    v = safety.check_cartesian(pos, quat, tcp_pos=HOME_TCP, tcp_quat=DOWN)
    assert not v and reason in v.reason, v.reason
    with pytest.raises(SafetyError, match=reason.split("(")[0][:20].replace("[", r"\[")):
        v.raise_if_rejected()


def test_workspace_box_is_the_envs_box():
    lim = SafetyLimits()
    np.testing.assert_array_equal(lim.workspace_low, WORKSPACE_LOW)
    np.testing.assert_array_equal(lim.workspace_high, WORKSPACE_HIGH)
    f = SafetyFilter()
    assert f.check_position(WORKSPACE_LOW)
    assert f.check_position(WORKSPACE_HIGH)
    assert not f.check_position(WORKSPACE_HIGH + 1e-3)


def test_stamps_stale_future_and_unstamped(safety):
    assert safety.check_stamp(9.6, now=10.0)
    stale = safety.check_stamp(9.0, now=10.0)
    assert not stale and "stale command" in stale.reason and "1.000 s ago" in stale.reason
    future = safety.check_stamp(1.7e9, now=10.0)
    assert not future and "use_sim_time" in future.reason
    assert safety.check_stamp(0.0, now=10.0), "stamp 0 means unstamped: accepted by default"
    strict = SafetyFilter(SafetyLimits(allow_unstamped=False))
    assert not strict.check_stamp(0.0, now=10.0)
    assert safety.check_stamp(None, now=10.0)
    assert not safety.check_stamp(float("nan"), now=10.0)


def test_twist_limits(safety):
    assert safety.check_twist([0.1, 0, 0], [0, 0, 0.5])
    assert "linear speed" in safety.check_twist([1.0, 0, 0], [0, 0, 0]).reason
    assert "angular speed" in safety.check_twist([0, 0, 0], [0, 0, 5.0]).reason
    assert "NaN" in safety.check_twist([np.nan, 0, 0], [0, 0, 0]).reason


def test_gripper_width(safety):
    assert safety.check_gripper([0.04])
    assert "outside [0, 0.08]" in safety.check_gripper([0.1]).reason
    assert "outside" in safety.check_gripper([-0.01]).reason
    assert "has 2 values" in safety.check_gripper([0.01, 0.02]).reason


# --- joints ------------------------------------------------------------------------------------------


def test_joint_positions_by_position_and_by_name(safety):
    assert safety.check_joint_positions(HOME_Q, current_q=HOME_Q)
    v = safety.check_joint_positions(list(HOME_Q) + [0.02, 0.02], current_q=HOME_Q)
    assert v and v.value.shape == (9,)
    names = list(reversed(ARM))
    v = safety.check_joint_positions(HOME_Q[::-1], names=names, current_q=HOME_Q)
    assert v
    np.testing.assert_allclose(v.value, HOME_Q)  # reordered into the arm's order


@pytest.mark.parametrize(
    "values, names, reason",
    [
        (list(HOME_Q)[:6], (), "has 6 values, expected 7 or 9"),
        (list(HOME_Q[:6]) + [math.nan], (), "NaN or inf"),
        (list(HOME_Q), [f"joint_{i}" for i in range(7)], "unknown joint names"),
        (list(HOME_Q[:6]), ARM[:6], "misses joints ['panda_joint7']"),
        (list(HOME_Q) + [0.01], ARM + ["panda_finger_joint1"], "not both finger joints"),
        (list(HOME_Q[:6]) + [HOME_Q[5]], ARM[:6] + ["panda_joint6"], "repeated joint names"),
        (list(HOME_Q), ARM[:6], "has 7 values, expected 6"),
        (list(HOME_Q) + [0.05, 0.02], (), "finger positions"),
    ],
)
def test_rejects_bad_joint_commands(safety, values, names, reason):
    v = safety.check_joint_positions(values, names=names, current_q=HOME_Q)
    assert not v and reason in v.reason, v.reason


def test_joint_limits_are_the_pandas(safety):
    assert np.all(PANDA_Q_MIN < HOME_Q) and np.all(HOME_Q < PANDA_Q_MAX)
    q = HOME_Q.copy()
    q[3] = -0.05  # joint 4 must stay below -0.0698
    v = safety.check_joint_positions(q)
    assert not v and "panda_joint4=-0.0500 not in [-3.0718, -0.0698]" in v.reason
    q = HOME_Q.copy()
    q[0] = 2.9  # beyond 2.8973
    assert "panda_joint1" in safety.check_joint_positions(q).reason


def test_joint_step_limit(safety):
    q = HOME_Q + np.array([0, 0, 0.5, 0, 0, 0, 0])
    v = safety.check_joint_positions(q, current_q=HOME_Q)
    assert not v and "panda_joint3 would jump 0.500 rad" in v.reason
    assert safety.check_joint_positions(q)  # without a measured state there is no step check


def test_trajectories(safety):
    q1 = HOME_Q + 0.2 * np.eye(7)[0]
    q2 = HOME_Q + 0.4 * np.eye(7)[0]
    v = safety.check_trajectory([0.5, 1.0], [q1, q2], current_q=HOME_Q)
    assert v and v.value.shape == (2, 7)
    np.testing.assert_allclose(v.extra["times"], [0.5, 1.0])
    assert "increasing" in safety.check_trajectory([1.0, 0.5], [q1, q2], current_q=HOME_Q).reason
    assert "no points" in safety.check_trajectory([], [], current_q=HOME_Q).reason
    assert "2 times but 1 points" in safety.check_trajectory([0.5, 1.0], [q1], current_q=HOME_Q).reason
    jump = safety.check_trajectory([0.5, 1.0], [q1, HOME_Q + 0.8 * np.eye(7)[0]], current_q=HOME_Q)
    assert not jump and jump.reason.startswith("trajectory point 1:")
    stale = safety.check_trajectory([0.5], [q1], current_q=HOME_Q, stamp=1.0, now=5.0)
    assert not stale and "stale" in stale.reason


# --- hold semantics ----------------------------------------------------------------------------------


def test_watchdog_holds_once_after_silence():
    w = CommandWatchdog(0.5)
    assert w.holding and not w.check(0.0), "before any command the arm holds, and there is nothing to latch"
    w.feed(1.0)
    assert not w.holding
    assert not w.check(1.4)
    assert w.check(1.6), "silent for longer than the timeout: latch now"
    assert w.holding and not w.check(2.0), "latch once, not every tick"
    w.feed(2.1)
    assert not w.holding and w.holds == 1
    with pytest.raises(ValueError):
        CommandWatchdog(0.0)


def test_stale_inputs():
    out = stale_inputs({"tcp_pose": 9.9, "joint_states": None, "objects/cube/pose": 8.0}, now=10.0, timeout_s=0.5)
    assert set(out) == {"joint_states", "objects/cube/pose"}
    assert out["joint_states"] == "no message yet" and "2.000 s old" in out["objects/cube/pose"]
    assert stale_inputs({"tcp_pose": 9.9}, now=10.0, timeout_s=0.5) == {}


def test_limits_are_validated():
    with pytest.raises(ValueError, match="workspace box"):
        SafetyLimits(workspace_low=(0, 0, 0), workspace_high=(1, 1, 0))
    with pytest.raises(ValueError, match="max_step_m"):
        SafetyLimits(max_step_m=0.0)


# --- the action mapping shared with PandaEnv ---------------------------------------------------------


def test_gripper_width_mapping():
    assert gripper_width(-1.0) == pytest.approx(0.08)
    assert gripper_width(1.0) == pytest.approx(0.0)
    assert gripper_width(0.0) == pytest.approx(0.04)
    for g in (-1.0, -0.3, 0.0, 0.7, 1.0):
        assert width_to_gripper_action(gripper_width(g)) == pytest.approx(g)


def test_action_to_target_rules():
    t = action_to_target([1.0, -0.5, 0.0, -1.0], HOME_TCP, pos_step=0.03)
    np.testing.assert_allclose(t.position, HOME_TCP + [0.03, -0.015, 0.0])
    assert t.yaw is None and t.gripper_width == pytest.approx(0.08)
    np.testing.assert_allclose(t.quaternion, DOWN)
    np.testing.assert_allclose(t.coords(), [*t.position, 0, 0, 0])
    # clipped to [-1, 1] and into the workspace
    t = action_to_target([5.0, 0.0, -3.0, 2.0], [0.74, 0.0, 0.01], pos_step=0.03)
    np.testing.assert_allclose(t.position, [0.75, 0.0, WORKSPACE_LOW[2]])
    assert t.gripper_width == 0.0
    with pytest.raises(ValueError, match="NaN"):
        action_to_target([np.nan, 0, 0, 0], HOME_TCP)
    with pytest.raises(ValueError, match="expected 4"):
        action_to_target([0, 0, 0, 0, 0], HOME_TCP)
    # yaw: relative to the TCP's current yaw, clipped to the limit
    t = action_to_target([0, 0, 0, 1.0, 0.0], HOME_TCP, yaw_to_quat(0.3), yaw_step=0.2)
    assert t.yaw == pytest.approx(0.5)
    t = action_to_target([0, 0, 0, 1.0, 0.0], HOME_TCP, yaw_to_quat(1.5), yaw_step=0.2)
    assert t.yaw == pytest.approx(np.pi / 2)
    with pytest.raises(ValueError, match="tcp_quat"):
        action_to_target([0, 0, 0, 1.0, 0.0], HOME_TCP, yaw_step=0.2)


@pytest.mark.parametrize("yaw", [False, True])
def test_action_to_target_matches_panda_env_step(yaw):
    """The ROS policy node and PandaEnv.step must produce the same impedance reference."""
    from serl_ctrl.envs.panda_env import PandaEnv

    env = PandaEnv(task="reach", backend="mujoco", yaw=yaw)
    try:
        env.reset(seed=0)
        rng = np.random.default_rng(0)
        refs = []
        env.sim.set_reference = lambda coords, width, _orig=env.sim.set_reference: (
            refs.append((np.array(coords), width)), _orig(coords, width))[-1]
        for _ in range(5):
            pos, quat = env.sim.tcp_pose()
            action = rng.uniform(-1.2, 1.2, env.action_space.shape).astype(np.float32)
            env.step(action)
            ref, width = refs[-1]
            t = action_to_target(action, pos, quat, pos_step=env.pos_step,
                                 yaw_step=env.yaw_step if yaw else None, yaw_limit=env.yaw_limit)
            np.testing.assert_allclose(t.coords(), ref, atol=1e-12)
            assert t.gripper_width == pytest.approx(width)
    finally:
        env.close()


# --- the simulated arm --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arm():
    from serl_ctrl.runtime.arm import SimArm

    a = SimArm(task="reach", backend="mujoco", seed=0)
    yield a
    a.close()


def test_forward_kinematics_matches_both_simulators():
    from serl_ctrl.envs.backend import make_backend
    from serl_ctrl.envs.controller import ImpedanceGains
    from serl_ctrl.envs.scene import Scene
    from serl_ctrl.runtime.arm import PandaKinematics

    fk = PandaKinematics()
    rng = np.random.default_rng(0)
    for name in ("mujoco", "pybullet"):
        sim = make_backend(name, Scene(), ImpedanceGains())
        try:
            for _ in range(3):
                q = HOME_Q + rng.uniform(-0.4, 0.4, 7)
                sim.reset(q, 0.08, {})
                pos, quat = sim.tcp_pose()
                fpos, fquat = fk.tcp_pose(q)
                np.testing.assert_allclose(fpos, pos, atol=1e-6, err_msg=name)
                assert abs(abs(float(fquat @ quat)) - 1.0) < 1e-6, name
        finally:
            sim.close()
    with pytest.raises(ValueError, match="7 arm joint angles"):
        fk.tcp_pose(HOME_Q[:6])


def test_sim_arm_cartesian_target_hold_and_reset(arm):
    arm.reset(seed=1)
    start, _ = arm.tcp_pose()
    np.testing.assert_allclose(start, HOME_TCP, atol=2e-3)
    arm.apply_cartesian_target(start + [0.04, 0.0, 0.03], gripper_width=0.0)
    t0 = arm.time
    arm.step(500)
    assert arm.time == pytest.approx(t0 + 1.0)
    pos, _ = arm.tcp_pose()
    np.testing.assert_allclose(pos, start + [0.04, 0.0, 0.03], atol=3e-3)
    assert arm.finger_width() < 0.005
    # Hold latches the reference at the measured pose.
    arm.apply_cartesian_target(start + [0.1, 0.0, 0.0])
    arm.step(25)
    arm.hold()
    held = arm.reference[:3]
    arm.step(250)
    assert np.linalg.norm(arm.tcp_pose()[0] - held) < 0.01
    # Out-of-box targets are clipped into the workspace by the arm too (the filter rejects them first).
    arm.apply_cartesian_target([2.0, 0.0, 0.2])
    assert arm.reference[0] == pytest.approx(WORKSPACE_HIGH[0])
    episode = arm.episode
    arm.reset()
    assert arm.episode == episode + 1
    assert arm.object_poses().keys() == {"target"}


def test_sim_arm_joint_commands_go_through_forward_kinematics(arm):
    arm.reset(seed=2)
    q = HOME_Q + np.array([0.2, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0])
    arm.apply_joint_positions(list(q) + [0.01, 0.01])
    arm.step(600)
    want, want_quat = arm.kinematics.tcp_pose(q)
    pos, quat = arm.tcp_pose()
    np.testing.assert_allclose(pos, want, atol=5e-3)
    assert abs(float(want_quat @ quat)) > 0.999
    assert arm.finger_width() == pytest.approx(0.02, abs=3e-3)
    # A trajectory ends at its last point.
    arm.apply_joint_trajectory([0.2, 0.4], [q * 0.5 + HOME_Q * 0.5, HOME_Q])
    arm.step(500)
    np.testing.assert_allclose(arm.tcp_pose()[0], arm.kinematics.tcp_pose(HOME_Q)[0], atol=5e-3)


def test_sim_arm_twist_moves_the_reference_for_its_duration(arm):
    arm.reset(seed=3)
    start = arm.reference[:3]
    arm.apply_twist([0.1, 0.0, 0.0], [0.0, 0.0, 0.0], duration=0.3)
    arm.step(500)
    np.testing.assert_allclose(arm.reference[:3] - start, [0.03, 0.0, 0.0], atol=2e-3)
    yaw0 = orientation_error_coords(arm.tcp_pose()[1])[2]
    arm.apply_twist([0.0, 0.0, 0.0], [0.0, 0.0, -0.5], duration=0.4)  # world z: turns about -DOWN z
    arm.step(500)
    assert orientation_error_coords(arm.tcp_pose()[1])[2] - yaw0 == pytest.approx(0.2, abs=0.03)
